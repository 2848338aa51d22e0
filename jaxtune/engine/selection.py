"""How trials are ranked: a validation metric (``select.metric``), its mode and a target."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from jaxtune.config import SweepConfig
from jaxtune.errors import ConfigError
from jaxtune.tasks import METRIC_MODES, default_selection

__all__ = ["Selection", "mode_of", "resolve_selection"]


@dataclasses.dataclass(frozen=True)
class Selection:
    """How trials are ranked: a validation metric, ``max`` or ``min``, an optional target."""

    metric: str
    mode: str
    target: float | None = None

    def reached(self, values: np.ndarray) -> np.ndarray:
        if self.target is None:
            return np.zeros(values.shape, bool)
        return values >= self.target if self.mode == "max" else values <= self.target

    def rank(self, values: Mapping[Hashable, float]) -> list:
        """The ids of ``values`` best first: by value (``mode``), non-finite values last, ties
        (and the non-finite ones) in id order.

        Args:
          values: id -> value of the metric (a trial id, or any sortable key).

        Returns:
          The ids, best first.

        Example:
          >>> Selection("valid.accuracy", "max").rank({0: 0.5, 1: float("nan"), 2: 0.9, 3: 0.5})
          [2, 0, 3, 1]
        """

        def key(i: Hashable) -> tuple:
            v = float(values[i])
            return (0, -v if self.mode == "max" else v, i) if math.isfinite(v) else (1, 0.0, i)

        return sorted(values, key=key)


def resolve_selection(cfg: SweepConfig, metric_names: Sequence[str]) -> Selection:
    """``select.*`` of a config, completed from the task's metrics (defaults, known modes)."""
    base = cfg.base
    metric = base["select.metric"] or default_selection(metric_names)
    allowed = ["valid.loss", *(f"valid.{m}" for m in metric_names)]
    if metric not in allowed:
        raise ConfigError(
            f"select.metric = {metric!r} is invalid: the task reports {', '.join(allowed)}"
        )
    mode = base["select.mode"] or METRIC_MODES.get(metric.split(".", 1)[1])
    if mode is None:
        raise ConfigError(
            f"select.mode is needed for select.metric = {metric!r}: expected 'max' or 'min'"
        )
    return Selection(metric, mode, base["select.target"])


def mode_of(metric: str) -> str:
    """The known mode (``max`` / ``min``) of a metric such as ``valid.accuracy``."""
    mode = METRIC_MODES.get(metric.split(".")[-1])
    if mode is None:
        raise ValueError(f"mode is needed for metric = {metric!r}: pass mode='max' or 'min'")
    return mode
