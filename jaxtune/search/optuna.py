"""Batched model-based proposals: Optuna's samplers, each round trained as one vectorized group.

``sweep.strategy = "optuna"`` (needs ``pip install "jaxtune[optuna]"``). Each of ``optuna.rounds``
rounds asks the sampler (``optuna.sampler``: TPE by default, CMA-ES, Gaussian process, QMC or
random) for ``optuna.batch_size`` points of ``sweep.space`` through Optuna's ask-and-tell API,
trains them together (one compiled program per structure group, like any sweep) and tells the
study each trial's validation metric (``select.metric``, its final value, exactly what the result
table shows); the evaluations along the way are reported as intermediate values, so the
dashboard draws the curves. A diverged trial (or one whose metric is not finite) is told as
*pruned*, with the step it diverged at in its ``diverged_step`` user attribute.

With an output folder the study lives in ``<out>/optuna.db`` (SQLite, study ``jaxtune``):
``optuna-dashboard sqlite:///<out>/optuna.db`` shows it, and ``--resume`` continues the round
that was interrupted (from its checkpoint) and the rounds after it. Each round's sampler is
seeded from ``(sweep.seed, round)``, so a resumed study proposes what the uninterrupted one would;
the earlier rounds' trials are reported with the points the study holds for them and the
divergences the checkpoints' notes keep, so the result equals the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtune.config.space import freeze
from jaxtune.engine.history import eval_column
from jaxtune.engine.result import SweepResult
from jaxtune.engine.run import Sweep
from jaxtune.errors import ConfigError

__all__ = ["distribution", "make_sampler", "run_optuna"]

STUDY = "jaxtune"


def _optuna() -> Any:
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise ConfigError(
            "sweep.strategy = 'optuna' needs Optuna: run  pip install \"jaxtune[optuna]\""
        ) from None


def make_sampler(name: str, seed: int) -> Any:
    """The Optuna sampler ``optuna.sampler = name``, seeded with ``seed``."""
    optuna = _optuna()
    samplers = optuna.samplers
    if name == "cmaes":
        _needs("cmaes", "cmaes")
    if name == "gp":
        _needs("torch", "gp")
    with warnings.catch_warnings():  # some samplers are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # constant_liar: a batch is asked before any of it is told; the liar keeps TPE
            # from proposing the same point batch_size times.
            return samplers.TPESampler(seed=seed, constant_liar=True)
        if name == "cmaes":  # categorical keys (structure choices) are sampled at random
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if name == "gp":
            return samplers.GPSampler(seed=seed)
        if name == "qmc":
            return samplers.QMCSampler(seed=seed, scramble=True)
        return samplers.RandomSampler(seed=seed)


def _needs(module: str, sampler: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"optuna.sampler = {sampler!r} needs the {module} package: run  pip install {module}"
        ) from None


def distribution(spec: Mapping[str, Any]) -> Any:
    """The Optuna distribution of a ``sweep.space`` entry.

    Choices that Optuna cannot store (lists, e.g. layer widths) become their JSON text.

    Example:
      >>> distribution({"distribution": "log_uniform", "low": 1e-3, "high": 1.0})
      FloatDistribution(high=1.0, log=True, low=0.001, step=None)
    """
    dists = _optuna().distributions
    kind = spec["distribution"]
    if kind == "choice":
        return dists.CategoricalDistribution([_choice(v) for v in spec["choice"]])
    if kind == "int_uniform":
        return dists.IntDistribution(int(spec["low"]), int(spec["high"]))
    return dists.FloatDistribution(
        float(spec["low"]), float(spec["high"]), log=kind == "log_uniform"
    )


def _choice(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | float | str) else json.dumps(v)


def _value(spec: Mapping[str, Any], v: Any) -> Any:
    """The configuration value of a parameter Optuna returned (undoes :func:`_choice`)."""
    if spec["distribution"] == "choice":
        for c in spec["choice"]:
            if _choice(c) == v:
                return freeze(c)
    if spec["distribution"] == "int_uniform":
        return int(v)
    return v if spec["distribution"] == "choice" else float(v)


def _round_seed(seed: int, r: int) -> int:
    return int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def _tell(optuna: Any, study: Any, sweep: Sweep, i: int, pop: Any) -> None:
    """Report trial ``i``'s evaluations to Optuna trial ``i`` and tell its outcome."""
    sel = sweep.selection
    h = sweep.history
    frozen = study.trials[i]
    trial = optuna.trial.Trial(study, frozen._trial_id)
    values = h[sel.metric][i]
    for step, v in zip(h["eval_step"], values, strict=True):
        if math.isfinite(float(v)) and int(step) not in frozen.intermediate_values:
            trial.report(float(v), int(step))
    final = float(values[eval_column(h, sweep.steps)])
    diverged = pop.diverged_steps()[i]
    if diverged is not None or not math.isfinite(final):
        trial.set_user_attr("diverged_step", diverged)
        study.tell(i, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(i, final)


def _told(study: Any) -> list[dict[str, Any]]:
    out = []
    for t in study.trials:
        row = {"trial": t.number, "state": t.state.name.lower()}
        if t.value is not None:
            row["value"] = t.value
        if "diverged_step" in t.user_attrs:
            row["diverged_step"] = t.user_attrs["diverged_step"]
        out.append(row)
    return out


def _open_study(optuna: Any, sweep: Sweep) -> tuple[Any, str | None]:
    """The sweep's study and its storage: ``<out>/optuna.db`` (a fresh run starts it again),
    or in memory without an output folder."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    if sweep.out_dir is not None:
        sweep.out_dir.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(sweep.out_dir / 'optuna.db').resolve()}"
        if not sweep.resume:
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=STUDY, storage=storage)
    direction = "maximize" if sweep.selection.mode == "max" else "minimize"
    study = optuna.create_study(
        storage=storage, study_name=STUDY, direction=direction, load_if_exists=True
    )
    return study, storage


def _earlier_divergences(study: Any, notes: dict | None, upto: int) -> dict[int, int]:
    """``id -> step`` of the trials before ``upto`` that diverged: from the checkpoint's notes,
    else (no checkpoint, or one without them) from what the study was told."""
    if notes is not None and "diverged" in notes:
        return {int(i): int(s) for i, s in notes["diverged"]}
    return {
        t.number: int(t.user_attrs["diverged_step"])
        for t in study.trials[:upto]
        if t.user_attrs.get("diverged_step") is not None
    }


def run_optuna(sweep: Sweep) -> SweepResult:
    """``sweep.strategy = "optuna"``: ask a batch, train it vectorized, tell, for each round.

    Trial ``i`` of the sweep is Optuna trial number ``i`` of the study (round ``i // batch``).
    """
    optuna = _optuna()
    cfg, base = sweep.cfg, sweep.cfg.base
    batch, rounds, steps = base["optuna.batch_size"], base["optuna.rounds"], sweep.steps
    make_sampler(base["optuna.sampler"], cfg.seed)  # a missing package fails before any work
    dists = {k: distribution(spec) for k, spec in cfg.space.items()}
    # Compile (and check) a first batch of the space's own points before anything is written.
    sweep.population(range(batch))
    names = [f"{i:03d}-round{i // batch}" for i in range(batch * rounds)]
    sweep.define({i: {} for i in range(batch * rounds)}, names)
    study, storage = _open_study(optuna, sweep)
    built: dict[int, Any] = {}

    def define(ids: range) -> None:
        """Trials ``ids`` become the points the study holds for them."""
        trials = study.trials
        sweep.define(
            {i: {k: _value(cfg.space[k], trials[i].params[k]) for k in cfg.space} for i in ids},
            names,
        )

    def population(r: int) -> Any:
        """Round ``r``: ask for the points the study does not hold yet, then compile."""
        ids = range(r * batch, (r + 1) * batch)
        if len(study.trials) < ids[-1] + 1:
            study.sampler = make_sampler(base["optuna.sampler"], _round_seed(cfg.seed, r))
            while len(study.trials) < ids[-1] + 1:
                study.ask(dists)
        define(ids)
        if r not in built:
            built[r] = sweep.population(ids)
        return built[r]

    # Round 0's population is compiled (from the study's own points) before anything is
    # written; a resumed run rebuilds the round its checkpoint names.
    first = population(0)
    pop, start, notes = sweep.start(first, lambda notes: population(int(notes["round"])))
    r0 = 0 if notes is None else int(notes["round"])
    if notes is None and sweep.resume:  # killed before a checkpoint: the first round not told
        finished = [t.state.is_finished() for t in study.trials]
        r0 = next((r for r in range(rounds) if not all(finished[r * batch : (r + 1) * batch])), 0)
    # id -> step of every trial of an earlier round that diverged: their populations are gone,
    # so the checkpoints' notes keep them (a resumed run reports what the whole run reports).
    diverged: dict[int, int] = {}
    if r0 > 0:  # resumed in a later round: the earlier rounds' points and divergences
        define(range(r0 * batch))
        diverged = _earlier_divergences(study, notes, r0 * batch)
    populations, interrupted, step = [], False, 0
    for r in range(r0, rounds):
        if r > r0 or (notes is None and r0 > 0):
            start, pop = 0, population(r)
            pop.init()
            if sweep.checkpoints is not None:
                sweep.checkpoints.restart(r * steps)
        sweep.begin(pop, start)
        notes_r = {"round": r, "diverged": [[i, s] for i, s in sorted(diverged.items())]}
        step, interrupted = sweep.train(pop, start, steps, notes=notes_r)
        populations.append(pop)
        if interrupted:
            break
        for i in range(r * batch, (r + 1) * batch):
            if not study.trials[i].state.is_finished():
                _tell(optuna, study, sweep, i, pop)
        diverged.update({i: s for i, s in pop.diverged_steps().items() if s is not None})
    search = {
        "strategy": "optuna",
        "sampler": base["optuna.sampler"],
        "batch_size": batch,
        "rounds": rounds,
        "storage": storage,
        "study": STUDY,
        "told": _told(study),
    }
    return sweep.finish(
        populations, step if interrupted else steps, interrupted, diverged=diverged, search=search
    )
