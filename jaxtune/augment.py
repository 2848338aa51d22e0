"""On-device data augmentation whose strengths are traced hyperparameters.

:func:`image_augment` is a :class:`jaxtune.Task` ``augment`` function: the engine calls it on
every training batch inside the compiled step, with the trial's own key (``fold_in(augment_key,
step)``, see :mod:`jaxtune.engine.step`), so augmentation strength is swept in one program like a
learning rate. Three transformations, each off when its strength is 0:

* ``hp["augment.shift"]``: shift each image by a random whole number of pixels in
  ``[-shift, shift]`` along height and width, filling with zeros (random translation with
  padding);
* ``hp["augment.noise"]``: add Gaussian noise of that standard deviation;
* ``hp["augment.cutout"]``: zero a random square of that side (in pixels) in each image.

Inputs are images ``[B, H, W, C]`` or ``[B, H, W]``, or flat ``[B, D]`` with ``D`` a perfect square
(read as ``sqrt(D) x sqrt(D)`` one-channel images, as the CNN builder reads them). Every example
draws its own shift, noise and cutout from ``fold_in(key, example_index)``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((2, 4, 4, 1))
    >>> hp = {"augment.shift": 0.0, "augment.noise": 0.0, "augment.cutout": 2.0}
    >>> out = image_augment(jax.random.PRNGKey(0), x, hp)
    >>> [int((out[i] == 0).sum()) for i in range(2)]   # a 2x2 square zeroed in each
    [4, 4]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["AUGMENT_KEYS", "image_augment"]

#: The hyperparameters :func:`image_augment` reads (absent ones count as 0).
AUGMENT_KEYS = ("augment.shift", "augment.noise", "augment.cutout")


def _as_images(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    shape = x.shape
    if x.ndim == 4:
        return x, shape
    if x.ndim == 3:
        return x[..., None], shape
    side = math.isqrt(shape[1]) if x.ndim == 2 else 0
    if x.ndim != 2 or side * side != shape[1]:
        raise ValueError(
            f"image_augment needs images [B, H, W, C] or [B, H, W], or flat [B, D] with D a "
            f"perfect square; got inputs of shape {shape}"
        )
    return x.reshape(shape[0], side, side, 1), shape


def _one(key: jax.Array, img: jax.Array, shift: Any, noise: Any, cutout: Any) -> jax.Array:
    h, w, _ = img.shape
    k_shift, k_noise, k_cut = jax.random.split(key, 3)
    s = jnp.floor(jnp.asarray(shift, jnp.float32))
    dy, dx = jnp.floor(jax.random.uniform(k_shift, (2,), minval=-s, maxval=s + 1)).astype(int)
    rows, cols = jnp.arange(h) - dy, jnp.arange(w) - dx
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    moved = img[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
    img = jnp.where(inside[..., None], moved, 0.0)
    img = img + jnp.asarray(noise, img.dtype) * jax.random.normal(k_noise, img.shape, img.dtype)
    c = jnp.asarray(cutout, jnp.float32)
    cy, cx = jax.random.uniform(k_cut, (2,)) * jnp.array([h, w], jnp.float32)
    ys, xs = jnp.arange(h) + 0.5, jnp.arange(w) + 0.5
    hole = (jnp.abs(ys - cy) < c / 2)[:, None] & (jnp.abs(xs - cx) < c / 2)[None, :]
    return jnp.where(hole[..., None], 0.0, img)


def image_augment(key: jax.Array, inputs: jax.Array, hp: Mapping[str, Any]) -> jax.Array:
    """Random shift, Gaussian noise and cutout of a batch of images (see the module docstring).

    Args:
      key: the step's augmentation key.
      inputs: a batch of images (or flat square images).
      hp: the trial's hyperparameters; reads :data:`AUGMENT_KEYS` (missing ones are 0).

    Returns:
      The augmented batch, with the shape and dtype of ``inputs``.
    """
    images, shape = _as_images(jnp.asarray(inputs))
    strengths = [hp.get(k, 0.0) for k in AUGMENT_KEYS]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0]))
    out = jax.vmap(lambda k, img: _one(k, img, *strengths))(keys, images)
    return out.reshape(shape).astype(jnp.asarray(inputs).dtype)
