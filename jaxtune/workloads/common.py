"""What every workload factory reads from its structure: model widths, compute dtype, subset.

A factory receives the group's flat configuration minus its numeric keys (or a plain dict
when called directly). :func:`setting` reads one of its keys, checked by the configuration's
own spec (:data:`jaxtune.config.KEYS`), so a direct call fails like a configuration would.
``task.widths`` sets the model's widths (:func:`widths`); ``task.dtype`` (``"float32"`` or
``"bfloat16"``) is passed to the model builder as its ``dtype``, which computes in it while
parameters, normalization statistics and outputs stay float32 (see
:mod:`jaxtune.models.zoo`); ``task.subset`` (0 for all) keeps that many training examples
(:func:`jaxtune.data.splits.take_subset`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxtune.config import KEYS, check_value

__all__ = ["setting", "widths"]


def setting(structure: Mapping[str, Any], key: str) -> Any:
    """``structure[key]`` checked against the key's spec, or the key's default when unset.

    Raises:
      ConfigError: naming the key and its allowed values.

    Example:
      >>> setting({}, "task.dtype"), setting({"task.dtype": "bfloat16"}, "task.dtype")
      ('float32', 'bfloat16')
      >>> setting({"task.widths": [8, 4]}, "task.widths")
      (8, 4)
    """
    value = structure.get(key)
    return KEYS[key].default if value is None else check_value(key, value)


def widths(structure: Mapping[str, Any], default: tuple[int, ...]) -> tuple[int, ...]:
    """``structure["task.widths"]`` as a tuple, or ``default`` when it is unset."""
    return setting(structure, "task.widths") or default
