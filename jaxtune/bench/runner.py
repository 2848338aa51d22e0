"""``run_benchmark``: every (submission, workload, study) as one vectorized sweep, then scores.

For each workload and submission, the runner first measures the submission's time per step on
the workload (:func:`measure_step_time`: one trial alone on one device, after compilation),
then runs each study: ``bench.trials`` quasi-random points of the submission's space trained
at once by :func:`jaxtune.run_sweep` (or, with ``vectorize=False``, each point as its own
one-trial sweep, the way AlgoPerf runs trials). A trial's *steps to target* is the first
evaluation at which its validation metric reached the workload's target
(:attr:`jaxtune.TrialResult.target_step`); its *time to target* is that number times the
measured seconds per step. :mod:`jaxtune.bench.scoring` turns both into AlgoPerf scores.

``<out>/bench.json`` records the per-step times and every finished study as they finish, so a
resumed run skips them and resumes an unfinished study from its own checkpoints. The folder of
study ``j`` is ``<out>/<submission>/<workload>/study-<j>/``, a sweep folder as ``jaxtune sweep``
writes it (``trial-<i>/`` sweep folders inside it without vectorization).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune import checkpoint, registry
from jaxtune import config as config_lib
from jaxtune.bench import report, scoring
from jaxtune.bench.config import BenchConfig, bench_config
from jaxtune.bench.entries import BenchWorkload, Submission
from jaxtune.config.space import plain
from jaxtune.engine import SweepCallback, SweepResult, TrialResult, run_sweep
from jaxtune.engine.trials import hp_arrays
from jaxtune.errors import ConfigError
from jaxtune.tasks import Task, check_task

__all__ = ["BenchResult", "measure_step_time", "run_benchmark"]

#: How many times the solo timing run is repeated (the fastest counts).
TIMING_REPEATS = 2


@dataclasses.dataclass
class BenchResult:
    """What :func:`run_benchmark` measured and scored.

    Attributes:
      config: the validated :class:`jaxtune.bench.BenchConfig`.
      steps: steps to target ``[submissions, workloads, studies, trials]`` (``inf``: missed).
      seconds_per_step: the measured time per step ``[submissions, workloads]``.
      scores: ``{"time": Scores, "steps": Scores}`` (:class:`jaxtune.bench.scoring.Scores`),
        AlgoPerf scores on time to target and on steps to target.
      record: everything ``bench.json`` holds (per-trial hyperparameters and results).
      summary: the markdown summary (``bench.md``).
      out_dir: the output folder.
    """

    config: BenchConfig
    steps: np.ndarray
    seconds_per_step: np.ndarray
    scores: dict[str, scoring.Scores]
    record: dict[str, Any]
    summary: str
    out_dir: Path

    @property
    def times(self) -> np.ndarray:
        """Time to target in seconds ``[submissions, workloads, studies, trials]``."""
        return self.steps * self.seconds_per_step[:, :, None, None]


class _Tasks:
    """A workload's ``task.factory``, memoized by structure (less where and how a sweep runs):
    sweeps of the same structure get the same :class:`jaxtune.Task`, so their programs come
    from the engine's compile cache."""

    def __init__(self, factory: Callable[[dict[str, Any]], Task]) -> None:
        self.factory, self.built = factory, {}

    def __call__(self, structure: dict[str, Any]) -> Task:
        kept = {k: v for k, v in structure.items() if k.split(".")[0] not in report.RUN_SECTIONS}
        key = json.dumps(kept, sort_keys=True, default=str)
        if key not in self.built:
            self.built[key] = self.factory(structure)
        return self.built[key]


def _import(path: str, where: str, search: Sequence[str | Path]) -> Callable:
    return registry.import_factory(path, f"{where}.factory", search=search)


class _Bound:
    """The task and optimizer callables of every workload and submission, imported once."""

    def __init__(
        self, cfg: BenchConfig, search: Sequence[str | Path], given: Mapping[str, Callable]
    ) -> None:
        self.search = list(search)
        names = [w.name for w in cfg.workloads]
        for name in given:
            if name not in names:
                raise ConfigError(
                    f"tasks[{name!r}] is invalid: expected one of the workloads {', '.join(names)}"
                )
        self.tasks = {
            w.name: given.get(w.name)
            or _Tasks(_import(w.factory, f"bench.workloads.{w.name}", search))
            for w in cfg.workloads
        }
        self.optimizers = {
            s.name: _import(s.factory, f"bench.submissions.{s.name}", search) if s.factory else None
            for s in cfg.submissions
        }

    def sweep(self, sub: Submission, wl: BenchWorkload, cfg: Any, **kw: Any) -> SweepResult:
        return run_sweep(
            cfg,
            task=self.tasks[wl.name],
            optimizer=self.optimizers[sub.name],
            search_path=self.search,
            **kw,
        )


def _check_metrics(cfg: BenchConfig, bound: _Bound) -> None:
    """Every workload's task reports its metric (checked abstractly, before anything trains)."""
    for wl in cfg.workloads:
        scfg = cfg.study_config(cfg.submissions[0], wl, 0)
        trial = {**scfg.base, **config_lib.expand_trials(scfg)[0]}
        numeric = config_lib.numeric_keys(scfg.base)
        hp = {k: v[0] for k, v in hp_arrays([trial], numeric).items()}
        structure = {k: v for k, v in trial.items() if k not in numeric}
        where = f"bench.workloads.{wl.name}"
        names = check_task(bound.tasks[wl.name](structure), hp, where=f"{where}.factory")
        if wl.metric != "valid.loss" and wl.metric[len("valid.") :] not in names:
            allowed = ", ".join(["valid.loss", *(f"valid.{m}" for m in names)])
            raise ConfigError(
                f"{where}.metric = {wl.metric!r} is invalid: the task reports {allowed}"
            )


def measure_step_time(
    cfg: BenchConfig, sub: Submission, wl: BenchWorkload, bound: _Bound
) -> dict[str, Any]:
    """Seconds per step of one trial of ``sub`` on ``wl``, alone on one device.

    The trial is the first point of study 0, trained alone for the workload's whole budget;
    the time is ``timing["run_s"] / steps`` of that sweep (training, the evaluations every
    ``eval_every`` steps and the engine's host work between chunks; compilation is not in
    ``run_s``), the fastest of :data:`TIMING_REPEATS` runs (the later ones compile nothing).
    The programs are those of a study's trial run alone (``vectorize=False``), so that mode
    compiles nothing more.
    """
    point = config_lib.expand_trials(cfg.study_config(sub, wl, 0))[0]
    tcfg = cfg.solo_config(sub, wl, 0, point, checkpoints=False)
    steps = tcfg.base["train.steps"]
    runs = [bound.sweep(sub, wl, tcfg).timing for _ in range(TIMING_REPEATS)]
    fastest = min(runs, key=lambda t: t["run_s"])
    return {
        "seconds_per_step": fastest["run_s"] / steps,
        "steps": steps,
        "run_s": [t["run_s"] for t in runs],
        "compile_s": runs[0]["compile_s"],
        "execution": fastest["execution"],
        "hparams": {k: plain(v) for k, v in point.items()},
    }


def _trial_record(t: TrialResult, seconds_per_step: float) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "id": t.id,
        "hparams": {k: plain(v) for k, v in t.hparams.items()},
        "target_step": t.target_step,
        "time_to_target": None if t.target_step is None else t.target_step * seconds_per_step,
        "best": num(t.best),
        "best_step": t.best_step,
        "diverged": t.diverged,
    }


class _StepPostfix(SweepCallback):
    """Shows the study and its step on the benchmark's progress bar."""

    def __init__(self, bar: Any, label: str, every_s: float = 0.5) -> None:
        self.bar, self.label, self.every_s = bar, label, every_s
        self.bar.set_postfix_str(label, refresh=True)
        self.last = time.perf_counter()

    def on_chunk(self, start: int, stop: int, history: Any) -> None:
        now = time.perf_counter()
        refresh = now - self.last >= self.every_s
        self.last = now if refresh else self.last
        self.bar.set_postfix_str(f"{self.label}, step {stop}", refresh=refresh)


def _finished(folder: Path) -> SweepResult | None:
    """The result in a sweep folder when that sweep ran to its end."""
    if not (folder / "results.json").is_file():
        return None
    result = SweepResult.load(folder)
    return None if result.timing.get("interrupted", True) else result


def _run_study(
    cfg: BenchConfig,
    sub: Submission,
    wl: BenchWorkload,
    study: int,
    *,
    bound: _Bound,
    folder: Path,
    vectorize: bool,
    resume: bool,
    callbacks: Sequence[SweepCallback],
) -> tuple[list[TrialResult], dict[str, float]]:
    scfg = cfg.study_config(sub, wl, study)
    jobs = [(scfg, folder)]
    if not vectorize:
        points = config_lib.expand_trials(scfg)
        jobs = [
            (cfg.solo_config(sub, wl, study, p), folder / f"trial-{i:03d}")
            for i, p in enumerate(points)
        ]
    trials, timing = [], {"compile_s": 0.0, "run_s": 0.0}
    for i, (c, f) in enumerate(jobs):
        result = _finished(f) if resume else None
        if result is None:
            again = resume and checkpoint.holds_checkpoints(f / "checkpoints")
            result = bound.sweep(sub, wl, c, out_dir=f, resume=again, callbacks=callbacks)
        for k in timing:
            timing[k] += float(result.timing.get(k, 0.0))
        trials += [dataclasses.replace(t, id=t.id + i) for t in result.trials]
    return trials, timing


@dataclasses.dataclass
class _Run:
    """One benchmark run: what it trains with, where it records, how it shows progress."""

    cfg: BenchConfig
    bound: _Bound
    state: dict[str, Any]
    out: Path
    vectorize: bool
    resume: bool
    callbacks: Sequence[SweepCallback]
    bar: Any

    def save(self) -> None:
        report.save_state(self.out / "bench.json", self.state)

    def pair(self, sub: Submission, wl: BenchWorkload) -> None:
        """The per-step time of ``sub`` on ``wl`` and its studies, each recorded when done."""
        times = self.state["step_times"].setdefault(sub.name, {})
        if wl.name not in times:
            self.bar.set_postfix_str(f"{sub.name} on {wl.name}: timing", refresh=True)
            times[wl.name] = measure_step_time(self.cfg, sub, wl, self.bound)
            self.save()
        per_step = times[wl.name]["seconds_per_step"]
        studies = self.state["studies"].setdefault(sub.name, {}).setdefault(wl.name, {})
        n = self.cfg["bench.studies"]
        for j in range(n):
            if str(j) in studies:
                continue
            label = f"{sub.name} on {wl.name}, study {j + 1}/{n}"
            folder = self.out / sub.name / wl.name / f"study-{j}"
            t0 = time.perf_counter()
            trials, timing = _run_study(
                self.cfg,
                sub,
                wl,
                j,
                bound=self.bound,
                folder=folder,
                vectorize=self.vectorize,
                resume=self.resume,
                callbacks=[*self.callbacks, _StepPostfix(self.bar, label)],
            )
            scfg = self.cfg.study_config(sub, wl, j)
            studies[str(j)] = {
                "folder": str(folder.relative_to(self.out)),
                "sweep_seed": scfg.seed,
                "train_seed": scfg.base["train.seed"],
                "vectorized": self.vectorize,
                "wall_s": time.perf_counter() - t0,
                **timing,
                "trials": [_trial_record(t, per_step) for t in trials],
            }
            self.save()
            self.bar.update(1)


def run_benchmark(
    config: BenchConfig | Mapping[str, Any],
    *,
    out_dir: str | Path,
    resume: bool = False,
    vectorize: bool | None = None,
    callbacks: Sequence[SweepCallback] = (),
    progress: bool = False,
    search_path: Sequence[str | Path] = (),
    notes: Mapping[str, Any] | None = None,
    tasks: Mapping[str, Callable[[dict[str, Any]], Task]] | None = None,
) -> BenchResult:
    """Run every study of a benchmark and score the submissions as AlgoPerf does.

    Args:
      config: a :class:`jaxtune.bench.BenchConfig` or a document: configuration sections
        (the base of every sweep) and a ``bench`` table (:data:`jaxtune.bench.BENCH_KEYS`).
      out_dir: the output folder: ``bench.json``, ``bench.md``, ``plots/profiles.png`` and
        one sweep folder per study.
      resume: skip what ``bench.json`` records as done and resume an unfinished study from
        its checkpoints.
      vectorize: ``False`` trains each trial as its own one-trial sweep (default
        ``bench.vectorize``); the steps to target are the same either way.
      callbacks: sweep callbacks passed to every study's sweeps (not to the timing runs).
      progress: show a tqdm bar over the studies.
      search_path: folders searched first for ``task.factory`` / ``optimizer.factory``.
      notes: JSON stored in ``bench.json`` beside the records.
      tasks: workload name -> ``factory(structure) -> Task``, used instead of importing that
        workload's factory (as ``run_sweep(task=...)``). Return the same Task for the same
        structure and separate calls share the engine's compiled programs.

    Returns:
      A :class:`BenchResult`.

    Raises:
      ConfigError: a bad setting (before anything trains), or ``out_dir`` holding another
        benchmark.
      KeyboardInterrupt: when interrupted; ``bench.json`` holds the studies finished so far.
    """
    cfg = bench_config(config)
    vectorize = cfg["bench.vectorize"] if vectorize is None else bool(vectorize)
    out = Path(out_dir)
    state = report.load_state(out / "bench.json", cfg, resume)
    state.update(notes or {})
    bound = _Bound(cfg, search_path, tasks or {})
    _check_metrics(cfg, bound)
    done = sum(len(w) for s in state["studies"].values() for w in s.values())
    total = len(cfg.submissions) * len(cfg.workloads) * cfg["bench.studies"]
    bar = _bar(total, done, progress)
    run = _Run(cfg, bound, state, out, vectorize, resume, callbacks, bar)
    try:
        for wl in cfg.workloads:
            for sub in cfg.submissions:
                run.pair(sub, wl)
    finally:
        bar.close()
    steps, per_step = report.arrays(cfg, state)
    r_max = cfg["bench.r_max"]
    scores = {
        "time": scoring.score(steps * per_step[:, :, None, None], r_max),
        "steps": scoring.score(steps, r_max),
    }
    state["scores"] = report.scores_record(cfg, scores)
    state["status"] = "done"
    run.save()
    summary = report.format_summary(cfg, state, scores)
    (out / "bench.md").write_text(summary)
    report.plot_profiles(cfg, scores, out / "plots" / "profiles.png")
    return BenchResult(cfg, steps, per_step, scores, state, summary, out)


def _bar(total: int, done: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="bench", unit="study", disable=not show)
