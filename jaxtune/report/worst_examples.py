"""The worst-classified examples of a trial, and an image grid of them for TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from jaxtune.engine import SweepResult
from jaxtune.report.figures import figure, render

__all__ = ["render_examples", "worst_examples"]


def worst_examples(
    result: SweepResult, trial_id: int, k: int = 16, *, split: str = "valid"
) -> dict[str, np.ndarray] | None:
    """The ``k`` examples of a split with the highest loss for one trial, by the task's loss.

    Returns:
      ``{"index", "x", "y_true", "y_pred", "loss"}``, worst first; None when the task is not a
      classification of array inputs (integer targets of shape [N]).
    """
    task, hp = result.trial_task(trial_id)
    x, y = getattr(task.data, split)
    if (
        not hasattr(x, "shape")
        or np.ndim(y) != 1
        or not np.issubdtype(np.asarray(y).dtype, np.integer)
    ):
        return None
    state = result.trial_state(trial_id)
    outputs, _ = task.apply(state.params, state.model_state, np.asarray(x), train=False)
    loss = np.asarray(task.loss(outputs, np.asarray(y), hp), np.float64)
    loss = np.where(np.isfinite(loss), loss, np.inf)
    order = np.argsort(-loss, kind="stable")[:k]
    return {
        "index": order,
        "x": np.asarray(x)[order],
        "y_true": np.asarray(y)[order],
        "y_pred": np.argmax(np.asarray(outputs)[order], axis=-1),
        "loss": loss[order],
    }


def _as_image(x: np.ndarray) -> np.ndarray:
    """One input as a 2-D grey or 3-D RGB image scaled to [0, 1]."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        side = math.isqrt(x.size)
        x = x.reshape(side, side) if side * side == x.size else x.reshape(1, -1)
    elif x.ndim == 3:
        x = x[..., 0] if x.shape[-1] == 1 else (x if x.shape[-1] == 3 else x.mean(-1))
    elif x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    lo, hi = np.nanmin(x), np.nanmax(x)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def render_examples(ex: Mapping[str, np.ndarray], *, title: str = "") -> np.ndarray:
    """An RGB ``uint8`` image (H, W, 3) of a grid of examples titled ``true / pred``."""
    n = len(ex["y_true"])
    cols = max(1, min(n, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    fig = figure(1.7 * cols, 1.8 * rows + 0.4, dpi=80)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for j in range(n):
        ax = axes[j]
        ax.imshow(_as_image(ex["x"][j]), cmap="gray", interpolation="nearest", aspect="auto")
        wrong = int(ex["y_true"][j]) != int(ex["y_pred"][j])
        ax.set_title(
            f"true {int(ex['y_true'][j])} / pred {int(ex['y_pred'][j])}",
            fontsize=9,
            color="tab:red" if wrong else "black",
        )
    if title:
        fig.suptitle(title, fontsize=9)
    return render(fig)
