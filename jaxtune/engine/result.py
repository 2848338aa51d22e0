"""What a sweep produced (:class:`SweepResult`) and how its trials rank.

Hyperparameters are *chosen* on the validation split: ``select.metric`` (``valid.accuracy`` for
tasks that report accuracy, else ``valid.loss``) and ``select.mode`` drive the ranking and
:meth:`SweepResult.best`. Test metrics are kept beside, and refused as a selection criterion.

One trial's outcome and how it is computed from the histories live in
:mod:`~jaxtune.engine.summary`, the histories in :mod:`~jaxtune.engine.history`, statistics
across seeds in :mod:`~jaxtune.engine.aggregate` and the files in
:mod:`~jaxtune.engine.result_io`; their public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtune.config import SweepConfig
from jaxtune.engine import aggregate as aggregate_lib
from jaxtune.engine import result_io
from jaxtune.engine.history import STEP_KEYS as STEP_KEYS
from jaxtune.engine.history import eval_column as eval_column
from jaxtune.engine.selection import Selection as Selection
from jaxtune.engine.selection import mode_of
from jaxtune.engine.selection import resolve_selection as resolve_selection
from jaxtune.engine.step import TrainState
from jaxtune.engine.summary import TrialResult as TrialResult
from jaxtune.engine.summary import summarize as summarize

__all__ = [
    "STEP_KEYS",
    "Selection",
    "SweepResult",
    "TrainedUnit",
    "TrialResult",
    "eval_column",
    "resolve_selection",
    "summarize",
]


class TrainedUnit(NamedTuple):
    """The trained state of one compiled call (leading trial axis, padding included)."""

    trial_ids: list[int]
    state: TrainState
    hp: dict[str, Any]
    task: Any  # the jaxtune.Task the call trained


@dataclasses.dataclass
class SweepResult:
    """Everything a sweep produced.

    Attributes:
      config: the resolved :class:`jaxtune.SweepConfig`.
      trials: one :class:`TrialResult` per trial, in trial-id order.
      history: ``train.loss``, ``grad_norm``, ``clipped`` and ``learning_rate`` of shape
        ``[trials, steps]``; ``eval_step`` of shape ``[evals]``; ``<split>.<metric>`` (e.g.
        ``valid.loss``, ``valid.accuracy``, ``test.accuracy``) of shape ``[trials, evals]``.
      timing: ``compile_s``, ``run_s``, ``trial_steps_per_s`` and per-program details.
      selection: the metric, mode and target that rank the trials.
      search: what an adaptive strategy recorded (``strategy``, rungs, lineage, ...); empty
        for a plain sweep.
    """

    config: SweepConfig
    trials: list[TrialResult]
    history: dict[str, np.ndarray]
    timing: dict[str, Any]
    selection: Selection
    search: dict[str, Any] = dataclasses.field(default_factory=dict)
    units: list[TrainedUnit] = dataclasses.field(default_factory=list, repr=False)

    def _unit(self, trial_id: int) -> tuple[TrainedUnit, int]:
        for unit in self.units:
            if trial_id in unit.trial_ids:
                return unit, unit.trial_ids.index(trial_id)
        if not self.units and 0 <= trial_id < len(self.trials):
            raise ValueError(
                "this result carries no trained states (read back from disk); use "
                "jaxtune.export_trial(run_dir, trial_id) for the checkpointed variables"
            )
        if 0 <= trial_id < len(self.trials):
            stopped = self.trials[trial_id].stopped_step
            why = (
                f"it was stopped at step {stopped}"
                if stopped is not None
                else "its bracket or round finished before this run resumed"
            )
            raise ValueError(
                f"trial_id = {trial_id} has no trained state in this result ({why}; a result "
                "keeps the states of the trials training at the end); use "
                "jaxtune.export_trial(run_dir, trial_id) for its checkpointed variables"
            )
        raise ValueError(
            f"trial_id = {trial_id} is invalid: expected a trial id in [0, {len(self.trials)})"
        )

    def trial_state(self, trial_id: int) -> TrainState:
        """The final :class:`TrainState` of one trial (params, optimizer and model state).

        Available on the result of :func:`jaxtune.run_sweep` (not on a result read back from
        disk; use :func:`jaxtune.export_trial` for that).
        """
        unit, j = self._unit(trial_id)
        return jax.tree.map(lambda a: a[j], unit.state)

    def trial_task(self, trial_id: int) -> tuple[Any, dict[str, Any]]:
        """The :class:`jaxtune.Task` that trained a trial and the trial's ``hp``."""
        unit, j = self._unit(trial_id)
        return unit.task, {k: v[j] for k, v in unit.hp.items()}

    def table(self) -> list[dict[str, Any]]:
        """The per-trial table, one dict per trial."""
        return [t.row() for t in self.trials]

    def ranked(self) -> list[TrialResult]:
        """Trials best first by ``select.metric`` (final value): trials trained to the end
        first, then those an adaptive strategy stopped early, diverged and NaN trials last."""
        sel = self.selection
        order = sel.rank({t.id: t.final.get(sel.metric, math.nan) for t in self.trials})
        place = {i: k for k, i in enumerate(order)}
        return sorted(
            self.trials, key=lambda t: (t.diverged, t.stopped_step is not None, place[t.id])
        )

    def best(self, metric: str | None = None, mode: str | None = None) -> TrialResult:
        """The non-diverged trial with the best final ``metric`` (default ``select.metric``);
        among trials trained to the end when an adaptive strategy stopped others early.

        Raises:
          ValueError: for a test metric (the test split is reported, never used to choose), an
            unknown metric or mode, or when no trial has a finite value.
        """
        metric = metric or self.selection.metric
        if mode is None:
            mode = self.selection.mode if metric == self.selection.metric else mode_of(metric)
        if metric.startswith("test."):
            raise ValueError(
                f"metric = {metric!r} is refused: hyperparameters are chosen on the validation "
                "split (valid.*); test metrics are reported, never used to choose"
            )
        known = sorted({k for t in self.trials for k in t.final})
        if metric not in known:
            raise ValueError(f"metric = {metric!r} is invalid: expected one of {known}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode = {mode!r} is invalid: expected 'max' or 'min'")
        candidates = [
            t
            for t in self.trials
            if not t.diverged and math.isfinite(t.final.get(metric, math.nan))
        ]
        if not candidates:
            raise ValueError("no trial finished with a finite value of " + metric)
        pool = {t.id: t for t in [t for t in candidates if t.stopped_step is None] or candidates}
        first = Selection(metric, mode).rank({i: t.final[metric] for i, t in pool.items()})[0]
        return pool[first]

    def aggregate(self, over: str = "train.seed") -> list[dict[str, Any]]:
        """Mean, std and a 95% interval of each final metric per setting, across ``over``
        (:func:`jaxtune.engine.aggregate.aggregate`)."""
        return aggregate_lib.aggregate(self.trials, over)

    def to_json(self) -> dict[str, Any]:
        """The contents of ``results.json``."""
        return result_io.to_json(self.config, self.selection, self.trials, self.timing, self.search)

    def save(self, directory: str | Path) -> Path:
        """Write ``results.json``, ``results.csv`` and ``history.npz`` into ``directory``."""
        return result_io.write(directory, self.to_json(), self.table(), self.history)

    @classmethod
    def load(cls, directory: str | Path) -> SweepResult:
        """Read a result written by :meth:`save`."""
        return cls(**result_io.read(directory))
