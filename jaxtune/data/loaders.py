"""Bundled datasets: nothing is downloaded at run time.

scikit-learn ships the digits and diabetes data; the synthetic data comes from a seeded NumPy
generator. Every loader returns a :class:`jaxtune.data.Splits` with train / valid / test splits
whose inputs are standardized with statistics of the **training** split only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxtune.data.splits import Splits, check_classification
from jaxtune.data.standardize import Standardizer

__all__ = ["load_diabetes", "load_digits", "make_classification"]


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for name, v in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name} = {v!r} is invalid: expected a number in (0, 1)")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"valid_fraction + test_fraction = {valid_fraction + test_fraction:g} leaves no "
            "training data: expected a sum below 1"
        )


def _three_way(
    x: np.ndarray,
    y: np.ndarray,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    stratify: bool,
) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y if stratify else None, random_state=seed
    )
    x_train, x_valid, y_train, y_valid = train_test_split(
        x_rest,
        y_rest,
        test_size=valid_fraction / (1.0 - test_fraction),
        stratify=y_rest if stratify else None,
        random_state=seed,
    )
    return x_train, y_train, x_valid, y_valid, x_test, y_test


def _standardized(
    x_train: np.ndarray, *others: np.ndarray, min_std: float
) -> tuple[Standardizer, list[np.ndarray]]:
    s = Standardizer.fit(x_train, min_std=min_std)
    return s, [np.asarray(s.transform(x), np.float32) for x in (x_train, *others)]


def load_digits(
    *,
    flat: bool = True,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    min_std: float = 1e-6,
    return_standardizer: bool = False,
) -> Splits | tuple[Splits, Standardizer]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download).

    The test split is ``test_fraction`` of all examples, stratified by class; the validation
    split is ``valid_fraction`` of all examples, carved (stratified) out of the rest. Inputs are
    float32, standardized per pixel with training statistics; labels are int32.

    Args:
        flat: inputs of shape (N, 64) if True, else NHWC images (N, 8, 8, 1).
        valid_fraction: fraction of all examples in the validation split.
        test_fraction: fraction of all examples in the test split.
        seed: seed of the splits.
        min_std: features with a smaller training std keep scale 1.
        return_standardizer: also return the fitted :class:`Standardizer`.

    Example:
        >>> s = load_digits(flat=False)
        >>> s.train[0].shape, s.valid[0].shape, s.test[0].shape, s.train[1].dtype
        ((1257, 8, 8, 1), (180, 8, 8, 1), (360, 8, 8, 1), dtype('int32'))
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    _check_fractions(valid_fraction, test_fraction)
    x, y = sklearn_load_digits(return_X_y=True)
    x = np.asarray(x, dtype=np.float64)
    if not flat:
        x = x.reshape(-1, 8, 8, 1)
    xtr, ytr, xva, yva, xte, yte = _three_way(
        x, y, valid_fraction, test_fraction, seed, stratify=True
    )
    s, (xtr, xva, xte) = _standardized(xtr, xva, xte, min_std=min_std)
    i32 = np.int32
    splits = Splits((xtr, ytr.astype(i32)), (xva, yva.astype(i32)), (xte, yte.astype(i32)))
    check_classification(splits, num_classes=10)
    return (splits, s) if return_standardizer else splits


def load_diabetes(
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    min_std: float = 1e-6,
    return_standardizer: bool = False,
) -> Splits | tuple[Splits, tuple[Standardizer, Standardizer]]:
    """scikit-learn's bundled diabetes regression data (442 patients, 10 features; no download).

    Inputs and the target (disease progression after one year) are both standardized with
    training statistics, so losses are in units of the training target's variance (a model
    that predicts the training mean scores an MSE near 1). Targets are float32 of shape [N].

    Args:
        valid_fraction: fraction of all examples in the validation split.
        test_fraction: fraction of all examples in the test split.
        seed: seed of the splits.
        min_std: see :class:`Standardizer`.
        return_standardizer: also return ``(input_standardizer, target_standardizer)``;
            ``target_standardizer.inverse_transform`` maps predictions back to raw units.

    Example:
        >>> s = load_diabetes()
        >>> s.train[0].shape, s.valid[1].shape, s.test[1].dtype
        ((308, 10), (45,), dtype('float32'))
    """
    from sklearn.datasets import load_diabetes as sklearn_load_diabetes

    _check_fractions(valid_fraction, test_fraction)
    x, y = sklearn_load_diabetes(return_X_y=True, scaled=False)
    xtr, ytr, xva, yva, xte, yte = _three_way(
        np.asarray(x, np.float64),
        np.asarray(y, np.float64),
        valid_fraction,
        test_fraction,
        seed,
        stratify=False,
    )
    sx, (xtr, xva, xte) = _standardized(xtr, xva, xte, min_std=min_std)
    sy, (ytr, yva, yte) = _standardized(ytr, yva, yte, min_std=min_std)
    splits = Splits((xtr, ytr), (xva, yva), (xte, yte))
    return (splits, (sx, sy)) if return_standardizer else splits


def _synthetic_layout(
    num_features: int, *, flat: bool, image_shape: Sequence[int] | None
) -> tuple[int, ...]:
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
    n_valid: int = 128,
    n_test: int = 256,
    num_features: int = 16,
    num_classes: int = 4,
    seed: int = 0,
    flat: bool = True,
    image_shape: Sequence[int] | None = None,
    noise: float = 1.0,
    min_std: float = 1e-6,
    return_standardizer: bool = False,
) -> Splits | tuple[Splits, Standardizer]:
    """Deterministic synthetic Gaussian-cluster classification data (for tests and examples).

    Each class has a center drawn from N(0, 1) per feature; an example is its class center plus
    ``noise`` times N(0, 1) per feature. Labels are balanced (cycled, then shuffled). The first
    ``n_train`` examples are the training split, then ``n_test`` test and ``n_valid`` validation
    examples. Inputs are standardized with training statistics.

    Args:
        n_train: training examples (>= 1).
        n_valid: validation examples (>= 1).
        n_test: test examples (>= 1).
        num_features: features per example; ignored when ``image_shape`` is given.
        num_classes: number of classes (>= 2).
        seed: seed of the NumPy generator; same seed, same data.
        flat: if False and ``image_shape`` is None, square single-channel images.
        image_shape: optional (H, W, C) for image inputs.
        noise: standard deviation of the noise around each class center.
        min_std: see :class:`Standardizer`.
        return_standardizer: also return the fitted :class:`Standardizer`.

    Example:
        >>> s = make_classification(n_train=8, n_valid=4, n_test=4, image_shape=(4, 4, 2))
        >>> s.train[0].shape, s.valid[1].shape
        ((8, 4, 4, 2), (4,))
    """
    if min(n_train, n_valid, n_test) < 1:
        raise ValueError(
            f"n_train, n_valid and n_test must be >= 1, got {n_train}, {n_valid}, {n_test}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    shape = _synthetic_layout(num_features, flat=flat, image_shape=image_shape)
    dim = math.prod(shape)
    rng = np.random.default_rng(seed)
    total = n_train + n_test + n_valid
    centers = rng.normal(size=(num_classes, dim))
    y = rng.permutation(np.arange(total) % num_classes).astype(np.int32)
    x = (centers[y] + noise * rng.normal(size=(total, dim))).reshape(total, *shape)
    a, b = n_train, n_train + n_test
    s, (xtr, xte, xva) = _standardized(x[:a], x[a:b], x[b:], min_std=min_std)
    splits = Splits((xtr, y[:a]), (xva, y[b:]), (xte, y[a:b]))
    check_classification(splits, num_classes=num_classes)
    return (splits, s) if return_standardizer else splits
