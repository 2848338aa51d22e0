"""Byte-level language modelling of the Python standard library's own source.

Data: :func:`jaxtune.data.text.load_stdlib_text` (the first 32 KiB of each of 20 standard
library modules, 640 KiB; contiguous 4 KiB blocks, 18 of every 20 for training, one for
validation, one for test), windows of :data:`SEQ_LEN` bytes. Model:
:func:`jaxtune.models.decoder_lm` (vocabulary 256). The loss of an example is
its mean next-byte cross-entropy over positions, in nats; the metrics are next-byte
``accuracy`` and ``bits_per_byte`` (the loss divided by ``ln 2``).

``task.widths`` sets the model: one entry per block, every entry the width (e.g.
``[64, 64]``: 2 blocks of width 64). ``task.dtype`` sets the compute dtype and
``task.subset`` the number of training windows (see :mod:`jaxtune.workloads.common`).

Measured reference run (``run_sweep(get_workload("bytes_lm").config())``, one trial, Adam at
3e-3, batch 16, on 2 CPU cores shared with other work, jax 0.10.2; see docs/workloads.md):
the validation loss passes the target 2.0 nats at step 500 of the 800-step budget and ends at
1.78; compile 19.6 s, training 62.3 s. For scale: the uniform distribution scores
``log 256 = 5.55``, the training split's byte frequencies 3.07 and its add-one bigram model
2.37 nats on the validation split.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtune import data as data_lib
from jaxtune.data.splits import take_subset
from jaxtune.data.text import load_stdlib_text
from jaxtune.errors import ConfigError
from jaxtune.initializers import scale_kernels
from jaxtune.models import decoder_lm
from jaxtune.tasks import Task
from jaxtune.workloads import common

__all__ = ["NUM_HEADS", "SEQ_LEN", "WIDTHS", "bytes_lm", "make_bytes_lm", "next_byte_loss"]

SEQ_LEN = 64
WIDTHS = (64, 64)
NUM_HEADS = 4


@functools.lru_cache(maxsize=2)
def _text(seq_len: int) -> data_lib.Splits:
    return load_stdlib_text(seq_len=seq_len)


def next_byte_loss(logits: jax.Array, targets: jax.Array, hp: Mapping[str, Any]) -> jax.Array:
    """Mean next-byte cross-entropy over positions, per example (nats): ``[B, T, V] -> [B]``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets), axis=-1)


def _metrics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    loss = next_byte_loss(logits, targets, {})
    return {"accuracy": jnp.mean(correct, axis=-1), "bits_per_byte": loss / math.log(2.0)}


def make_bytes_lm(
    *,
    seq_len: int = SEQ_LEN,
    widths: tuple[int, ...] = WIDTHS,
    num_heads: int = NUM_HEADS,
    dtype: str = "float32",
    subset: int = 0,
) -> Task:
    """The byte-level language-model task of a given shape.

    Args:
      seq_len: bytes per example.
      widths: one entry per block, all equal: the model width.
      num_heads: attention heads per block.
      dtype: compute dtype, one of :data:`jaxtune.models.DTYPES` (parameters and logits
        stay float32; see :mod:`jaxtune.models.transformer`).
      subset: training windows kept (0: all).

    Raises:
      ConfigError: widths that differ (``task.widths``) or a subset larger than the training
        set (``task.subset``).
      ValueError: an invalid model argument (e.g. heads that do not divide the width, an
        unknown dtype), naming it and its allowed values.
    """
    if not widths or len(set(widths)) != 1:
        raise ConfigError(
            f"task.widths = {list(widths)} is invalid for the language model: expected one "
            "entry per block, all equal to the model width (e.g. [64, 64])"
        )
    splits = take_subset(_text(seq_len), subset)
    model = decoder_lm(
        seq_len=seq_len, width=widths[0], depth=len(widths), num_heads=num_heads, dtype=dtype
    )

    def init(key: jax.Array, hp: Mapping[str, Any]) -> tuple[Any, Any]:
        params, state = model.init(key)
        scale = hp.get("task.init_scale")
        return (params if scale is None else scale_kernels(params, scale)), state

    return Task(init, model.apply, next_byte_loss, _metrics, splits)


def bytes_lm(structure: Mapping[str, Any]) -> Task:
    """The workload factory: :func:`make_bytes_lm` with ``task.widths``, ``task.dtype`` and
    ``task.subset`` from ``structure`` (defaults :data:`WIDTHS`, float32, all data)."""
    return make_bytes_lm(
        widths=common.widths(structure, WIDTHS),
        dtype=common.setting(structure, "task.dtype"),
        subset=common.setting(structure, "task.subset"),
    )
