"""The built-in models: an MLP and a VGG-style CNN, as linen modules and as :class:`Model`
builders (:func:`mlp`, :func:`cnn`).

Mixed precision: ``dtype="bfloat16"`` runs the hidden layers (matmuls, convolutions,
activations, pooling, dropout) in bfloat16 while the parameters stay float32 (flax
``param_dtype``), normalization statistics are reduced in float32 and kept in float32, and the
linear output layer computes in float32, so the outputs (logits), the loss and the metrics are
float32. The gradients are float32, as the parameters are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.initializers import get_initializer
from jaxtune.models.adapters import linen_model
from jaxtune.models.layers import ACTIVATIONS, PerExampleDropout, normalize
from jaxtune.models.model import Model
from jaxtune.models.options import (
    HEAD_FNS,
    IMAGE_SHAPE,
    POOLS,
    check_options,
    image_shape,
    pick,
)
from jaxtune.spec import check_arg

__all__ = ["CNN", "MLP", "cnn", "mlp"]


class MLP(nn.Module):
    """Multi-layer perceptron: ``[Dense -> norm -> activation -> dropout] * n -> Dense``.

    Inputs of any per-example shape are flattened. The output layer is linear (no
    normalization, no activation) and computes in float32.

    Attributes:
      num_outputs: Width of the linear output layer.
      widths: Hidden layer widths.
      activation: One of :data:`ACTIVATIONS`.
      normalization: One of :data:`NORMALIZATIONS` (group: :func:`group_count` groups).
      kernel_init: Kernel initializer name (see :mod:`jaxtune.initializers`).
      init_scale: Multiplier of every kernel's initial standard deviation.
      dropout: Per-example dropout rate after each hidden activation.
      batch_norm_momentum: Momentum of the BatchNorm running statistics.
      dtype: Compute dtype of the hidden layers (a name or a jnp dtype); parameters are
        float32.
    """

    num_outputs: int
    widths: Sequence[int] = (256, 256)
    activation: str = "relu"
    normalization: str = "none"
    kernel_init: str = "he_normal"
    init_scale: float = 1.0
    dropout: float = 0.0
    batch_norm_momentum: float = 0.9
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Maps a ``(batch, ...)`` input to ``(batch, num_outputs)`` float32 outputs."""
        act = pick(ACTIVATIONS, "activation", self.activation)
        initializer = get_initializer(self.kernel_init, scale=self.init_scale)
        dtype = jnp.dtype(self.dtype)
        x = jnp.reshape(x, (x.shape[0], -1))
        for width in self.widths:
            x = nn.Dense(width, kernel_init=initializer, dtype=dtype, param_dtype=jnp.float32)(x)
            x = normalize(
                x,
                self.normalization,
                train=train,
                mask=mask,
                momentum=self.batch_norm_momentum,
                dtype=dtype,
            )
            x = act(x)
            x = PerExampleDropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_outputs, kernel_init=initializer, dtype=jnp.float32)(x)


class CNN(nn.Module):
    """VGG-style CNN: ``[Conv3x3 -> norm -> activation -> pool -> dropout] * n -> head -> Dense``.

    Convolutions are 3x3, stride 1, SAME padding. A 2x2 (stride 2) pool follows a block only
    while both spatial sizes are at least 2, so an 8x8 input goes 8 -> 4 -> 2 -> 1. The
    spatial layout is kept until the head, which flattens (``"flatten"``) or global-average
    pools (``"avg"``) before the linear output layer (computed in float32). Inputs
    ``(batch, h, w, c)``, ``(batch, h, w)`` and flat ``(batch, d)`` with square ``d`` are
    accepted.

    Attributes:
      num_outputs: Width of the linear output layer.
      channels: Output channels of the conv blocks (growing: fewer near the input).
      activation: One of :data:`ACTIVATIONS`.
      normalization: One of :data:`NORMALIZATIONS` (group: :func:`group_count` groups).
      kernel_init: Kernel initializer name (see :mod:`jaxtune.initializers`).
      init_scale: Multiplier of every kernel's initial standard deviation.
      pooling: One of :data:`POOLINGS`.
      dropout: Per-example dropout rate after each block.
      head: One of :data:`HEADS`.
      batch_norm_momentum: Momentum of the BatchNorm running statistics.
      dtype: Compute dtype of the conv blocks (a name or a jnp dtype); parameters are
        float32.
    """

    num_outputs: int
    channels: Sequence[int] = (16, 32, 64)
    activation: str = "relu"
    normalization: str = "none"
    kernel_init: str = "he_normal"
    init_scale: float = 1.0
    pooling: str = "max"
    dropout: float = 0.0
    head: str = "flatten"
    batch_norm_momentum: float = 0.9
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Maps a batch of images to ``(batch, num_outputs)`` float32 outputs."""
        act = pick(ACTIVATIONS, "activation", self.activation)
        pool = pick(POOLS, "pooling", self.pooling)
        head = pick(HEAD_FNS, "head", self.head)
        initializer = get_initializer(self.kernel_init, scale=self.init_scale)
        dtype = jnp.dtype(self.dtype)
        x = jnp.reshape(x, (x.shape[0], *image_shape(tuple(x.shape[1:]))))
        for features in self.channels:
            x = nn.Conv(
                features,
                (3, 3),
                strides=1,
                padding="SAME",
                kernel_init=initializer,
                dtype=dtype,
                param_dtype=jnp.float32,
            )(x)
            x = normalize(
                x,
                self.normalization,
                train=train,
                mask=mask,
                momentum=self.batch_norm_momentum,
                dtype=dtype,
            )
            x = act(x)
            if min(x.shape[1], x.shape[2]) >= 2:
                x = pool(x, (2, 2), strides=(2, 2), padding="VALID")
            x = PerExampleDropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_outputs, kernel_init=initializer, dtype=jnp.float32)(head(x))


def mlp(
    *,
    num_outputs: int,
    input_shape: Sequence[int] | int,
    widths: Sequence[int] = (256, 256),
    activation: str = "relu",
    normalization: str = "none",
    init: str = "he_normal",
    dropout: float = 0.0,
    init_scale: float = 1.0,
    dtype: Any = "float32",
) -> Model:
    """Builds an :class:`MLP` as a :class:`Model`.

    Args:
      num_outputs: Number of outputs (e.g. classes).
      input_shape: Per-example input shape; any shape is flattened (e.g. ``(64,)`` or
        ``(8, 8, 1)``).
      widths: Hidden layer widths.
      activation: One of :data:`ACTIVATIONS`.
      normalization: One of :data:`NORMALIZATIONS`.
      init: Kernel initializer name, e.g. ``"he_normal"`` or ``"normal(0.01)"``.
      dropout: Per-example dropout rate in ``[0, 1)``.
      init_scale: Multiplier of every kernel's initial standard deviation.
      dtype: Compute dtype, one of :data:`DTYPES` (``"float32"``, ``"bfloat16"``) or the jnp
        dtype; parameters, normalization statistics and outputs stay float32.

    Returns:
      The model.

    Raises:
      ValueError: For an invalid option value (the message names the allowed values).

    Example:
      >>> model = mlp(num_outputs=10, input_shape=(64,), widths=(32,), dtype="bfloat16")
      >>> params, state = model.init(jax.random.key(0))
      >>> params["Dense_0"]["kernel"].dtype
      dtype('float32')
      >>> out, _ = model.apply(params, state, jnp.zeros((2, 64)), train=False)
      >>> out.shape, out.dtype
      ((2, 10), dtype('float32'))
    """
    o = check_options(
        num_outputs=num_outputs,
        input_shape=input_shape,
        widths=widths,
        activation=activation,
        normalization=normalization,
        init=init,
        dropout=dropout,
        init_scale=init_scale,
        dtype=dtype,
    )
    module = MLP(
        num_outputs=o["num_outputs"],
        widths=o["widths"],
        activation=o["activation"],
        normalization=o["normalization"],
        kernel_init=o["init"],
        init_scale=o["init_scale"],
        dropout=o["dropout"],
        dtype=o["dtype"],
    )
    return linen_model(module, o["input_shape"], o["num_outputs"], accepts_mask=True)


def cnn(
    *,
    num_outputs: int,
    input_shape: Sequence[int] | int,
    channels: Sequence[int] = (16, 32, 64),
    activation: str = "relu",
    normalization: str = "none",
    init: str = "he_normal",
    pooling: str = "max",
    dropout: float = 0.0,
    init_scale: float = 1.0,
    head: str = "flatten",
    dtype: Any = "float32",
) -> Model:
    """Builds a :class:`CNN` as a :class:`Model`.

    Args:
      num_outputs: Number of outputs (e.g. classes).
      input_shape: Per-example shape ``(h, w, c)``, ``(h, w)`` or flat ``(d,)`` with ``d``
        a perfect square (``(64,)`` is read as an 8x8 single-channel image).
      channels: Output channels of the 3x3 conv blocks.
      activation: One of :data:`ACTIVATIONS`.
      normalization: One of :data:`NORMALIZATIONS`.
      init: Kernel initializer name, e.g. ``"he_normal"``.
      pooling: One of :data:`POOLINGS` (2x2, while the spatial size is at least 2).
      dropout: Per-example dropout rate in ``[0, 1)``.
      init_scale: Multiplier of every kernel's initial standard deviation.
      head: ``"flatten"`` or ``"avg"`` (global average pool) before the linear head.
      dtype: Compute dtype, one of :data:`DTYPES` (``"float32"``, ``"bfloat16"``) or the jnp
        dtype; parameters, normalization statistics and outputs stay float32.

    Returns:
      The model.

    Raises:
      ValueError: For an invalid option value (the message names the allowed values).

    Example:
      >>> model = cnn(num_outputs=10, input_shape=(8, 8, 1), channels=(4, 8))
      >>> params, state = model.init(jax.random.key(0))
      >>> model.apply(params, state, jnp.zeros((2, 8, 8, 1)), train=False)[0].shape
      (2, 10)
    """
    shape = check_arg("input_shape", input_shape, IMAGE_SHAPE)
    o = check_options(
        num_outputs=num_outputs,
        channels=channels,
        activation=activation,
        normalization=normalization,
        init=init,
        pooling=pooling,
        dropout=dropout,
        init_scale=init_scale,
        head=head,
        dtype=dtype,
    )
    module = CNN(
        num_outputs=o["num_outputs"],
        channels=o["channels"],
        activation=o["activation"],
        normalization=o["normalization"],
        kernel_init=o["init"],
        init_scale=o["init_scale"],
        pooling=o["pooling"],
        dropout=o["dropout"],
        head=o["head"],
        dtype=o["dtype"],
    )
    return linen_model(module, shape, o["num_outputs"], accepts_mask=True)
