"""One trial's outcome (:class:`TrialResult`), computed from the histories (:func:`summarize`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.config import SweepConfig
from jaxtune.engine.history import eval_metric_keys
from jaxtune.engine.selection import Selection

__all__ = ["TrialResult", "jsonable", "summarize"]


def jsonable(v: Any) -> Any:
    """A hyperparameter value as JSON/CSV writes it (tuples as lists, numpy scalars unwrapped)."""
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclasses.dataclass
class TrialResult:
    """One trial's outcome (a row of the results table).

    Attributes:
      final: ``train.loss`` (the mean minibatch loss over the last ``train.eval_every`` steps)
        and every evaluated ``<split>.<metric>`` at the last evaluation.
      best_step / best: the evaluation step where ``select.metric`` was best, and its value.
      target_step: the first evaluation step that reached ``select.target`` (None if never or
        no target).
      stopped_step / stop_reason: where an adaptive strategy stopped the trial early and why
        (None for a trial trained to the end).
    """

    id: int
    name: str
    hparams: dict[str, Any]
    final: dict[str, float]
    diverged: bool
    diverged_step: int | None
    best_step: int | None
    best: float
    target_step: int | None = None
    stopped_step: int | None = None
    stop_reason: str | None = None

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name}
        out.update({k: jsonable(v) for k, v in self.hparams.items()})
        out.update(self.final)
        out.update(
            diverged=self.diverged,
            diverged_step=self.diverged_step,
            best_step=self.best_step,
            best=self.best,
            target_step=self.target_step,
        )
        if self.stopped_step is not None:
            out.update(stopped_step=self.stopped_step, stop_reason=self.stop_reason)
        return out


def _best_and_target(
    sel_values: np.ndarray, steps: np.ndarray, selection: Selection
) -> tuple[int | None, float, int | None]:
    """``(best_step, best, target_step)`` of one trial's ``select.metric`` evaluations."""
    values = sel_values.astype(np.float64)
    finite = np.isfinite(values)
    best_step, best = None, math.nan
    if finite.any():
        score = np.where(finite, values if selection.mode == "max" else -values, -np.inf)
        j = int(np.argmax(score))
        best_step, best = int(steps[j]), float(values[j])
    hit = np.flatnonzero(selection.reached(values) & finite)
    return best_step, best, int(steps[hit[0]]) if hit.size else None


def summarize(
    cfg: SweepConfig,
    names: Sequence[str],
    hparams: Sequence[dict[str, Any]],
    history: Mapping[str, np.ndarray],
    diverged_steps: Sequence[int | None],
    selection: Selection,
    steps_done: int,
    stopped: Mapping[int, tuple[int, str]] | None = None,
) -> list[TrialResult]:
    """The per-trial results, computed from the histories.

    Args:
      cfg: the sweep's configuration (``train.eval_every`` sets the ``train.loss`` window).
      names / hparams: each trial's name and hyperparameters, in trial-id order.
      history: the sweep's histories (:mod:`jaxtune.engine.history`).
      diverged_steps: each trial's divergence step (None if it did not diverge).
      selection: the metric, mode and target that pick each trial's best evaluation.
      steps_done: the steps every trial not stopped early trained.
      stopped: maps a trial stopped early to ``(step, reason)``: its final metrics are its own
        last ones (the last ``train.eval_every`` steps before it stopped, its last evaluation).

    Returns:
      One :class:`TrialResult` per trial, in trial-id order.
    """
    stopped = stopped or {}
    eval_every = cfg.base["train.eval_every"]
    eval_keys = eval_metric_keys(history)
    steps = history["eval_step"]
    trials = []
    for i, name in enumerate(names):
        last = stopped[i][0] if i in stopped else steps_done
        window = history["train.loss"][i, max(0, last - eval_every) : last]
        final = {"train.loss": float(np.mean(window)) if window.size else math.nan}
        evaluated = (steps <= last) & (np.isfinite(history[eval_keys[0]][i]) if eval_keys else True)
        seen = np.flatnonzero(evaluated)
        j_last = int(seen[-1]) if seen.size else None
        for k in eval_keys:
            final[k] = float(history[k][i, j_last]) if j_last is not None else math.nan
        best_step, best, target_step = None, math.nan, None
        if steps.size and selection.metric in history:
            best_step, best, target_step = _best_and_target(
                history[selection.metric][i], steps, selection
            )
        stop_step, reason = stopped.get(i, (None, None))
        trials.append(
            TrialResult(
                i,
                name,
                dict(hparams[i]),
                final,
                diverged_steps[i] is not None,
                diverged_steps[i],
                best_step,
                best,
                target_step,
                stop_step,
                reason,
            )
        )
    return trials
