"""Flax modules as :class:`Model` pairs: linen modules (:func:`from_linen`) and NNX factories
(:func:`from_nnx`).

Linen's ``init`` / ``apply`` already *is* the pure functional form: params and collections
such as batch statistics are explicit pytrees passed in and returned, so a vmapped, scanned
sweep needs no graph ``split`` / ``merge`` per step. An NNX module is split into plain dicts
by ``init`` and merged back inside ``apply``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.models.model import INPUT_SHAPE, NUM_OUTPUTS, Model, ModelState, Params
from jaxtune.spec import check_arg

__all__ = ["from_linen", "from_nnx", "linen_model"]


def _accepts_kwarg(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` has an explicit parameter called ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _infer_num_outputs(
    init: Callable[[jax.Array], tuple[Params, ModelState]],
    apply: Callable[..., tuple[jax.Array, ModelState]],
    input_shape: tuple[int, ...],
    input_dtype: Any = jnp.float32,
) -> int:
    """Size of the last output axis, found by abstract evaluation (no FLOPs)."""

    def run(key: jax.Array) -> jax.Array:
        params, state = init(key)
        return apply(params, state, jnp.zeros((1, *input_shape), input_dtype), train=False)[0]

    out = jax.eval_shape(run, jax.random.key(0))
    return int(out.shape[-1]) if out.ndim > 1 else 1


def linen_model(
    module: nn.Module,
    input_shape: tuple[int, ...],
    num_outputs: int | None,
    *,
    accepts_mask: bool,
    input_dtype: Any = jnp.float32,
) -> Model:
    """Wraps a linen module called as ``module(x, train=..., [mask=...])`` into a Model.

    The arguments are taken as given (the callers have checked them).

    Args:
      module: The linen module.
      input_shape: Per-example input shape.
      num_outputs: Size of the output's last axis; inferred abstractly when ``None``.
      accepts_mask: Whether ``apply`` passes ``mask=`` on to the module.
      input_dtype: The dtype of the inputs ``init`` traces the module on.

    Returns:
      The model.
    """

    def init(key: jax.Array) -> tuple[Params, ModelState]:
        params_key, dropout_key = jax.random.split(key)
        x = jnp.zeros((1, *input_shape), input_dtype)
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
        num_outputs = _infer_num_outputs(init, apply, input_shape, input_dtype)
    return Model(init=init, apply=apply, input_shape=input_shape, num_outputs=num_outputs)


def _sizes(input_shape: Sequence[int] | int, num_outputs: int | None) -> tuple[tuple, int | None]:
    """The checked ``input_shape`` and ``num_outputs`` (``None`` stays ``None``)."""
    input_shape = check_arg("input_shape", input_shape, INPUT_SHAPE)
    if num_outputs is not None:
        num_outputs = check_arg("num_outputs", num_outputs, NUM_OUTPUTS)
    return input_shape, num_outputs


def from_linen(
    module: nn.Module,
    input_shape: Sequence[int] | int,
    *,
    num_outputs: int | None = None,
    input_dtype: Any = jnp.float32,
) -> Model:
    """Wraps a user's linen module into a :class:`Model`.

    The module is called as ``module(x, train=train)`` and may use BatchNorm and Dropout
    (rng stream ``"dropout"``, fed from ``apply``'s ``key``). Every variable collection other
    than ``"params"`` becomes ``model_state`` and is updated when ``train=True``. ``mask`` is
    passed on only if ``__call__`` has a ``mask`` parameter; otherwise it is ignored. The
    module keeps its own dtypes.

    Args:
      module: A linen module with ``__call__(x, train: bool, ...)``.
      input_shape: Per-example input shape.
      num_outputs: Size of the output's last axis; inferred abstractly when omitted.
      input_dtype: The dtype of the inputs (``jnp.int32`` for token ids fed to an
        ``nn.Embed``); ``init`` traces the module on zeros of it.

    Returns:
      The model.

    Example:
      >>> model = from_linen(nn.Dense(3), (4,))  # doctest: +SKIP
    """
    input_shape, num_outputs = _sizes(input_shape, num_outputs)
    accepts_mask = _accepts_kwarg(type(module).__call__, "mask")
    return linen_model(
        module, input_shape, num_outputs, accepts_mask=accepts_mask, input_dtype=input_dtype
    )


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
    input_dtype: Any = jnp.float32,
) -> Model:
    """Wraps a Flax NNX module factory into a :class:`Model`.

    ``init`` builds the module with ``factory(rngs)`` and splits it into ``params`` (the
    ``nnx.Param`` state) and ``model_state`` (everything else: batch statistics, rng
    stream keys and counts), both as plain nested dicts. ``apply`` merges them back, sets
    ``module.train()`` or ``module.eval()``, calls ``module(x)`` (with ``mask=`` if its
    ``__call__`` has that parameter) and, when training, splits again to return the new
    state. When ``key`` is given, every rng stream of the module is reseeded from it first.
    Dropout layers must receive ``rngs`` in the factory. The module keeps its own dtypes.

    Args:
      factory: ``factory(rngs: nnx.Rngs) -> nnx.Module``; ``rngs`` has a default stream
        and a ``"dropout"`` stream.
      input_shape: Per-example input shape.
      num_outputs: Size of the output's last axis; inferred abstractly when omitted.
      input_dtype: The dtype of the inputs (``jnp.int32`` for token ids), used when
        ``num_outputs`` is inferred.

    Returns:
      The model.

    Example:
      >>> model = from_nnx(lambda rngs: nnx.Linear(4, 3, rngs=rngs), (4,))
      >>> params, state = model.init(jax.random.key(0))
      >>> model.apply(params, state, jnp.ones((2, 4)), train=False)[0].shape
      (2, 3)
    """
    input_shape, num_outputs = _sizes(input_shape, num_outputs)
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
        num_outputs = _infer_num_outputs(init, apply, input_shape, input_dtype)
    return Model(init=init, apply=apply, input_shape=input_shape, num_outputs=num_outputs)
