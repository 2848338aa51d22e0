"""Synthetic 32x32 colour images with learnable structure, deterministic from a seed.

Each class has a template: a smooth random colour pattern (white noise blurred with a periodic
Gaussian filter of width ``smoothness`` pixels, scaled to unit variance per channel). An
example is its class's template translated by a random cyclic shift of up to ``shift`` pixels
on each axis, plus independent N(0, ``noise``^2) pixel noise, divided by
``sqrt(1 + noise^2)`` so every pixel has unit variance. Labels are balanced (cycled, then
shuffled). Nothing is downloaded; the same arguments give the same arrays.

Telling the classes apart takes features that survive the translations: with the defaults a
small CNN with pooling reaches 0.98 validation accuracy, while the nearest class mean of the
pixels scores 0.74 and a ridge classifier 0.56 (see :mod:`jaxtune.workloads.vision`).

Example:
    >>> s = make_images(n_train=20, n_valid=10, n_test=10, seed=1)
    >>> s.train[0].shape, s.train[0].dtype, s.valid[1].dtype
    ((20, 32, 32, 3), dtype('float32'), dtype('int32'))
"""

from __future__ import annotations

import numpy as np

from jaxtune.data import Splits, check_classification

__all__ = ["class_templates", "make_images"]


def class_templates(
    num_classes: int, *, size: int = 32, channels: int = 3, smoothness: float = 3.0, seed: int = 0
) -> np.ndarray:
    """``[num_classes, size, size, channels]`` smooth periodic patterns, unit variance per channel.

    Args:
      num_classes: number of templates.
      size: height and width in pixels.
      channels: colour channels.
      smoothness: standard deviation of the Gaussian blur, in pixels.
      seed: seed of the NumPy generator.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(num_classes, size, size, channels))
    smooth = gaussian_filter(noise, sigma=(0, smoothness, smoothness, 0), mode="wrap")
    smooth -= smooth.mean(axis=(1, 2), keepdims=True)
    return smooth / smooth.std(axis=(1, 2), keepdims=True)


def _translate(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Cyclic shift of image ``i`` by ``(dy[i], dx[i])`` pixels (``np.roll`` per example)."""
    n, h, w = images.shape[:3]
    rows = (np.arange(h)[None, :] - dy[:, None]) % h
    cols = (np.arange(w)[None, :] - dx[:, None]) % w
    return images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_images(
    *,
    n_train: int = 4000,
    n_valid: int = 1000,
    n_test: int = 1000,
    num_classes: int = 10,
    shift: int = 8,
    noise: float = 1.5,
    smoothness: float = 3.0,
    seed: int = 0,
) -> Splits:
    """Synthetic 32x32x3 classification splits (see the module docstring).

    Args:
      n_train: training examples.
      n_valid: validation examples.
      n_test: test examples.
      num_classes: number of classes (>= 2).
      shift: largest translation, in pixels, on each axis (>= 0).
      noise: standard deviation of the pixel noise relative to the template's (>= 0).
      smoothness: see :func:`class_templates`.
      seed: seed of the templates and the examples.

    Returns:
      :class:`jaxtune.data.Splits` with float32 NHWC inputs and int32 labels.
    """
    if min(n_train, n_valid, n_test) < 1:
        raise ValueError(
            f"n_train, n_valid and n_test must be >= 1, got {n_train}, {n_valid}, {n_test}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes = {num_classes} is invalid: expected an int >= 2")
    if shift < 0 or noise < 0:
        raise ValueError(f"shift = {shift}, noise = {noise} are invalid: expected values >= 0")
    templates = class_templates(num_classes, smoothness=smoothness, seed=seed).astype(np.float32)
    rng = np.random.default_rng([seed, 1])
    total = n_train + n_valid + n_test
    y = rng.permutation(np.arange(total) % num_classes).astype(np.int32)
    dy, dx = rng.integers(-shift, shift + 1, size=(2, total))
    pixels = rng.standard_normal(size=(total, *templates.shape[1:]), dtype=np.float32)
    x = _translate(templates[y], dy, dx) + noise * pixels
    x = (x / np.sqrt(1.0 + noise**2)).astype(np.float32)
    a, b = n_train, n_train + n_valid
    splits = Splits((x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:]))
    check_classification(splits, num_classes=num_classes)
    return splits
