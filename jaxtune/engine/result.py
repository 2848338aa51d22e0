"""What a sweep produced: per-trial results, histories, the selection rule; save and load.

Hyperparameters are *chosen* on the validation split: ``select.metric`` (``valid.accuracy`` for
tasks that report accuracy, else ``valid.loss``) and ``select.mode`` drive the ranking and
:meth:`SweepResult.best`. Test metrics are kept beside, and refused as a selection criterion.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtune.config import SweepConfig
from jaxtune.config.space import freeze
from jaxtune.engine.aggregate import t_interval
from jaxtune.engine.selection import Selection, mode_of, resolve_selection
from jaxtune.engine.step import TrainState
from jaxtune.files import atomic_path, atomic_write

__all__ = [
    "Selection",
    "SweepResult",
    "TrainedUnit",
    "TrialResult",
    "resolve_selection",
    "summarize",
]

#: Per-step histories, shape [trials, steps].
STEP_KEYS = ("train.loss", "grad_norm", "clipped", "learning_rate")


class TrainedUnit(NamedTuple):
    """The trained state of one compiled call (leading trial axis, padding included)."""

    trial_ids: list[int]
    state: TrainState
    hp: dict[str, Any]
    task: Any  # the jaxtune.Task the call trained


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
        out.update({k: _jsonable(v) for k, v in self.hparams.items()})
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else x


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

    ``stopped`` maps a trial stopped early to ``(step, reason)``: its final metrics are its own
    last ones (the last ``train.eval_every`` steps before it stopped, its last evaluation).
    """
    stopped = stopped or {}
    eval_every = cfg.base["train.eval_every"]
    eval_keys = [k for k in history if k.count(".") == 1 and k not in STEP_KEYS]
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
            sel = history[selection.metric][i].astype(np.float64)
            finite = np.isfinite(sel)
            if finite.any():
                score = np.where(finite, sel if selection.mode == "max" else -sel, -np.inf)
                j = int(np.argmax(score))
                best_step, best = int(steps[j]), float(sel[j])
            hit = np.flatnonzero(selection.reached(sel) & finite)
            target_step = int(steps[hit[0]]) if hit.size else None
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

        def key(t: TrialResult) -> tuple:
            early = t.stopped_step is not None
            return (t.diverged, early, sel.sort_key(t.final.get(sel.metric, math.nan)), t.id)

        return sorted(self.trials, key=key)

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
        sel = Selection(metric, mode)
        candidates = [
            t
            for t in self.trials
            if not t.diverged and math.isfinite(t.final.get(metric, math.nan))
        ]
        if not candidates:
            raise ValueError("no trial finished with a finite value of " + metric)
        finished = [t for t in candidates if t.stopped_step is None]
        return min(finished or candidates, key=lambda t: sel.sort_key(t.final[metric]))

    def aggregate(self, over: str = "train.seed") -> list[dict[str, Any]]:
        """Mean, std and a 95% interval of each final metric per setting, across ``over``.

        Trials are grouped by every hyperparameter except ``over``. The interval is the
        Student-t interval of the mean (:func:`jaxtune.engine.aggregate.t_interval`).
        """
        groups: dict[tuple, list[TrialResult]] = {}
        for t in self.trials:
            key = tuple((k, freeze(v)) for k, v in t.hparams.items() if k != over)
            groups.setdefault(key, []).append(t)
        rows = []
        for key, members in groups.items():
            row: dict[str, Any] = {k: _jsonable(v) for k, v in key}
            row["n"] = len(members)
            row["diverged"] = sum(m.diverged for m in members)
            for metric in members[0].final:
                vals = np.array([m.final[metric] for m in members], dtype=np.float64)
                mean, low, high = t_interval(vals, 0.95)
                std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
                row[metric] = {"mean": mean, "std": std, "ci95": (low, high)}
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "select": dataclasses.asdict(self.selection),
            "trials": [
                {
                    "id": t.id,
                    "name": t.name,
                    "hparams": {k: _jsonable(v) for k, v in t.hparams.items()},
                    "final": {k: _none_if_nan(v) for k, v in t.final.items()},
                    "diverged": t.diverged,
                    "diverged_step": t.diverged_step,
                    "best_step": t.best_step,
                    "best": _none_if_nan(t.best),
                    "target_step": t.target_step,
                    "stopped_step": t.stopped_step,
                    "stop_reason": t.stop_reason,
                }
                for t in self.trials
            ],
            "timing": self.timing,
            "search": self.search,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``results.json``, ``results.csv`` and ``history.npz`` into ``directory``."""
        d = Path(directory)
        atomic_write(d / "results.json", json.dumps(self.to_json(), indent=2, default=_jsonable))
        rows = self.table()
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(d / "results.csv") as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        with atomic_path(d / "history.npz") as tmp:
            np.savez_compressed(tmp, **self.history)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> SweepResult:
        """Read a result written by :meth:`save`."""
        d = Path(directory)
        blob = json.loads((d / "results.json").read_text())
        cfg = SweepConfig.from_dict(blob["config"])
        trials = [
            TrialResult(
                t["id"],
                t["name"],
                {k: freeze(v) for k, v in t["hparams"].items()},
                {k: _nan_if_none(v) for k, v in t["final"].items()},
                t["diverged"],
                t["diverged_step"],
                t.get("best_step"),
                _nan_if_none(t.get("best")),
                t.get("target_step"),
                t.get("stopped_step"),
                t.get("stop_reason"),
            )
            for t in blob["trials"]
        ]
        history: dict[str, np.ndarray] = {}
        if (d / "history.npz").exists():
            with np.load(d / "history.npz") as z:
                history = {k: z[k] for k in z.files}
        selection = Selection(**blob["select"])
        return cls(cfg, trials, history, blob.get("timing", {}), selection, blob.get("search", {}))
