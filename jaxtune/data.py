"""Datasets, standardization and deterministic batching for jaxtune.

Everything here is local: the digits data ships with scikit-learn and the synthetic data is
generated with a seeded NumPy generator, so nothing is downloaded at run time.

Datasets are plain :class:`Dataset` named tuples of host (NumPy) arrays, which makes them
pytrees that can be passed to ``jax.jit`` or moved to a device with ``jax.device_put``.
Inputs are standardized with statistics of the training split only (see :class:`Standardizer`).

Batching is a pure function of ``(key, step)`` (see :func:`batch_indices`), so a training loop
can be jitted, vmapped over trials and resumed from any step without carrying sampler state.

Example:
    >>> import jax
    >>> ds = load_digits()
    >>> idx = batch_indices(jax.random.key(0), 0, 32, ds.x_train.shape[0])
    >>> ds.x_train[idx].shape
    (32, 64)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DATASET_NAMES: tuple[str, ...] = ("digits", "synthetic")
"""Names accepted by :func:`load_dataset`."""


# --------------------------------------------------------------------------------------------
# Standardization
# --------------------------------------------------------------------------------------------


@jax.jit
def _standardize(x: Any, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``(x - mean) / std``, compiled once per shape (cheap eager calls on host data)."""
    return (jnp.asarray(x) - mean) / std


@jax.jit
def _unstandardize(x: Any, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``x * std + mean``, the inverse of :func:`_standardize`."""
    return jnp.asarray(x) * std + mean


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature affine standardization ``(x - mean) / std``, a JAX pytree.

    Statistics are taken over axis 0, so for images of shape (N, H, W, C) they are per pixel and
    channel. Features whose training standard deviation is below ``min_std`` (constant
    features, such as the always-blank border pixels of digits) get a scale of 1, as
    scikit-learn's ``StandardScaler`` does: they map to 0 on the training split and keep their
    raw offset elsewhere, instead of being blown up by a tiny divisor.

    Attributes:
        mean: Per-feature mean, float32, shape ``x.shape[1:]``.
        std: Per-feature standard deviation (1 for constant features), float32.

    Example:
        >>> s = Standardizer.fit(np.array([[0.0, 1.0], [2.0, 1.0]]))
        >>> np.asarray(s.transform(np.array([[2.0, 1.0]]))).tolist()
        [[1.0, 0.0]]
    """

    mean: jax.Array
    std: jax.Array

    @classmethod
    def fit(cls, x_train: Any, *, min_std: float = 1e-6) -> Standardizer:
        """Fits per-feature statistics on training inputs.

        Args:
            x_train: Array of shape (N, ...) with N >= 1.
            min_std: Features with a smaller standard deviation count as constant (scale 1);
                must be positive.

        Returns:
            A Standardizer whose statistics were computed in float64 and stored as float32.

        Example:
            >>> Standardizer.fit(np.ones((4, 3))).std.shape
            (3,)
        """
        if not min_std > 0:
            raise ValueError(f"min_std must be positive, got {min_std!r}")
        x = np.asarray(x_train, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"x_train must have at least one example, got shape {x.shape}")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std < min_std, 1.0, std)
        return cls(
            mean=jnp.asarray(mean, dtype=jnp.float32), std=jnp.asarray(std, dtype=jnp.float32)
        )

    def transform(self, x: Any) -> jax.Array:
        """Standardizes ``x`` (jit-compatible).

        Args:
            x: Array of shape (..., *mean.shape).

        Returns:
            ``(x - mean) / std`` as a float32 (or wider, if ``x`` is wider) JAX array.
        """
        return _standardize(x, self.mean, self.std)

    def inverse_transform(self, x: Any) -> jax.Array:
        """Undoes :meth:`transform` (jit-compatible).

        Args:
            x: Standardized array of shape (..., *mean.shape).

        Returns:
            ``x * std + mean`` as a JAX array.
        """
        return _unstandardize(x, self.mean, self.std)


# --------------------------------------------------------------------------------------------
# Dataset container and checks
# --------------------------------------------------------------------------------------------


class Dataset(NamedTuple):
    """A train/test split: inputs ``x_*`` of shape (N, ...) and integer labels ``y_*`` (N,)."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


def num_classes(ds: Dataset) -> int:
    """Number of classes, taken as one more than the largest label in either split.

    Args:
        ds: A dataset with integer labels.

    Returns:
        ``max(y_train.max(), y_test.max()) + 1`` as a Python int.

    Example:
        >>> num_classes(load_digits())
        10
    """
    labels = [np.asarray(y) for y in (ds.y_train, ds.y_test) if np.size(y)]
    return int(max(int(y.max()) for y in labels)) + 1 if labels else 0


def input_shape(ds: Dataset) -> tuple[int, ...]:
    """Shape of one input example (without the batch dimension).

    Args:
        ds: A dataset.

    Returns:
        ``x_train.shape[1:]``, e.g. ``(64,)`` or ``(8, 8, 1)``.

    Example:
        >>> input_shape(load_digits(flat=False))
        (8, 8, 1)
    """
    return tuple(int(d) for d in np.shape(ds.x_train)[1:])


def validate_dataset(ds: Dataset, *, num_classes: int | None = None) -> None:
    """Checks a dataset for common defects and raises a descriptive ValueError.

    Checks, per split: inputs are finite, inputs and labels have the same length, labels are a
    1-D integer array within ``[0, num_classes)`` (or non-negative when ``num_classes`` is None);
    and train/test inputs have the same per-example shape.

    Args:
        ds: The dataset to check.
        num_classes: Optional number of classes bounding the labels.

    Returns:
        None. Raises ValueError on the first defect found.

    Example:
        >>> validate_dataset(load_digits(), num_classes=10)
    """
    for split in ("train", "test"):
        x = np.asarray(getattr(ds, f"x_{split}"))
        y = np.asarray(getattr(ds, f"y_{split}"))
        if x.ndim < 1:
            raise ValueError(f"x_{split} must have a leading example axis, got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"x_{split} must be numeric, got dtype {x.dtype}")
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise ValueError(
                f"x_{split} contains {bad} non-finite value(s) (NaN or inf) out of {x.size}"
            )
        if y.ndim != 1:
            raise ValueError(f"y_{split} must be 1-D, got shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"length mismatch in {split} split: x_{split} has {x.shape[0]} examples "
                f"but y_{split} has {y.shape[0]} labels"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y_{split} labels must be integers, got dtype {y.dtype}")
        if y.size:
            lo, hi = int(y.min()), int(y.max())
            upper = "num_classes" if num_classes is None else str(num_classes)
            if lo < 0 or (num_classes is not None and hi >= num_classes):
                raise ValueError(
                    f"y_{split} labels must lie in [0, {upper}), found range [{lo}, {hi}]"
                )
    train_shape, test_shape = np.shape(ds.x_train)[1:], np.shape(ds.x_test)[1:]
    if train_shape != test_shape:
        raise ValueError(
            f"feature shape mismatch: x_train examples have shape {train_shape} "
            f"but x_test examples have shape {test_shape}"
        )


def _standardize_split(
    x_train: np.ndarray, x_test: np.ndarray, *, min_std: float
) -> tuple[np.ndarray, np.ndarray, Standardizer]:
    """Fits a Standardizer on train and applies it to both splits (float32 NumPy outputs)."""
    standardizer = Standardizer.fit(x_train, min_std=min_std)
    return (
        np.asarray(standardizer.transform(x_train), dtype=np.float32),
        np.asarray(standardizer.transform(x_test), dtype=np.float32),
        standardizer,
    )


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def load_digits(
    *,
    flat: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
    min_std: float = 1e-6,
    return_standardizer: bool = False,
) -> Dataset | tuple[Dataset, Standardizer]:
    """Loads scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download).

    The split is stratified by class. Inputs are standardized with training statistics only
    (per feature, i.e. per pixel), inputs are float32 and labels int32.

    Args:
        flat: If True, inputs have shape (N, 64); otherwise NHWC images (N, 8, 8, 1).
        test_fraction: Fraction of examples held out for the test split, in (0, 1).
        seed: Seed of the train/test split.
        min_std: Floor on the per-feature standard deviation.
        return_standardizer: If True, also return the fitted Standardizer.

    Returns:
        The Dataset, or ``(dataset, standardizer)`` when ``return_standardizer`` is True.

    Example:
        >>> ds = load_digits(flat=False)
        >>> ds.x_train.shape, ds.x_train.dtype, ds.y_train.dtype
        ((1437, 8, 8, 1), dtype('float32'), dtype('int32'))
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    x, y = sklearn_load_digits(return_X_y=True)
    x = np.asarray(x, dtype=np.float64)
    if not flat:
        x = x.reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    x_train, x_test, standardizer = _standardize_split(x_train, x_test, min_std=min_std)
    ds = Dataset(x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32))
    validate_dataset(ds, num_classes=10)
    return (ds, standardizer) if return_standardizer else ds


def _synthetic_layout(
    num_features: int, *, flat: bool, image_shape: Sequence[int] | None
) -> tuple[int, ...]:
    """Per-example shape of synthetic inputs (see :func:`make_classification`)."""
    if image_shape is not None:
        shape = tuple(int(d) for d in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive ints, got {image_shape}")
        return shape
    if flat:
        return (num_features,)
    side = math.isqrt(num_features)
    if side * side != num_features:
        raise ValueError(
            f"flat=False without image_shape needs a square num_features, got {num_features}"
        )
    return (side, side, 1)


def make_classification(
    *,
    n_train: int = 512,
    n_test: int = 256,
    num_features: int = 16,
    num_classes: int = 4,
    seed: int = 0,
    flat: bool = True,
    image_shape: Sequence[int] | None = None,
    noise: float = 1.0,
    min_std: float = 1e-6,
    return_standardizer: bool = False,
) -> Dataset | tuple[Dataset, Standardizer]:
    """Deterministic synthetic Gaussian-cluster classification data (for tests and examples).

    Each class has a center drawn from N(0, 1) per feature; examples are the center of their
    class plus ``noise`` times N(0, 1) per feature, so classes are mostly separable for the
    default ``noise=1.0``. Labels are balanced (cycled then shuffled). Inputs are standardized
    with training statistics; inputs are float32 and labels int32.

    Args:
        n_train: Number of training examples (>= 1).
        n_test: Number of test examples (>= 1).
        num_features: Features per example; ignored when ``image_shape`` is given.
        num_classes: Number of classes (>= 2).
        seed: Seed of the NumPy generator; same seed, same data.
        flat: If False and ``image_shape`` is None, return square single-channel images
            (``num_features`` must then be a perfect square).
        image_shape: Optional (H, W, C); if given, inputs have shape (N, H, W, C) and
            H * W * C features (standardized per pixel-channel).
        noise: Standard deviation of the per-feature noise around each class center.
        min_std: Floor on the per-feature standard deviation.
        return_standardizer: If True, also return the fitted Standardizer.

    Returns:
        The Dataset, or ``(dataset, standardizer)`` when ``return_standardizer`` is True.

    Example:
        >>> ds = make_classification(n_train=8, n_test=4, image_shape=(4, 4, 2))
        >>> ds.x_train.shape, ds.y_test.shape
        ((8, 4, 4, 2), (4,))
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    shape = _synthetic_layout(num_features, flat=flat, image_shape=image_shape)
    dim = math.prod(shape)
    if dim < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    rng = np.random.default_rng(seed)
    total = n_train + n_test
    centers = rng.normal(size=(num_classes, dim))
    y = rng.permutation(np.arange(total) % num_classes).astype(np.int32)
    x = centers[y] + noise * rng.normal(size=(total, dim))
    x = x.reshape(total, *shape)
    x_train, x_test, standardizer = _standardize_split(x[:n_train], x[n_train:], min_std=min_std)
    ds = Dataset(x_train, y[:n_train], x_test, y[n_train:])
    validate_dataset(ds, num_classes=num_classes)
    return (ds, standardizer) if return_standardizer else ds


def load_dataset(
    name: str, *, flat: bool = True, seed: int = 0, **kwargs: Any
) -> Dataset | tuple[Dataset, Standardizer]:
    """Loads a dataset by name.

    Args:
        name: One of :data:`DATASET_NAMES`: ``"digits"`` (:func:`load_digits`) or
            ``"synthetic"`` (:func:`make_classification`).
        flat: Whether inputs are flat vectors (True) or NHWC images (False).
        seed: Seed forwarded to the loader.
        **kwargs: Further keyword arguments of the chosen loader.

    Returns:
        What the chosen loader returns.

    Example:
        >>> load_dataset("synthetic", n_train=16, n_test=8).x_train.shape
        (16, 16)
    """
    loaders = {"digits": load_digits, "synthetic": make_classification}
    if name not in loaders:
        allowed = ", ".join(repr(n) for n in DATASET_NAMES)
        raise ValueError(f"unknown dataset {name!r}; allowed names: {allowed}")
    return loaders[name](flat=flat, seed=seed, **kwargs)


def subset(dataset: Dataset, n: int, *, n_test: int | None = None, seed: int = 0) -> Dataset:
    """A small deterministic subset of a dataset, for debugging.

    Args:
        dataset: The dataset to cut down.
        n: Number of training examples, in [1, len(x_train)]; the first ``n`` of a seeded
            permutation of the training split.
        n_test: If given, keep only the first ``n_test`` test examples, in [1, len(x_test)].
        seed: Seed of the permutation.

    Returns:
        A Dataset with ``n`` training examples (and ``n_test`` test examples if given).

    Example:
        >>> subset(load_digits(), 100, n_test=50).x_train.shape
        (100, 64)
    """
    n_train = int(np.shape(dataset.x_train)[0])
    if not 1 <= n <= n_train:
        raise ValueError(f"n={n} is out of range; allowed range is [1, {n_train}]")
    idx = np.sort(np.random.default_rng(seed).permutation(n_train)[:n])
    x_test, y_test = dataset.x_test, dataset.y_test
    if n_test is not None:
        size_test = int(np.shape(x_test)[0])
        if not 1 <= n_test <= size_test:
            raise ValueError(f"n_test={n_test} is out of range; allowed range is [1, {size_test}]")
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    return Dataset(dataset.x_train[idx], dataset.y_train[idx], x_test, y_test)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


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
