"""TOML: read a sweep file (with ``--set key=value`` overrides) and write one back.

Example:
    >>> cfg = load_config(None, ["optimizer.learning_rate=0.05"])
    >>> cfg["optimizer.learning_rate"]
    0.05
    >>> tomllib.loads(to_toml({"train": {"steps": 10}}))
    {'train': {'steps': 10}}
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from jaxtune.config.schema import KEYS, is_hparam, unknown
from jaxtune.config.sweep_config import SweepConfig
from jaxtune.errors import ConfigError

__all__ = [
    "default_config",
    "default_config_dict",
    "load_config",
    "parse_override",
    "read_toml",
    "to_toml",
]


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] | Mapping = ()
) -> SweepConfig:
    """Load a TOML sweep file (or the bundled default when ``path`` is None).

    Args:
      path: a TOML file; ``None`` gives :func:`default_config`.
      overrides: ``"key=value"`` strings (values parsed as TOML, bare words as strings) or a
        mapping of dotted key -> value, applied on top of the file.

    Returns:
      A validated :class:`SweepConfig`.

    Raises:
      ConfigError: a missing file, a TOML syntax error (with its line), or an invalid key/value.
    """
    d = default_config_dict() if path is None else read_toml(path)
    cfg = SweepConfig.from_dict(d)
    if isinstance(overrides, Mapping):
        parsed = dict(overrides)
    else:
        parsed = dict(parse_override(o) for o in overrides)
    return cfg.replace(parsed) if parsed else cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (the value as a TOML value; a bare word is a string)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. optimizer.learning_rate=0.1")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if key.startswith("sweep."):
        return key, value
    if key not in KEYS and not is_hparam(key):
        raise unknown(key, list(KEYS))
    return key, value


def default_config_dict() -> dict[str, Any]:
    """The bundled default sweep: a learning-rate x batch-size grid of the digits MLP."""
    return {
        "task": {"dataset": "digits", "model": "mlp", "widths": [256, 256]},
        "optimizer": {"name": "momentum", "momentum": 0.9, "clip_norm": 1.0},
        "schedule": {"name": "step_decay", "decay_rate": 0.5, "every": 200},
        "train": {"steps": 600, "eval_every": 50, "seed": 0},
        "checkpoint": {"every": 200},
        "sweep": {
            "method": "grid",
            "grid": {
                "optimizer.learning_rate": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
                "train.batch_size": [32, 64, 128],
            },
        },
    }


def default_config() -> SweepConfig:
    """The bundled default sweep as a :class:`SweepConfig`."""
    return SweepConfig.from_dict(default_config_dict())


def _plain(v: Any) -> Any:
    """``v`` with ``None`` table values left out and numpy scalars as Python numbers."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if v is None:
        raise TypeError("TOML has no null value; leave the key out instead")
    if hasattr(v, "item") and callable(v.item):
        return v.item()  # numpy scalar
    return v


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error raises ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: TOML syntax error: {e}") from None


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize nested dicts of str/int/float/bool/lists to TOML (written by ``tomli_w``).

    Nested dicts become ``[table]`` sections; dicts inside lists become inline tables. Floats use
    their shortest round-tripping representation, so ``tomllib.loads(to_toml(d)) == d``.

    Args:
      data: nested mappings; ``None`` values are left out, numpy scalars become Python numbers.

    Returns:
      The TOML text, ending in a newline.
    """
    return tomli_w.dumps(_plain(data))
