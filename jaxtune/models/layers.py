"""The layers the built-in models share: activations, normalizations, per-example dropout.

Padding invariance: BatchNorm takes its statistics over the rows a ``(batch,)`` mask marks,
and dropout draws the mask of row ``i`` from ``fold_in(key, i)``, so the real rows of a padded
batch see what an unpadded batch of those rows sees. Layer and group normalization are
per-example and padding-invariant already.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.spec import KeySpec, check_arg

__all__ = [
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "PerExampleDropout",
    "broadcast_mask",
    "group_count",
    "normalize",
    "per_example_dropout",
]

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = MappingProxyType(
    {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}
)
"""Activation functions by name."""
NORMALIZATIONS: tuple[str, ...] = ("none", "batch", "layer", "group")


def group_count(width: int, *, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Number of GroupNorm groups for a layer of ``width`` features.

    The largest divisor of ``width`` that is at most ``min(max_groups, width // min_group_size)``
    (and at least 1): groups divide the features evenly and hold at least ``min_group_size``
    features where the width allows. A group of one feature would normalize every activation
    of a dense layer to zero, so narrow layers get fewer, larger groups
    (e.g. 256 -> 32, 48 -> 12, 32 -> 8, 8 -> 2, 7 -> 1).

    Args:
      width: Number of features (channels).
      max_groups: Upper bound on the number of groups.
      min_group_size: Smallest number of features per group, where possible.

    Returns:
      The group count.

    Example:
      >>> group_count(48)
      12
    """
    upper = max(1, min(max_groups, width // min_group_size))
    return next(g for g in range(upper, 0, -1) if width % g == 0)


def per_example_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout whose mask for row ``i`` depends only on ``(key, i)``.

    Example ``i`` uses ``jax.random.fold_in(key, i)``, so padding a batch with extra rows
    never changes the masks of the existing rows. The result keeps the dtype of ``x``.

    Args:
      key: PRNG key.
      x: Array with a leading batch axis.
      rate: Drop probability in ``[0, 1)``.

    Returns:
      ``x`` with dropped entries zeroed and kept entries scaled by ``1 / (1 - rate)``.

    Example:
      >>> y = per_example_dropout(jax.random.key(0), jnp.ones((4, 3)), 0.5)
      >>> y.shape
      (4, 3)
    """
    if rate == 0.0:
        return x
    keep_prob = 1.0 - rate
    row_size = math.prod(x.shape[1:])

    def row_mask(i: jax.Array) -> jax.Array:
        # Drawn flat and reshaped: same per-row semantics, and XLA compiles 1-D draws faster.
        return jax.random.bernoulli(jax.random.fold_in(key, i), keep_prob, (row_size,))

    keep = jax.vmap(row_mask)(jnp.arange(x.shape[0])).reshape(x.shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class PerExampleDropout(nn.Module):
    """Dropout with per-example masks (see :func:`per_example_dropout`).

    Attributes:
      rate: Drop probability in ``[0, 1)``.
      rng_collection: Name of the rng stream to draw from.
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        """Applies dropout unless ``deterministic`` or ``rate == 0``."""
        if deterministic or self.rate == 0.0:
            return x
        if not self.has_rng(self.rng_collection):
            raise ValueError(
                f"dropout needs a {self.rng_collection!r} key: pass key= to apply when train=True"
            )
        return per_example_dropout(self.make_rng(self.rng_collection), x, self.rate)


def broadcast_mask(mask: jax.Array | None, x: jax.Array) -> jax.Array | None:
    """Broadcasts a ``(batch,)`` mask to ``x.shape`` (``None`` stays ``None``)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask, dtype=bool)
    if mask.shape != (x.shape[0],):
        raise ValueError(f"mask must have shape (batch,) = {(x.shape[0],)}, got {mask.shape}")
    return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def normalize(
    x: jax.Array,
    kind: str,
    *,
    train: bool,
    mask: jax.Array | None,
    momentum: float,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Applies the named normalization; must be called inside a compact linen method.

    Statistics (batch, layer and group) are reduced in float32 and the running statistics
    and scales are float32 whatever ``dtype`` is; the normalized output is ``dtype``.

    Raises:
      ValueError: for a ``kind`` outside :data:`NORMALIZATIONS`.
    """
    if kind == "none":
        return x
    if kind == "batch":
        norm = nn.BatchNorm(use_running_average=not train, momentum=momentum, dtype=dtype)
        return norm(x, mask=broadcast_mask(mask, x))
    if kind == "layer":
        axes = tuple(range(1, x.ndim))
        return nn.LayerNorm(reduction_axes=axes, feature_axes=-1, dtype=dtype)(x)
    if kind != "group":  # an unknown kind: the check raises, naming the allowed ones
        check_arg("normalization", kind, KeySpec("choice", choices=NORMALIZATIONS))
    return nn.GroupNorm(num_groups=group_count(x.shape[-1]), dtype=dtype)(x)
