"""Deterministic batching: the batch of any step is a pure function of ``(key, step)``.

So a training loop can be jitted, vmapped over trials and resumed from any step without
carrying sampler state.

Example:
    >>> import jax
    >>> idx = batch_indices(jax.random.key(0), 0, 32, 1000)
    >>> idx.shape
    (32,)
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "batch_from_permutations",
    "batch_indices",
    "epoch_permutations",
    "padded_batch_indices",
]


def _concrete_int(value: Any, name: str, lo: int, hi: int) -> int:
    """Returns ``value`` as a Python int in [lo, hi], or raises ValueError naming it."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    try:
        result = operator.index(value)
    except TypeError as err:
        raise ValueError(
            f"{name} must be a concrete (non-traced) int in [{lo}, {hi}], got {value!r}"
        ) from err
    if not lo <= result <= hi:
        raise ValueError(f"{name}={result} is out of range; allowed range is [{lo}, {hi}]")
    return result


@functools.partial(jax.jit, static_argnames=("n",))
def _epoch_permutation(
    key: jax.Array, step: jax.Array, batch_size: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
    """Returns ``(perm, start)``: the int32 permutation of the epoch containing ``step`` and
    the offset ``(step % steps_per_epoch) * batch_size`` of the step's batch in it.

    Jitted with only ``n`` static, so eager calls with different batch sizes share one compiled
    permutation; under an outer jit or vmap it is simply inlined.
    """
    steps_per_epoch = n // batch_size
    epoch = step // steps_per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return perm.astype(jnp.int32), (step % steps_per_epoch) * batch_size


@functools.partial(jax.jit, static_argnames=("size",))
def _contiguous(perm: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """``perm[start : start + size]`` for a traced ``start``."""
    return jax.lax.dynamic_slice(perm, (start,), (size,))


@functools.partial(jax.jit, static_argnames=("size",))
def _padded_window(
    perm: jax.Array, start: jax.Array, length: jax.Array, size: int
) -> tuple[jax.Array, jax.Array]:
    """``size`` entries of ``perm`` from ``start`` (wrapping), and a mask of the first
    ``length``."""
    positions = jnp.arange(size, dtype=jnp.int32)
    indices = jnp.take(perm, (start + positions) % perm.shape[0])
    return indices, positions < length


def batch_indices(key: jax.Array, step: Any, batch_size: int, n: int) -> jax.Array:
    """Indices of the examples in batch ``step``: epoch-wise shuffling without replacement.

    With ``steps_per_epoch = n // batch_size`` and ``epoch = step // steps_per_epoch``, the
    batch is the ``step % steps_per_epoch``-th contiguous slice of
    ``jax.random.permutation(jax.random.fold_in(key, epoch), n)``. The remainder
    ``n % batch_size`` of each epoch's permutation is dropped, so batches of one epoch are
    disjoint and cover all examples when ``batch_size`` divides ``n``. Pure and deterministic;
    ``key`` and ``step`` may be traced (jit/vmap), ``batch_size`` and ``n`` must be concrete.

    Args:
        key: A PRNG key (typed or raw uint32).
        step: Non-negative global step (Python int or traced int scalar).
        batch_size: Concrete int in [1, n].
        n: Concrete number of examples (>= 1).

    Returns:
        int32 array of shape (batch_size,) with values in [0, n).

    Example:
        >>> idx = batch_indices(jax.random.key(0), 3, batch_size=4, n=10)
        >>> idx.shape, idx.dtype
        ((4,), dtype('int32'))
    """
    n = _concrete_int(n, "n", 1, np.iinfo(np.int32).max)
    batch_size = _concrete_int(batch_size, "batch_size", 1, n)
    if isinstance(step, int | np.integer) and step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    step = jnp.asarray(step, dtype=jnp.int32)
    perm, start = _epoch_permutation(key, step, jnp.int32(batch_size), n=n)
    return _contiguous(perm, start, size=batch_size)


def padded_batch_indices(
    key: jax.Array, step: Any, batch_size: Any, n: int, max_batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """:func:`batch_indices` for a possibly traced ``batch_size``, padded to a static length.

    Useful when vmapping over trials with different batch sizes: ``indices[:batch_size]`` equals
    ``batch_indices(key, step, batch_size, n)`` exactly and ``mask`` marks those positions.
    Padding positions (``mask`` False) hold valid indices in [0, n) so gathers stay in range;
    weight per-example losses by ``mask`` and divide by ``batch_size``. A concrete
    ``batch_size`` must lie in [1, max_batch_size]; a traced one is clipped to that range.

    Args:
        key: A PRNG key (typed or raw uint32).
        step: Non-negative global step (Python int or traced int scalar).
        batch_size: Batch size (Python int or traced int scalar) in [1, max_batch_size].
        n: Concrete number of examples (>= 1).
        max_batch_size: Concrete int in [1, n]; the static length of the outputs.

    Returns:
        ``(indices, mask)``: int32 and bool arrays of shape (max_batch_size,).

    Example:
        >>> idx, mask = padded_batch_indices(jax.random.key(0), 0, 3, n=10, max_batch_size=5)
        >>> np.asarray(mask).tolist()
        [True, True, True, False, False]
    """
    n = _concrete_int(n, "n", 1, np.iinfo(np.int32).max)
    max_batch_size = _concrete_int(max_batch_size, "max_batch_size", 1, n)
    try:
        concrete = operator.index(batch_size)
    except TypeError:
        concrete = None
    if concrete is not None:
        _concrete_int(concrete, "batch_size", 1, max_batch_size)
    if isinstance(step, int | np.integer) and step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    step = jnp.asarray(step, dtype=jnp.int32)
    batch_size = jnp.clip(jnp.asarray(batch_size, dtype=jnp.int32), 1, max_batch_size)
    perm, start = _epoch_permutation(key, step, batch_size, n=n)
    return _padded_window(perm, start, batch_size, size=max_batch_size)


def epoch_permutations(key: jax.Array, first_epoch: Any, num_epochs: int, n: int) -> jax.Array:
    """The shuffles of epochs ``first_epoch .. first_epoch + num_epochs - 1``.

    Row ``e`` is the permutation :func:`batch_indices` uses for epoch ``first_epoch + e``.
    Computing the few epochs a chunk of steps touches once, instead of one permutation per
    step, is what keeps a vectorized sweep of a small model from being bound by sorting.

    Args:
        key: A PRNG key (typed or raw uint32).
        first_epoch: The first epoch (int, may be traced).
        num_epochs: Concrete number of epochs.
        n: Concrete number of examples.

    Returns:
        int32 array of shape ``(num_epochs, n)``.
    """
    epochs = jnp.asarray(first_epoch, jnp.int32) + jnp.arange(num_epochs, dtype=jnp.int32)
    return jax.vmap(
        lambda e: jax.random.permutation(jax.random.fold_in(key, e), n).astype(jnp.int32)
    )(epochs)


def batch_from_permutations(
    perms: jax.Array, first_epoch: Any, step: Any, batch_size: Any, size: int
) -> jax.Array:
    """The first ``size`` positions of the batch at ``step``, read from :func:`epoch_permutations`.

    Equals ``batch_indices(key, step, batch_size, n)`` (and, for ``size > batch_size``, the
    indices of :func:`padded_batch_indices`) as long as ``step`` falls in one of the epochs of
    ``perms``. ``batch_size`` may be traced.
    """
    n = perms.shape[-1]
    steps_per_epoch = n // batch_size
    row = jnp.take(perms, step // steps_per_epoch - first_epoch, axis=0)
    start = (step % steps_per_epoch) * batch_size
    return jnp.take(row, (start + jnp.arange(size, dtype=jnp.int32)) % n)
