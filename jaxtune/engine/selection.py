"""How trials are ranked: a validation metric (``select.metric``), its mode and a target."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

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

    def sort_key(self, value: float) -> float:
        if not math.isfinite(value):
            return math.inf
        return -value if self.mode == "max" else value

    def rank(self, values: Mapping[int, float]) -> list[int]:
        """The ids of ``values`` best first (non-finite last, ties by id).

        Example:
          >>> Selection("valid.loss", "min").rank({0: 0.5, 1: float("nan"), 2: 0.1, 3: 0.5})
          [2, 0, 3, 1]
        """
        return sorted(values, key=lambda i: (self.sort_key(float(values[i])), i))


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
