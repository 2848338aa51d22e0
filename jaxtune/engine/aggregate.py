"""Statistics of final metrics across trials that differ only in a seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["t_interval"]


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
