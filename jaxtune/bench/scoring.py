"""AlgoPerf scores from times to target: per-workload times, ratios, profiles, the benchmark score.

The rules (AlgoPerf v0.6, ``scoring/performance_profile.py`` of mlcommons/algorithmic-efficiency),
for submissions ``s`` and workloads ``w``, each run as ``studies`` studies of ``trials`` trials:

* a trial's time ``t_ij`` is when it first reached the validation target (``inf`` for a miss);
* ``t_sw = median_j(min_i t_ij)``: the fastest trial of each study, the median over studies
  (a study that missed counts as ``inf`` in the median);
* ``r_sw = t_sw / min_s t_sw``, set to ``inf`` where ``t_sw > r_max * min_s t_sw`` (``r_max = 4``);
  a workload no submission reached has ``r = inf`` for all;
* ``rho_s(tau)`` = the fraction of the workloads with ``r_sw <= tau``;
* ``B_s`` = the trapezoid integral of ``rho_s`` over ``np.linspace(1, r_max, 100)``, divided by
  ``r_max - 1``: 1 for a submission that is fastest on every workload, 0 for one never within
  ``r_max`` of the fastest.

Everything here is NumPy on arrays whose leading axes are ``[submissions, workloads]``; NaN
times (a diverged trial) count as misses.

Example:
    >>> import numpy as np
    >>> times = np.array([[[[10.0, 12.0]]], [[[20.0, np.inf]]]])  # 2 subs, 1 workload, 1x2
    >>> s = score(times)
    >>> s.t.tolist(), s.r.tolist(), s.score.tolist()
    ([[10.0], [20.0]], [[1.0], [2.0]], [1.0, 0.6717171717171717])
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "NUM_POINTS",
    "R_MAX",
    "Scores",
    "benchmark_scores",
    "per_workload_times",
    "performance_profile",
    "performance_ratios",
    "score",
    "tau_grid",
]

#: AlgoPerf's upper integration limit of the performance profile (``max_tau``).
R_MAX = 4.0
#: AlgoPerf's number of points of the ``tau`` grid.
NUM_POINTS = 100


def _misses_as_inf(times: ArrayLike) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    return np.where(np.isnan(t), np.inf, t)


def per_workload_times(times: ArrayLike) -> np.ndarray:
    """``median`` over studies of ``min`` over trials: ``[..., studies, trials] -> [...]``.

    Example:
        >>> inf = float("inf")
        >>> per_workload_times([[3.0, inf], [5.0, 4.0], [inf, inf]]).item()  # mins 3, 4, inf
        4.0
        >>> per_workload_times([[1.0], [inf]]).item()  # an even count: the mean of the middle two
        inf
    """
    t = _misses_as_inf(times)
    return np.median(np.min(t, axis=-1), axis=-1)


def performance_ratios(t: ArrayLike, r_max: float = R_MAX) -> np.ndarray:
    """``t / min over submissions`` per workload (``[submissions, workloads]``), ``inf`` beyond
    ``r_max`` times the fastest, for misses, and on workloads nobody reached.

    Example:
        >>> performance_ratios([[10.0, float("inf")], [20.0, 7.0], [50.0, 7.0]]).tolist()
        [[1.0, inf], [2.0, 1.0], [inf, 1.0]]
    """
    t = _misses_as_inf(t)
    best = np.min(t, axis=0, keepdims=True)
    kept = np.isfinite(t) & (t <= r_max * best)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(t == best, 1.0, t / best)
    return np.where(kept, ratio, np.inf)


def tau_grid(r_max: float = R_MAX, num_points: int = NUM_POINTS) -> np.ndarray:
    """AlgoPerf's grid of ``tau``: ``np.linspace(1, r_max, num_points)``.

    Example:
        >>> g = tau_grid()
        >>> len(g), g[0].item(), g[33].item(), g[-1].item()
        (100, 1.0, 2.0, 4.0)
    """
    return np.linspace(1.0, r_max, num_points)


def performance_profile(r: ArrayLike, taus: ArrayLike) -> np.ndarray:
    """``rho[s, k]``: the fraction of workloads with ``r[s, w] <= taus[k]``.

    Example:
        >>> performance_profile([[1.0, 2.0, float("inf")]], [1.0, 1.5, 2.0]).round(3).tolist()
        [[0.333, 0.333, 0.667]]
    """
    r, taus = np.asarray(r, np.float64), np.asarray(taus, np.float64)
    return np.mean(r[:, :, None] <= taus[None, None, :], axis=1)


def benchmark_scores(rho: ArrayLike, taus: ArrayLike) -> np.ndarray:
    """The trapezoid integral of each profile over ``taus``, divided by the grid's range.

    Example:
        >>> benchmark_scores([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]], [1.0, 2.5, 4.0]).tolist()
        [1.0, 0.25]
    """
    taus = np.asarray(taus, np.float64)
    return np.trapezoid(np.asarray(rho, np.float64), x=taus, axis=-1) / (taus[-1] - taus[0])


class Scores(NamedTuple):
    """Every stage of the scoring.

    Attributes:
      t: per-workload times ``[submissions, workloads]`` (``inf``: missed).
      r: performance ratios ``[submissions, workloads]``.
      taus: the grid ``[points]``.
      rho: the performance profiles ``[submissions, points]``.
      score: the benchmark scores ``[submissions]``, in ``[0, 1]``.
    """

    t: np.ndarray
    r: np.ndarray
    taus: np.ndarray
    rho: np.ndarray
    score: np.ndarray


def score(times: ArrayLike, r_max: float = R_MAX, num_points: int = NUM_POINTS) -> Scores:
    """Score trial times ``[submissions, workloads, studies, trials]`` as AlgoPerf does.

    Args:
      times: each trial's time to target (``inf`` or NaN: never reached).
      r_max: ratios above it count as ``inf``; the upper end of the ``tau`` grid.
      num_points: points of the ``tau`` grid.

    Returns:
      The :class:`Scores`.
    """
    t = per_workload_times(times)
    r = performance_ratios(t, r_max)
    taus = tau_grid(r_max, num_points)
    rho = performance_profile(r, taus)
    return Scores(t, r, taus, rho, benchmark_scores(rho, taus))
