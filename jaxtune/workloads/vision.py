"""Image workloads: a CNN on the bundled 8x8 digits and a CNN on synthetic 32x32 colour images.

Both use :func:`jaxtune.cnn` (3x3 convolutions, channels growing, 2x2 max pooling, a flatten
and a linear head) with softmax cross-entropy (:func:`jaxtune.tasks.classification`).
``task.widths`` sets the channels, ``task.dtype`` the compute dtype and ``task.subset`` the
number of training examples (see :mod:`jaxtune.workloads.common`).

Measured reference runs (``run_sweep(workload.config())``, one trial, Adam, on 2 CPU cores
shared with other work, jax 0.10.2; see docs/workloads.md):

* ``digits_cnn`` (lr 1e-2, batch 64): validation accuracy reaches the target 0.945 (at most 9
  of the 180 examples wrong) at step 120 of 250 and ends at 0.956; compile 12.5 s, training
  3.7 s.
* ``images32_cnn`` (lr 3e-3, batch 32): validation accuracy passes 0.9 at step 90 of 150 and
  ends at 0.98; compile 24.4 s, training 33.7 s (convolution gradients run slowly inside
  XLA:CPU loops). For scale: on the same split the nearest class mean of the pixels scores
  0.74 and a ridge classifier 0.56.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jaxtune import data as data_lib
from jaxtune.data.splits import take_subset
from jaxtune.models import cnn
from jaxtune.tasks import Task, classification
from jaxtune.workloads import common
from jaxtune.workloads.images import make_images

__all__ = ["DIGITS_CHANNELS", "IMAGES32_CHANNELS", "digits_cnn", "images32_cnn"]

DIGITS_CHANNELS = (16, 32)
IMAGES32_CHANNELS = (8, 16, 32)


@functools.lru_cache(maxsize=1)
def _digits() -> data_lib.Splits:
    return data_lib.load_digits(flat=False)


@functools.lru_cache(maxsize=1)
def _images32() -> data_lib.Splits:
    return make_images(seed=0)


def _cnn_task(
    splits: data_lib.Splits, structure: Mapping[str, Any], channels: tuple[int, ...]
) -> Task:
    splits = take_subset(splits, common.setting(structure, "task.subset"))
    model = cnn(
        num_outputs=data_lib.num_classes(splits),
        input_shape=data_lib.input_shape(splits),
        channels=common.widths(structure, channels),
        dtype=common.setting(structure, "task.dtype"),
    )
    return classification(model, splits)


def digits_cnn(structure: Mapping[str, Any]) -> Task:
    """scikit-learn's 8x8 digits as images ``[8, 8, 1]``, a CNN of :data:`DIGITS_CHANNELS`."""
    return _cnn_task(_digits(), structure, DIGITS_CHANNELS)


def images32_cnn(structure: Mapping[str, Any]) -> Task:
    """Synthetic 32x32x3 images of 10 classes (:func:`jaxtune.workloads.images.make_images`,
    seed 0), a CNN of :data:`IMAGES32_CHANNELS`."""
    return _cnn_task(_images32(), structure, IMAGES32_CHANNELS)
