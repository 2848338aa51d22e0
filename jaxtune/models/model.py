"""The :class:`Model`: a model as two pure functions plus its input and output sizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from jaxtune.spec import KeySpec

__all__ = ["INPUT_SHAPE", "NUM_OUTPUTS", "Model", "ModelState", "Params"]

Params = Any
ModelState = dict[str, Any]

#: The per-example input shape a model is built for (one integer is a shape of one axis).
INPUT_SHAPE = KeySpec("shape")
#: The size of a model's last output axis.
NUM_OUTPUTS = KeySpec("int", low=1)


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
