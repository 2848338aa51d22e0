"""Normalization masking (checklist item 13): does normalization hide a problem?

The same trial trains with and without normalization side by side (one :func:`jaxtune.run_sweep`
over ``task.normalization``); then the std of every Dense/Conv output (before normalization) is
measured at the final parameters on training data. Normalization is masking a problem when the
normalized net trains while the unnormalized one diverges, or when some net's pre-normalization
scale grows layer by layer.

The check needs a normalization switch: the built-in task, or a task factory that builds a
different model for each ``task.normalization``. A fixed :class:`jaxtune.Task` (or a factory that
ignores the key) is skipped with a reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtune.config import SweepConfig
from jaxtune.diagnostics.signal import layer_records, robust_std, safe_ratio
from jaxtune.diagnostics.subject import Check, Subject, make_subject, require_int
from jaxtune.engine import SweepResult, run_sweep
from jaxtune.formatting import fmt

__all__ = ["NormalizationResult", "normalization_masking"]


@dataclasses.dataclass
class NormalizationResult(Check):
    """Same trial with and without normalization (see :func:`normalization_masking`)."""

    normalizations: list[str] = dataclasses.field(default_factory=list)
    final_loss: list[float] = dataclasses.field(default_factory=list)
    diverged: list[bool] = dataclasses.field(default_factory=list)
    layer_std: list[list[float]] = dataclasses.field(default_factory=list)
    growth: list[float] = dataclasses.field(default_factory=list)
    masked: bool = False
    result: SweepResult | None = dataclasses.field(default=None, repr=False)

    def lines(self) -> list[str]:
        return [
            f"  norm={norm:<6} final train loss {fmt(self.final_loss[j])}  diverged="
            f"{self.diverged[j]}  layer growth x{fmt(self.growth[j])}  pre-norm std per layer: "
            + " ".join(fmt(v) for v in self.layer_std[j])
            for j, norm in enumerate(self.normalizations[: len(self.final_loss)])
        ]


def _layer_std(result: SweepResult, i: int, batch: int = 256) -> list[float]:
    task, hp = result.trial_task(i)
    state = result.trial_state(i)
    x = jax.tree.map(lambda a: np.asarray(a)[:batch], task.data.train[0])
    records: list = []
    with layer_records(records):
        task.apply(state.params, state.model_state, x, train=False, key=None)
    return [float(robust_std(r[2])) for r in records[:-1]]


def _switch_works(subject: Subject, normalizations: Sequence[str]) -> str | None:
    """None when the task changes with ``task.normalization``, else why the check is skipped."""
    if subject.fixed_task:
        return "the task is a fixed jaxtune.Task: it has no task.normalization switch"
    if subject.task_source is None:
        return None  # the built-in task honours the key
    shapes = set()
    for norm in normalizations:
        t = subject.task_source({**subject.structure, "task.normalization": norm})
        shapes.add(str(jax.tree.structure(jax.eval_shape(t.init, subject.key, subject.hp))))
    if len(shapes) == 1:
        return "the task factory builds the same model for every task.normalization"
    return None


def normalization_masking(
    config: Any = None,
    *,
    task: Any = None,
    optimizer: Any = None,
    steps: int = 200,
    normalizations: Sequence[str] | None = None,
    growth_limit: float = 10.0,
    subject: Subject | None = None,
) -> NormalizationResult:
    """Train the trial with and without normalization side by side (one sweep).

    Args:
      config, task, optimizer: the trial (as for :func:`jaxtune.run_sweep`).
      steps: training steps of each run.
      normalizations: default ``["none", "batch"]``, or ``["none", <the trial's>]``.
      growth_limit: the largest acceptable ratio of the last hidden layer's pre-normalization
        std to the first's.

    Returns:
      A :class:`NormalizationResult`; it fails (``masked``) when a normalized run trains (finite,
      loss below its start) while the unnormalized one diverges, or a run's layer growth exceeds
      ``growth_limit``.
    """
    steps = require_int("steps", steps)
    subject = subject or make_subject(config, task=task, optimizer=optimizer)
    base_norm = subject.cfg.base["task.normalization"]
    norms = list(normalizations or ["none", "batch" if base_norm == "none" else base_norm])
    out = NormalizationResult(True, "", normalizations=norms)
    out.name = "normalization masking"
    why = _switch_works(subject, norms)
    if why is not None:
        out.skipped, out.reason = True, why
        return out
    cfg: SweepConfig = subject.cfg.searching(
        {"method": "grid", "seeds": 1, "grid": {"task.normalization": norms}},
        {"train.steps": int(steps), "train.eval_every": int(steps), "checkpoint.every": 0},
    )
    result = run_sweep(cfg, task=subject.task_source, optimizer=subject.optimizer_source)
    out.result = result
    for i, t in enumerate(result.trials):
        out.final_loss.append(float(t.final["train.loss"]))
        out.diverged.append(bool(t.diverged))
        stds = _layer_std(result, i)
        out.layer_std.append(stds)
        out.growth.append(safe_ratio(stds[-1], stds[0]) if stds else 1.0)
    h = result.history["train.loss"]
    trains = [
        not out.diverged[j]
        and math.isfinite(out.final_loss[j])
        and out.final_loss[j] < 0.9 * h[j, 0]
        for j in range(len(norms))
    ]
    none_j = norms.index("none") if "none" in norms else None
    problems = _problems(out, result, norms, trains, none_j, growth_limit)
    out.masked = bool(problems)
    out.passed = not out.masked
    out.reason = (
        "normalization is masking a problem: "
        + "; ".join(problems)
        + ". Fix the init/learning rate of the unnormalized net"
        if out.masked
        else "the unnormalized net trains too and its layer scales stay bounded (growth x"
        f"{fmt(out.growth[none_j]) if none_j is not None else '-'})"
    )
    return out


def _problems(out, result, norms, trains, none_j, growth_limit) -> list[str]:
    """What normalization hides, when a normalized run trains: the unnormalized run diverging,
    or activation scales growing layer by layer (in either run)."""
    normed = [j for j, nm in enumerate(norms) if nm != "none"]
    problems: list[str] = []
    if none_j is None or not any(trains[j] for j in normed):
        return problems
    if out.diverged[none_j]:
        at = result.trials[none_j].diverged_step
        problems.append(
            f"without normalization the run diverges (step {at}) while "
            f"{', '.join(norms[j] for j in normed if trains[j])} trains"
        )
    g = out.growth[none_j]
    if g > growth_limit or not math.isfinite(g):
        problems.append(
            f"without normalization the activation scale grows x{g:.3g} from the first to the "
            "last hidden layer"
        )
    for j in normed:
        if trains[j] and out.growth[j] > growth_limit:
            problems.append(
                f"under {norms[j]} normalization the pre-normalization scale grows "
                f"x{out.growth[j]:.3g} layer by layer (hidden by the normalization)"
            )
    return problems
