"""How a number (or a hyperparameter value) is written in tables, names, labels and reports."""

from __future__ import annotations

from typing import Any

__all__ = ["fmt"]


def fmt(v: Any) -> str:
    """A value as short text: floats to 4 significant digits, ``None`` as ``-``.

    Booleans are written as in TOML (``true``), lists and tuples joined by ``-`` (``[8, 16]``
    becomes ``8-16``, safe in a file name), everything else with ``str``.

    Args:
      v: a number (Python, numpy or a 0-d array), ``None``, a bool, a list/tuple, or
        anything else (written with ``str``).

    Returns:
      The text.

    Example:
      >>> import numpy as np
      >>> fmt(np.float32(0.5)), fmt(np.array(7))
      ('0.5', '7')
      >>> [fmt(x) for x in (0.0123456, 3.0, float("nan"), 12, None, True, (8, 16), "adam")]
      ['0.01235', '3', 'nan', '12', '-', 'true', '8-16', 'adam']
    """
    if v is None:
        return "-"
    if getattr(v, "shape", None) == () and hasattr(v, "item"):
        v = v.item()  # a numpy or jax scalar
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple | list):
        return "-".join(fmt(x) for x in v)
    return str(v)
