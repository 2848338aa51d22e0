"""The options of the built-in MLP and CNN: the names each allows and one spec per option.

:func:`check_options` checks a builder's arguments once, when the model is built; the linen
modules then look their options up with :func:`pick`, which fails with the same message for a
name that was never checked (a module used directly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.models.layers import ACTIVATIONS, NORMALIZATIONS
from jaxtune.models.model import INPUT_SHAPE, NUM_OUTPUTS
from jaxtune.spec import KeySpec, check_arg

__all__ = [
    "DTYPES",
    "HEADS",
    "HEAD_FNS",
    "IMAGE_SHAPE",
    "OPTIONS",
    "POOLINGS",
    "POOLS",
    "check_options",
    "image_shape",
    "pick",
]

POOLS: Mapping[str, Callable[..., jax.Array]] = MappingProxyType(
    {"max": nn.max_pool, "avg": nn.avg_pool}
)
"""The CNN's 2x2 pooling functions by name."""
HEAD_FNS: Mapping[str, Callable[[jax.Array], jax.Array]] = MappingProxyType(
    {
        "flatten": lambda x: jnp.reshape(x, (x.shape[0], -1)),
        "avg": lambda x: jnp.mean(x, axis=(1, 2)),
    }
)
"""What the CNN does to its last feature map before the linear output layer, by name."""
POOLINGS: tuple[str, ...] = tuple(POOLS)
HEADS: tuple[str, ...] = tuple(HEAD_FNS)
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
"""Compute dtypes of the built-in models (their parameters are float32 whatever the dtype)."""

#: Each option of :func:`jaxtune.models.mlp` and :func:`jaxtune.models.cnn` and what it allows.
OPTIONS: Mapping[str, KeySpec] = MappingProxyType(
    {
        "num_outputs": NUM_OUTPUTS,
        "input_shape": INPUT_SHAPE,
        "widths": KeySpec("sizes"),
        "channels": KeySpec("sizes"),
        "activation": KeySpec("choice", choices=tuple(ACTIVATIONS)),
        "normalization": KeySpec("choice", choices=NORMALIZATIONS),
        "init": KeySpec("init"),
        "init_scale": KeySpec("float", low=0.0, low_open=True),
        "dropout": KeySpec("float", low=0.0, high=1.0, high_open=True),
        "pooling": KeySpec("choice", choices=POOLINGS),
        "head": KeySpec("choice", choices=HEADS),
        "dtype": KeySpec("dtype", choices=DTYPES),
    }
)


def check_options(**values: Any) -> dict[str, Any]:
    """Each value checked against its :data:`OPTIONS` spec, normalised (e.g. dtype names).

    Raises:
      ValueError: naming the first bad option and its allowed values.

    Example:
      >>> check_options(widths=[8, 4], dtype=jnp.bfloat16)
      {'widths': (8, 4), 'dtype': 'bfloat16'}
    """
    return {name: check_arg(name, value, OPTIONS[name]) for name, value in values.items()}


def pick(table: Mapping[str, Any], option: str, name: str) -> Any:
    """``table[name]``; for a name it lacks, the error of :func:`check_options`."""
    if name not in table:
        check_arg(option, name, OPTIONS[option])
    return table[name]


def _square_image(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (*shape, 1)  # type: ignore[return-value]
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return (side, side, 1)
    return None


def _image_input(value: Any) -> tuple[int, ...]:
    shape = INPUT_SHAPE.parse(value)
    if _square_image(shape) is None:
        raise ValueError("")
    return shape


#: The per-example input shapes a CNN reads as images.
IMAGE_SHAPE = KeySpec(
    "custom", text="(h, w, c), (h, w) or (d,) with d a perfect square", parser=_image_input
)


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The ``(height, width, channels)`` a CNN sees for a per-example ``input_shape``.

    ``(h, w, c)`` is kept, ``(h, w)`` gets one channel, and a flat ``(d,)`` with ``d`` a
    perfect square becomes a ``(sqrt(d), sqrt(d), 1)`` single-channel image.

    Raises:
      ValueError: for any other shape, naming the allowed ones.

    Example:
      >>> image_shape((64,))
      (8, 8, 1)
    """
    shape = _square_image(tuple(input_shape))
    if shape is None:
        check_arg("input_shape", tuple(input_shape), IMAGE_SHAPE)
    return shape  # type: ignore[return-value]
