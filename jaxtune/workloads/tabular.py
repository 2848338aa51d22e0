"""Tabular workloads: MLPs on scikit-learn's bundled digits (flat) and diabetes data.

``task.widths`` sets the hidden widths, ``task.dtype`` the compute dtype and ``task.subset``
the number of training examples (see :mod:`jaxtune.workloads.common`).

Measured reference runs (``run_sweep(workload.config())``, one trial, Adam, on 2 CPU cores
shared with other work, jax 0.10.2; see docs/workloads.md):

* ``digits_mlp`` (lr 1e-3, batch 64): validation accuracy reaches the target 0.945 (at most 9
  of the 180 examples wrong) at step 80 of 150 and levels off near 0.956; compile 9.0 s,
  training 0.4 s.
* ``diabetes`` (lr 3e-3, batch 32): validation MSE passes 0.5 at step 225 of 400 and ends at
  0.46; compile 7.8 s, training 0.04 s. For scale: least squares on the same split scores
  0.44, predicting the training mean 0.97.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jaxtune import data as data_lib
from jaxtune.data.splits import take_subset
from jaxtune.models import Model, mlp
from jaxtune.tasks import Task, classification, regression
from jaxtune.workloads import common

__all__ = ["DIABETES_WIDTHS", "DIGITS_WIDTHS", "diabetes_mlp", "digits_mlp"]

DIGITS_WIDTHS = (256, 256)
DIABETES_WIDTHS = (64,)


@functools.lru_cache(maxsize=1)
def _digits() -> data_lib.Splits:
    return data_lib.load_digits()


@functools.lru_cache(maxsize=1)
def _diabetes() -> data_lib.Splits:
    return data_lib.load_diabetes()


def _mlp(
    splits: data_lib.Splits,
    structure: Mapping[str, Any],
    widths: tuple[int, ...],
    num_outputs: int,
) -> Model:
    return mlp(
        num_outputs=num_outputs,
        input_shape=data_lib.input_shape(splits),
        widths=common.widths(structure, widths),
        dtype=common.setting(structure, "task.dtype"),
    )


def digits_mlp(structure: Mapping[str, Any]) -> Task:
    """Flat 64-pixel digits, an MLP 64-256-256-10 (:data:`DIGITS_WIDTHS`), cross-entropy."""
    splits = take_subset(_digits(), common.setting(structure, "task.subset"))
    return classification(_mlp(splits, structure, DIGITS_WIDTHS, 10), splits)


def diabetes_mlp(structure: Mapping[str, Any]) -> Task:
    """Diabetes progression from 10 standardized features, an MLP 10-64-1
    (:data:`DIABETES_WIDTHS`), squared error in units of the training target's variance."""
    splits = take_subset(_diabetes(), common.setting(structure, "task.subset"))
    return regression(_mlp(splits, structure, DIABETES_WIDTHS, 1), splits)
