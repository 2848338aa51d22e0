"""Dotted keys (``optimizer.learning_rate``) <-> nested tables (``{"optimizer": {...}}``).

Both directions are ``flax.traverse_util``'s, with ``"."`` as the separator.

Example:
    >>> flat = dotted({"optimizer": {"name": "sgd", "learning_rate": 0.1}})
    >>> flat
    {'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.1}
    >>> nested(flat)
    {'optimizer': {'name': 'sgd', 'learning_rate': 0.1}}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from flax import traverse_util

__all__ = ["dotted", "nested"]


def dotted(
    tables: Mapping[str, Any], *, depth: int | None = None, leaves: Collection[str] = ()
) -> dict[str, Any]:
    """Nested tables as one flat dict of dotted keys (empty tables are left out).

    Args:
      tables: nested dicts; a key may already be dotted (``{"optimizer.name": "sgd"}``).
      depth: stop after this many levels (``depth=2`` keeps ``sweep.grid`` one value).
      leaves: dotted keys whose values stay whole even when they are tables.

    Returns:
      ``{"section.name": value}``, in the order of ``tables``.

    Example:
      >>> dotted({"sweep": {"grid": {"optimizer.learning_rate": [0.1]}}}, depth=2)
      {'sweep.grid': {'optimizer.learning_rate': [0.1]}}
    """

    def is_leaf(path: tuple[str, ...], _: Any) -> bool:
        return (depth is not None and len(path) >= depth) or ".".join(path) in leaves

    return traverse_util.flatten_dict(dict(tables), sep=".", is_leaf=is_leaf)


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested tables: each ``.`` opens a table.

    Args:
      flat: ``{"section.name": value}``.

    Returns:
      ``{"section": {"name": value}}``, ready for :func:`jaxtune.config.to_toml`.
    """
    return traverse_util.unflatten_dict(dict(flat), sep=".")
