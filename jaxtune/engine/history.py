"""The per-trial histories a sweep records, and lookups into them.

A history is a dict of numpy arrays: ``STEP_KEYS`` of shape ``[trials, steps]`` (one value per
trained step), ``eval_step`` of shape ``[evals]`` (the evaluated steps, ascending) and one
``<split>.<metric>`` array of shape ``[trials, evals]`` per evaluated split and metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["STEP_KEYS", "STEP_METRICS", "empty_history", "eval_column", "eval_metric_keys"]

#: Per-step histories, shape [trials, steps].
STEP_KEYS = ("train.loss", "grad_norm", "clipped", "learning_rate")
#: The per-step metrics of a training step (:func:`jaxtune.make_train_step`), in the order of
#: the history keys ``STEP_KEYS`` they are recorded under.
STEP_METRICS = ("loss", "grad_norm", "clipped", "learning_rate")


def empty_history(n: int, steps: int, eval_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The histories of ``n`` trials before any step: NaN per-step values, no evaluations."""
    history = {k: np.full((n, steps), np.nan, np.float32) for k in STEP_KEYS if k != "clipped"}
    history["clipped"] = np.zeros((n, steps), bool)
    history["eval_step"] = np.zeros((0,), np.int32)
    for k in eval_names:
        history[k] = np.zeros((n, 0), np.float32)
    return history


def eval_metric_keys(history: Mapping[str, np.ndarray]) -> list[str]:
    """The ``<split>.<metric>`` keys of a history (``valid.loss``, ``test.accuracy``, ...)."""
    return [k for k in history if k.count(".") == 1 and k not in STEP_KEYS]


def eval_column(history: Mapping[str, np.ndarray], step: int) -> int:
    """The column of the ``<split>.<metric>`` arrays that holds the evaluation at ``step``.

    Args:
      history: a sweep's histories (``eval_step`` among them).
      step: an evaluated step.

    Returns:
      The index into the evaluation axis (the last one, should a step appear twice).

    Raises:
      ValueError: ``step`` was not evaluated.

    Example:
      >>> eval_column({"eval_step": np.array([10, 20, 30])}, 20)
      1
    """
    steps = np.asarray(history["eval_step"])
    at = np.flatnonzero(steps == step)
    if not at.size:
        raise ValueError(
            f"step = {step} was not evaluated: expected one of {steps.tolist()} (multiples of "
            "train.eval_every)"
        )
    return int(at[-1])
