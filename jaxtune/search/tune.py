"""``jaxtune tune``: the tuning order as staged sweeps, each stage narrowing the next.

1. ``lr_range`` (``stage1-lr-range/``): the vectorized LR range test
   (:func:`jaxtune.diagnostics.lr_sweep_test`) trains ``tune.lr_range.num_lrs`` log-spaced
   learning rates at once for ``tune.lr_range.steps`` steps; :func:`lr_band` turns their final
   train losses into a band.
2. ``lr_batch`` (``stage2-lr-batch/``): quasi-random learning rates (log-uniform in the band)
   x batch sizes, trained with successive halving; the best on ``select.metric`` is chosen.
3. ``refine`` (``stage3-refine/``): schedule, clip norm, weight decay (and ``tune.refine.grid``)
   around the best; every combination is trained and the incumbent is one of them, so the
   stage keeps it unless something is better on the validation metric.
4. ``seeds`` (``stage4-seeds/``): the chosen setting over fresh seeds (not the seed the choices
   were made with); the mean and Student-t interval of the validation metric, and the test
   metric, reported once here, never used to choose.

Every stage trains through :func:`jaxtune.run_sweep` (stage 1 through the diagnostics' range
test); ``<out>/tune.json`` records each stage's choice, so a resumed run skips finished stages
and resumes an interrupted one from its checkpoints. ``<out>/summary.md`` says what each stage
searched, chose and why. The stages themselves live in :mod:`jaxtune.search.tune_stages`, the
settings in :mod:`jaxtune.search.tune_config`, ``tune.json`` and the summary in
:mod:`jaxtune.search.tune_report`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtune import config as config_lib
from jaxtune import registry
from jaxtune.config import SweepConfig
from jaxtune.search.tune_config import FOLDERS, TuneSettings, split_tune, tune_settings
from jaxtune.search.tune_report import format_summary, load_state, save_state
from jaxtune.search.tune_stages import STAGE_FUNCTIONS, Run
from jaxtune.search.tune_stages import lr_band as lr_band
from jaxtune.search.tune_stages import t_interval as t_interval

__all__ = ["TuneResult", "lr_band", "run_tune", "t_interval"]


@dataclasses.dataclass
class TuneResult:
    """What :func:`run_tune` chose.

    Attributes:
      chosen: dotted key -> value of every key a stage set (learning rate, batch size, ...).
      stages: each stage's record (as in ``tune.json``): what it searched, chose and why.
      summary: the markdown summary (``summary.md``).
      out_dir: the output folder.
    """

    chosen: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    summary: str
    out_dir: Path


def run_tune(
    config: SweepConfig | Mapping[str, Any] | None = None,
    tune: TuneSettings | Mapping[str, Any] | None = None,
    *,
    out_dir: str | Path,
    task: Any = None,
    optimizer: Any = None,
    resume: bool = False,
    callbacks: Sequence[Any] | Callable[[str], Sequence[Any]] = (),
    search_path: Sequence[str | Path] = (),
    notes: Mapping[str, Any] | None = None,
) -> TuneResult:
    """Run the tuning stages (``tune.stages``) and write their folders and ``summary.md``.

    Args:
      config: the configuration (a :class:`jaxtune.SweepConfig` or a dict, which may hold a
        ``"tune"`` table; ``None``: the bundled default). Its ``[sweep]`` table is not run:
        each stage builds its own search.
      tune: the ``[tune]`` settings (:data:`jaxtune.search.tune_config.TUNE_KEYS`).
      out_dir: the output folder: ``tune.json``, ``summary.md`` and one folder per stage.
      task, optimizer: as for :func:`jaxtune.run_sweep` (default ``task.factory`` /
        ``optimizer.factory``, else the built-ins).
      resume: skip the stages ``tune.json`` records as done; resume an interrupted stage from
        its checkpoints (``checkpoint.every > 0``), else start it again.
      callbacks: sweep callbacks for stages 2-4, or ``callbacks(stage)`` returning them,
        called as each stage starts (stage 1's range test takes none).
      search_path: folders searched first for ``task.factory`` / ``optimizer.factory``.
      notes: JSON stored in ``tune.json`` beside the records (not part of the run's identity).

    Returns:
      A :class:`TuneResult`.

    Example (stage 2 alone, in a band you give; a tiny budget):
      >>> import tempfile
      >>> result = run_tune(
      ...     {"task": {"dataset": "synthetic", "widths": [8]},
      ...      "train": {"steps": 20, "eval_every": 10},
      ...      "log": {"tensorboard": False, "plots": False},
      ...      "tune": {"stages": ["lr_batch"],
      ...               "lr_batch": {"band": [0.01, 1.0], "num_trials": 3, "batch_sizes": [32]}}},
      ...     out_dir=tempfile.mkdtemp())
      >>> sorted(result.chosen)
      ['optimizer.learning_rate', 'train.batch_size']
      >>> 0.01 <= result.chosen["optimizer.learning_rate"] <= 1.0
      True
    """
    if config is None:
        config = config_lib.default_config_dict()
    if isinstance(config, Mapping):
        config, table = split_tune(config)
        tune = table if tune is None else tune
    cfg = SweepConfig.from_dict(config)
    settings = tune_settings(tune, cfg)
    cfg = SweepConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "sweep"})
    base = cfg.base
    task, optimizer = _factories(base, task, optimizer, search_path)
    out = Path(out_dir)
    state_path = out / "tune.json"
    state = load_state(state_path, cfg, settings, resume)
    state.update(notes or {})
    per_stage = callbacks if callable(callbacks) else (lambda stage, cbs=tuple(callbacks): cbs)
    run = Run(cfg, settings, out, task, optimizer, resume, per_stage, search_path)
    run.band = settings["tune.lr_batch.band"]
    _run_stages(run, settings["tune.stages"], state, state_path)
    summary = format_summary(state)
    (out / "summary.md").write_text(summary)
    return TuneResult(dict(run.chosen), dict(state["stages"]), summary, out)


def _factories(base: Mapping[str, Any], task: Any, optimizer: Any, search_path) -> tuple:
    """The task and optimizer given, else those ``task.factory`` / ``optimizer.factory`` name."""
    if task is None and base["task.factory"]:
        task = registry.import_factory(base["task.factory"], "task.factory", search=search_path)
    if optimizer is None and base["optimizer.factory"]:
        optimizer = registry.import_factory(
            base["optimizer.factory"], "optimizer.factory", search=search_path
        )
    return task, optimizer


def _run_stages(run: Run, stages: Sequence[str], state: dict, state_path: Path) -> None:
    """Runs each stage not recorded as done, saving ``tune.json`` before and after it; a done
    stage's choices are read back from its record."""
    for stage in stages:
        record = state["stages"].get(stage)
        if record is None or record.get("status") != "done":
            state["stages"][stage] = {"status": "running", "folder": FOLDERS[stage]}
            save_state(state_path, state)
            t0 = time.perf_counter()
            run.stage_callbacks = run.callbacks(stage)
            record = STAGE_FUNCTIONS[stage](run)
            record.update(status="done", folder=FOLDERS[stage], wall_s=time.perf_counter() - t0)
            record = json.loads(json.dumps(record, default=str))  # as a resumed run reads it
            state["stages"][stage] = record
            save_state(state_path, state)
        run.chosen.update(record["set"])
        if stage == "lr_range":
            run.band = tuple(record["band"])
