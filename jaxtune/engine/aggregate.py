"""Statistics of final metrics across trials that differ only in a seed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from jaxtune.config.space import freeze
from jaxtune.engine.summary import TrialResult, jsonable

__all__ = ["aggregate", "t_interval"]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of ``values``
    (``scipy.stats.t.interval`` with ``n - 1`` degrees of freedom and the standard error).

    Fewer than two values, or a non-finite one, give ``(mean, nan, nan)``; equal values give
    ``(mean, mean, mean)``.

    Example:
      >>> mean, low, high = t_interval([1.0, 2.0, 3.0])
      >>> mean, round(low, 3), round(high, 3)
      (2.0, -0.484, 4.484)
    """
    v = np.asarray(values, np.float64)
    mean = float(np.mean(v))
    if v.size < 2 or not np.isfinite(v).all():
        return mean, math.nan, math.nan
    sem = float(stats.sem(v))
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, v.size - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def aggregate(trials: Sequence[TrialResult], over: str = "train.seed") -> list[dict[str, Any]]:
    """Mean, std and a 95% interval of each final metric per setting, across ``over``.

    Args:
      trials: the trials of a sweep.
      over: the hyperparameter the repeats differ in; trials are grouped by every other one.

    Returns:
      One row per setting: its hyperparameters, ``n``, ``diverged`` (how many of the ``n``) and
      per final metric ``{"mean", "std", "ci95": (low, high)}``, the interval from
      :func:`t_interval`.
    """
    groups: dict[tuple, list[TrialResult]] = {}
    for t in trials:
        key = tuple((k, freeze(v)) for k, v in t.hparams.items() if k != over)
        groups.setdefault(key, []).append(t)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = {k: jsonable(v) for k, v in key}
        row["n"] = len(members)
        row["diverged"] = sum(m.diverged for m in members)
        for metric in members[0].final:
            vals = np.array([m.final[metric] for m in members], dtype=np.float64)
            mean, low, high = t_interval(vals, 0.95)
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            row[metric] = {"mean": mean, "std": std, "ci95": (low, high)}
        rows.append(row)
    return rows
