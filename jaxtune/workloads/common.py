"""What every workload factory reads from its structure: model widths, compute dtype, subset.

A factory receives the group's flat configuration minus its numeric keys (or a plain dict
when called directly). ``task.widths`` sets the model's widths (:func:`widths`);
``task.dtype`` (``"float32"`` or ``"bfloat16"``) sets the dtype the model computes in, while
parameters, optimizer state and outputs stay float32 (:func:`with_compute_dtype`);
``task.subset`` (0 for all) keeps that many training examples (:func:`subset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune import data as data_lib
from jaxtune.errors import ConfigError
from jaxtune.models import Model

__all__ = ["DTYPES", "compute_dtype", "subset", "widths", "with_compute_dtype"]

DTYPES: tuple[str, ...] = ("float32", "bfloat16")
"""``task.dtype`` values a workload accepts."""


def compute_dtype(structure: Mapping[str, Any]) -> str:
    """``structure["task.dtype"]`` (default ``"float32"``), checked against :data:`DTYPES`.

    Example:
      >>> compute_dtype({}), compute_dtype({"task.dtype": "bfloat16"})
      ('float32', 'bfloat16')
    """
    value = structure.get("task.dtype") or "float32"
    if value not in DTYPES:
        raise ConfigError(
            f"task.dtype = {value!r} is invalid: expected one of {', '.join(map(repr, DTYPES))}"
        )
    return value


def widths(structure: Mapping[str, Any], default: tuple[int, ...]) -> tuple[int, ...]:
    """``structure["task.widths"]`` as a tuple, or ``default`` when it is unset."""
    value = structure.get("task.widths")
    return default if not value else tuple(int(w) for w in value)


def subset(splits: data_lib.Splits, structure: Mapping[str, Any]) -> data_lib.Splits:
    """The first ``task.subset`` training examples of a seeded permutation (0 keeps all)."""
    n = int(structure.get("task.subset") or 0)
    if not n:
        return splits
    have = data_lib.num_examples(splits.train)
    if n > have:
        raise ConfigError(
            f"task.subset = {n} is larger than the training set ({have} examples): "
            f"expected an integer in [0, {have}]"
        )
    return data_lib.subset(splits, n)


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def with_compute_dtype(model: Model, dtype: str) -> Model:
    """``model`` computing in ``dtype``: float parameters and inputs are cast on the way in,
    outputs (and any updated model state) cast back to their float32 dtypes on the way out.

    The cast sits inside ``apply``, so gradients reach the float32 parameters through it and
    the optimizer keeps its state in float32 (mixed precision). ``"float32"`` returns
    ``model`` itself.

    Example:
      >>> from jaxtune.models import mlp
      >>> model = with_compute_dtype(mlp(num_outputs=2, input_shape=(3,), widths=(4,)), "bfloat16")
      >>> params, state = jax.eval_shape(model.init, jax.random.key(0))
      >>> apply = lambda p, x: model.apply(p, state, x, train=False)[0]
      >>> str(jax.make_jaxpr(apply)(params, jnp.ones((5, 3)))).count("bf16[5,4] = dot_general")
      1
      >>> jax.eval_shape(apply, params, jnp.ones((5, 3))).dtype, params["Dense_0"]["kernel"].dtype
      (dtype('float32'), dtype('float32'))
    """
    if dtype == "float32":
        return model
    dt = jnp.dtype(dtype)
    inner = model.apply

    def apply(params, model_state, x, *, train, key=None, mask=None):
        out, new_state = inner(
            _cast_floats(params, dt),
            model_state,
            _cast_floats(x, dt),
            train=train,
            key=key,
            mask=mask,
        )
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, model_state)
        return _cast_floats(out, jnp.float32), new_state

    return dataclasses.replace(model, apply=apply)
