"""Models as pairs of pure functions, built from Flax linen modules.

Every model in jaxtune is a :class:`Model`: two pure functions

* ``init(key) -> (params, model_state)``
* ``apply(params, model_state, x, *, train, key=None, mask=None) -> (outputs, new_model_state)``

where ``params`` and ``model_state`` (BatchNorm statistics, ``{}`` when there are none) are
plain pytrees of arrays. Because nothing is hidden in an object, a sweep can stack the params
of many trials along a leading axis and ``jax.vmap`` / ``jax.lax.scan`` / ``jax.jit`` the
training step directly.

The bundled builders use Flax **linen** on purpose: linen's ``init`` / ``apply`` already *is*
this pure functional form. Params and batch statistics are explicit pytrees passed in and
returned, so a vmapped, scanned sweep needs no graph ``split`` / ``merge`` per step. Models
written with Flax NNX are still supported through :func:`from_nnx`, which performs that
split/merge inside ``apply``; user linen modules are wrapped by :func:`from_linen`.

Padding invariance. Sweeps pad the last batch of an epoch to a fixed size so that shapes stay
static. ``apply`` accepts ``mask``, a boolean ``(batch,)`` vector marking the real examples:

* BatchNorm computes its batch statistics over the masked examples only, and
* dropout draws its mask per example, from ``fold_in(key, example_index)``,

so the first ``b`` rows of a padded batch get the same outputs (and the same updated
statistics) as an unpadded batch of those ``b`` rows. Layer and group normalization are
per-example and therefore padding-invariant already.

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = mlp(num_outputs=10, input_shape=(64,), widths=(32,), normalization="batch")
    >>> params, state = model.init(jax.random.key(0))
    >>> logits, state = model.apply(params, state, jnp.zeros((8, 64)), train=True)
    >>> logits.shape
    (8, 10)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.initializers import get_initializer

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "HEADS",
    "MLP",
    "NORMALIZATIONS",
    "POOLINGS",
    "Model",
    "PerExampleDropout",
    "cnn",
    "from_linen",
    "from_nnx",
    "group_count",
    "mlp",
    "per_example_dropout",
]

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = MappingProxyType(
    {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}
)
"""Activation functions by name."""
NORMALIZATIONS: tuple[str, ...] = ("none", "batch", "layer", "group")
POOLINGS: tuple[str, ...] = ("max", "avg")
HEADS: tuple[str, ...] = ("flatten", "avg")

Params = Any
ModelState = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as two pure functions plus its input/output sizes.

    Attributes:
      init: ``init(key) -> (params, model_state)``.
      apply: ``apply(params, model_state, x, *, train, key=None, mask=None)
        -> (outputs, new_model_state)``. ``model_state`` is updated only when
        ``train=True`` and returned unchanged otherwise. ``key`` feeds dropout
        (required when training with dropout). ``mask`` is an optional boolean
        ``(batch,)`` vector marking the real rows of a padded batch.
      input_shape: Shape of one example (without the batch axis).
      num_outputs: Size of the last output axis.
    """

    init: Callable[[jax.Array], tuple[Params, ModelState]]
    apply: Callable[..., tuple[jax.Array, ModelState]]
    input_shape: tuple[int, ...]
    num_outputs: int


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_choice(option: str, value: Any, allowed: Sequence[str]) -> str:
    """Returns ``value`` if it is one of ``allowed``; raises ValueError otherwise."""
    if value not in allowed:
        raise ValueError(f"invalid {option} {value!r}; allowed values: {', '.join(allowed)}")
    return value


def _check_rate(option: str, rate: float) -> float:
    if not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
        raise ValueError(f"invalid {option} {rate!r}; allowed values: a float in [0, 1)")
    return float(rate)


def _check_sizes(option: str, sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ValueError(f"invalid {option} {sizes!r}; allowed values: positive integers")
    return sizes


def _as_shape(option: str, shape: Sequence[int] | int) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"invalid {option} {shape!r}; allowed values: positive integers")
    return shape


def _check_num_outputs(num_outputs: int) -> int:
    if not (isinstance(num_outputs, int) and num_outputs > 0):
        raise ValueError(f"invalid num_outputs {num_outputs!r}; allowed values: a positive int")
    return num_outputs


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


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The ``(height, width, channels)`` a CNN sees for a per-example ``input_shape``.

    ``(h, w, c)`` is kept, ``(h, w)`` gets one channel, and a flat ``(d,)`` with ``d`` a
    perfect square becomes a ``(sqrt(d), sqrt(d), 1)`` single-channel image.
    """
    if len(input_shape) == 3:
        return input_shape  # type: ignore[return-value]
    if len(input_shape) == 2:
        return (*input_shape, 1)  # type: ignore[return-value]
    if len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        side = math.isqrt(input_shape[0])
        return (side, side, 1)
    raise ValueError(
        f"invalid input_shape {input_shape!r} for a CNN; allowed values: (h, w, c), (h, w) "
        "or (d,) with d a perfect square"
    )


def _accepts_kwarg(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` has an explicit parameter called ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def per_example_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout whose mask for row ``i`` depends only on ``(key, i)``.

    Example ``i`` uses ``jax.random.fold_in(key, i)``, so padding a batch with extra rows
    never changes the masks of the existing rows.

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


def _broadcast_mask(mask: jax.Array | None, x: jax.Array) -> jax.Array | None:
    """Broadcasts a ``(batch,)`` mask to ``x.shape``."""
    if mask is None:
        return None
    mask = jnp.asarray(mask, dtype=bool)
    if mask.shape != (x.shape[0],):
        raise ValueError(f"mask must have shape (batch,) = {(x.shape[0],)}, got {mask.shape}")
    return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def _normalize(
    x: jax.Array,
    kind: str,
    *,
    train: bool,
    mask: jax.Array | None,
    momentum: float,
) -> jax.Array:
    """Applies the named normalization; must be called inside a compact linen method."""
    if kind == "none":
        return x
    if kind == "batch":
        norm = nn.BatchNorm(use_running_average=not train, momentum=momentum)
        return norm(x, mask=_broadcast_mask(mask, x))
    if kind == "layer":
        return nn.LayerNorm(reduction_axes=tuple(range(1, x.ndim)), feature_axes=-1)(x)
    return nn.GroupNorm(num_groups=group_count(x.shape[-1]))(x)


def _validate_layers(activation: str, normalization: str, init: str, dropout: float) -> None:
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    get_initializer(init)
    _check_rate("dropout", dropout)


class MLP(nn.Module):
    """Multi-layer perceptron: ``[Dense -> norm -> activation -> dropout] * n -> Dense``.

    Inputs of any per-example shape are flattened. The output layer is linear (no
    normalization, no activation).

    Attributes:
      num_outputs: Width of the linear output layer.
      widths: Hidden layer widths.
      activation: One of :data:`ACTIVATIONS`.
      normalization: One of :data:`NORMALIZATIONS` (group: :func:`group_count` groups).
      kernel_init: Kernel initializer name (see :mod:`jaxtune.initializers`).
      init_scale: Multiplier of every kernel's initial standard deviation.
      dropout: Per-example dropout rate after each hidden activation.
      batch_norm_momentum: Momentum of the BatchNorm running statistics.
    """

    num_outputs: int
    widths: Sequence[int] = (256, 256)
    activation: str = "relu"
    normalization: str = "none"
    kernel_init: str = "he_normal"
    init_scale: float = 1.0
    dropout: float = 0.0
    batch_norm_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Maps a ``(batch, ...)`` input to ``(batch, num_outputs)`` outputs."""
        _validate_layers(self.activation, self.normalization, self.kernel_init, self.dropout)
        initializer = get_initializer(self.kernel_init, scale=self.init_scale)
        act = ACTIVATIONS[self.activation]
        x = jnp.reshape(x, (x.shape[0], -1))
        for width in self.widths:
            x = nn.Dense(width, kernel_init=initializer)(x)
            x = _normalize(
                x,
                self.normalization,
                train=train,
                mask=mask,
                momentum=self.batch_norm_momentum,
            )
            x = act(x)
            x = PerExampleDropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_outputs, kernel_init=initializer)(x)


class CNN(nn.Module):
    """VGG-style CNN: ``[Conv3x3 -> norm -> activation -> pool -> dropout] * n -> head -> Dense``.

    Convolutions are 3x3, stride 1, SAME padding. A 2x2 (stride 2) pool follows a block only
    while both spatial sizes are at least 2, so an 8x8 input goes 8 -> 4 -> 2 -> 1. The
    spatial layout is kept until the head, which flattens (``"flatten"``) or global-average
    pools (``"avg"``) before the linear output layer. Inputs ``(batch, h, w, c)``,
    ``(batch, h, w)`` and flat ``(batch, d)`` with square ``d`` are accepted.

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

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Maps a batch of images to ``(batch, num_outputs)`` outputs."""
        _validate_layers(self.activation, self.normalization, self.kernel_init, self.dropout)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("head", self.head, HEADS)
        initializer = get_initializer(self.kernel_init, scale=self.init_scale)
        act = ACTIVATIONS[self.activation]
        pool = nn.max_pool if self.pooling == "max" else nn.avg_pool
        x = jnp.reshape(x, (x.shape[0], *_image_shape(tuple(x.shape[1:]))))
        for features in self.channels:
            x = nn.Conv(features, (3, 3), strides=1, padding="SAME", kernel_init=initializer)(x)
            x = _normalize(
                x,
                self.normalization,
                train=train,
                mask=mask,
                momentum=self.batch_norm_momentum,
            )
            x = act(x)
            if min(x.shape[1], x.shape[2]) >= 2:
                x = pool(x, (2, 2), strides=(2, 2), padding="VALID")
            x = PerExampleDropout(self.dropout)(x, deterministic=not train)
        pooled = self.head == "avg"
        x = jnp.mean(x, axis=(1, 2)) if pooled else jnp.reshape(x, (x.shape[0], -1))
        return nn.Dense(self.num_outputs, kernel_init=initializer)(x)


# --------------------------------------------------------------------------------------------
# Linen -> Model
# --------------------------------------------------------------------------------------------


def _linen_model(
    module: nn.Module,
    input_shape: tuple[int, ...],
    num_outputs: int | None,
    *,
    accepts_mask: bool,
) -> Model:
    """Wraps a linen module called as ``module(x, train=..., [mask=...])`` into a Model."""

    def init(key: jax.Array) -> tuple[Params, ModelState]:
        params_key, dropout_key = jax.random.split(key)
        x = jnp.zeros((1, *input_shape), jnp.float32)
        variables = module.init({"params": params_key, "dropout": dropout_key}, x, train=False)
        variables = flax.core.unfreeze(variables)
        params = variables.pop("params", {})
        return params, variables

    def apply(
        params: Params,
        model_state: ModelState,
        x: jax.Array,
        *,
        train: bool,
        key: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, ModelState]:
        variables = {"params": params, **model_state}
        rngs = {"dropout": key} if key is not None else None
        kwargs = {"mask": mask} if accepts_mask and mask is not None else {}
        if train and model_state:
            outputs, updates = module.apply(
                variables, x, train=True, rngs=rngs, mutable=list(model_state), **kwargs
            )
            return outputs, {**model_state, **flax.core.unfreeze(updates)}
        outputs = module.apply(variables, x, train=train, rngs=rngs, **kwargs)
        return outputs, model_state

    if num_outputs is None:
        num_outputs = _infer_num_outputs(init, apply, input_shape)
    return Model(init=init, apply=apply, input_shape=input_shape, num_outputs=num_outputs)


def _infer_num_outputs(
    init: Callable[[jax.Array], tuple[Params, ModelState]],
    apply: Callable[..., tuple[jax.Array, ModelState]],
    input_shape: tuple[int, ...],
) -> int:
    """Size of the last output axis, found by abstract evaluation (no FLOPs)."""

    def run(key: jax.Array) -> jax.Array:
        params, state = init(key)
        return apply(params, state, jnp.zeros((1, *input_shape), jnp.float32), train=False)[0]

    out = jax.eval_shape(run, jax.random.key(0))
    return int(out.shape[-1]) if out.ndim > 1 else 1


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

    Returns:
      The model.

    Raises:
      ValueError: For an invalid option value (the message names the allowed values).

    Example:
      >>> model = mlp(num_outputs=10, input_shape=(64,), widths=(32,))
      >>> params, state = model.init(jax.random.key(0))
      >>> model.apply(params, state, jnp.zeros((2, 64)), train=False)[0].shape
      (2, 10)
    """
    num_outputs = _check_num_outputs(num_outputs)
    input_shape = _as_shape("input_shape", input_shape)
    widths = _check_sizes("widths", widths)
    _validate_layers(activation, normalization, init, dropout)
    get_initializer(init, scale=init_scale)
    module = MLP(
        num_outputs=num_outputs,
        widths=widths,
        activation=activation,
        normalization=normalization,
        kernel_init=init,
        init_scale=float(init_scale),
        dropout=float(dropout),
    )
    return _linen_model(module, input_shape, num_outputs, accepts_mask=True)


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
    num_outputs = _check_num_outputs(num_outputs)
    input_shape = _as_shape("input_shape", input_shape)
    _image_shape(input_shape)
    channels = _check_sizes("channels", channels)
    _validate_layers(activation, normalization, init, dropout)
    _check_choice("pooling", pooling, POOLINGS)
    _check_choice("head", head, HEADS)
    get_initializer(init, scale=init_scale)
    module = CNN(
        num_outputs=num_outputs,
        channels=channels,
        activation=activation,
        normalization=normalization,
        kernel_init=init,
        init_scale=float(init_scale),
        pooling=pooling,
        dropout=float(dropout),
        head=head,
    )
    return _linen_model(module, input_shape, num_outputs, accepts_mask=True)


def from_linen(
    module: nn.Module,
    input_shape: Sequence[int] | int,
    *,
    num_outputs: int | None = None,
) -> Model:
    """Wraps a user's linen module into a :class:`Model`.

    The module is called as ``module(x, train=train)`` and may use BatchNorm and Dropout
    (rng stream ``"dropout"``, fed from ``apply``'s ``key``). Every variable collection other
    than ``"params"`` becomes ``model_state`` and is updated when ``train=True``. ``mask`` is
    passed on only if ``__call__`` has a ``mask`` parameter; otherwise it is ignored.

    Args:
      module: A linen module with ``__call__(x, train: bool, ...)``.
      input_shape: Per-example input shape.
      num_outputs: Size of the output's last axis; inferred abstractly when omitted.

    Returns:
      The model.

    Example:
      >>> model = from_linen(nn.Dense(3), (4,))  # doctest: +SKIP
    """
    input_shape = _as_shape("input_shape", input_shape)
    if num_outputs is not None:
        num_outputs = _check_num_outputs(num_outputs)
    accepts_mask = _accepts_kwarg(type(module).__call__, "mask")
    return _linen_model(module, input_shape, num_outputs, accepts_mask=accepts_mask)


# --------------------------------------------------------------------------------------------
# NNX -> Model
# --------------------------------------------------------------------------------------------


def _nnx_rngs(key: jax.Array) -> nnx.Rngs:
    """The rngs handed to an NNX factory: a default stream plus a ``"dropout"`` stream."""
    params_key, dropout_key = jax.random.split(key)
    return nnx.Rngs(params_key, dropout=dropout_key)


def _reseed_streams(module: nnx.Module, key: jax.Array) -> None:
    """Reseeds every rng stream held by ``module`` from ``key`` (one fold-in per tag)."""
    tags = sorted(
        {node.tag for _, node in nnx.iter_graph(module) if isinstance(node, nnx.RngStream)}
    )
    if tags:
        nnx.reseed(module, **{tag: jax.random.fold_in(key, i) for i, tag in enumerate(tags)})


def from_nnx(
    factory: Callable[[nnx.Rngs], nnx.Module],
    input_shape: Sequence[int] | int,
    *,
    num_outputs: int | None = None,
) -> Model:
    """Wraps a Flax NNX module factory into a :class:`Model`.

    ``init`` builds the module with ``factory(rngs)`` and splits it into ``params`` (the
    ``nnx.Param`` state) and ``model_state`` (everything else: batch statistics, rng
    stream keys and counts), both as plain nested dicts. ``apply`` merges them back, sets
    ``module.train()`` or ``module.eval()``, calls ``module(x)`` (with ``mask=`` if its
    ``__call__`` has that parameter) and, when training, splits again to return the new
    state. When ``key`` is given, every rng stream of the module is reseeded from it first.
    Dropout layers must receive ``rngs`` in the factory.

    Args:
      factory: ``factory(rngs: nnx.Rngs) -> nnx.Module``; ``rngs`` has a default stream
        and a ``"dropout"`` stream.
      input_shape: Per-example input shape.
      num_outputs: Size of the output's last axis; inferred abstractly when omitted.

    Returns:
      The model.

    Example:
      >>> model = from_nnx(lambda rngs: nnx.Linear(4, 3, rngs=rngs), (4,))
      >>> params, state = model.init(jax.random.key(0))
      >>> model.apply(params, state, jnp.ones((2, 4)), train=False)[0].shape
      (2, 3)
    """
    input_shape = _as_shape("input_shape", input_shape)
    if num_outputs is not None:
        num_outputs = _check_num_outputs(num_outputs)
    abstract = nnx.eval_shape(lambda: factory(_nnx_rngs(jax.random.key(0))))
    graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
    accepts_mask = _accepts_kwarg(type(abstract).__call__, "mask")

    def init(key: jax.Array) -> tuple[Params, ModelState]:
        _, params, rest = nnx.split(factory(_nnx_rngs(key)), nnx.Param, ...)
        return params.to_pure_dict(), rest.to_pure_dict()

    def apply(
        params: Params,
        model_state: ModelState,
        x: jax.Array,
        *,
        train: bool,
        key: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, ModelState]:
        module = nnx.merge(graphdef, params, model_state)
        if train:
            module.train()
        else:
            module.eval()
        if key is not None:
            _reseed_streams(module, key)
        kwargs = {"mask": mask} if accepts_mask and mask is not None else {}
        outputs = module(x, **kwargs)
        if not train:
            return outputs, model_state
        _, _, new_state = nnx.split(module, nnx.Param, ...)
        return outputs, new_state.to_pure_dict()

    if num_outputs is None:
        num_outputs = _infer_num_outputs(init, apply, input_shape)
    return Model(init=init, apply=apply, input_shape=input_shape, num_outputs=num_outputs)
