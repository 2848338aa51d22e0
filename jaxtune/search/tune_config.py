"""The ``[tune]`` table of ``jaxtune tune``: every key, its default and what it allows.

The table sits beside the sweep configuration in the same TOML file and is split off before the
configuration is validated (``[tune]`` is not a sweep key: each stage builds its own sweep).
:data:`TUNE_KEYS` is the one table of its keys; values that are configuration values (batch
sizes, schedule names, clip norms, weight decays, ``tune.refine.grid`` entries) are checked by
:func:`jaxtune.config.check_value`, so their allowed values come from the configuration's own
registry.

Example:
    >>> cfg = SweepConfig.from_dict({"task": {"dataset": "synthetic"}})
    >>> s = tune_settings({"lr_range": {"steps": 50}, "seeds": {"count": 3}}, cfg)
    >>> s["tune.lr_range.steps"], s["tune.seeds.count"], s["tune.stages"]
    (50, 3, ('lr_range', 'lr_batch', 'refine', 'seeds'))
    >>> tune_settings({"seeds": {"count": 1}}, cfg)
    Traceback (most recent call last):
    ...
    jaxtune.errors.ConfigError: tune.seeds.count = 1 is invalid: expected an integer in [2, inf)
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtune.config import SweepConfig, check_value, default_config_dict, parse_override
from jaxtune.config.schema import unknown
from jaxtune.config.space import check_sweepable
from jaxtune.config.toml_io import read_toml
from jaxtune.errors import ConfigError
from jaxtune.spec import KeySpec

__all__ = [
    "FOLDERS",
    "STAGES",
    "TUNE_KEYS",
    "TuneSettings",
    "load_tune_config",
    "refine_grid",
    "split_tune",
    "tune_settings",
]

#: The stages, in the tuning order.
STAGES = ("lr_range", "lr_batch", "refine", "seeds")
#: Each stage's folder under the output folder.
FOLDERS = {
    "lr_range": "stage1-lr-range",
    "lr_batch": "stage2-lr-batch",
    "refine": "stage3-refine",
    "seeds": "stage4-seeds",
}
BAND_RULES = ("within", "around")
#: Stage-3 knobs of the configured optimizer chain: tune key -> the configuration key it varies.
REFINE_KEYS = {
    "tune.refine.schedules": "schedule.name",
    "tune.refine.clip_norms": "optimizer.clip_norm",
    "tune.refine.weight_decays": "optimizer.weight_decay",
}


def _stages(value: Any) -> tuple[str, ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not value
        or any(s not in STAGES for s in value)
        or list(value) != sorted(set(value), key=STAGES.index)
    ):
        raise ValueError("")
    return tuple(value)


def _band(value: Any) -> tuple[float, float]:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(number(v) for v in value)
        or not 0 < value[0] < value[1]
    ):
        raise ValueError("")
    return (float(value[0]), float(value[1]))


def _table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("")
    return value


def _values_of(key: str, default: tuple) -> KeySpec:
    """A list of values of the configuration key ``key`` (each checked by ``check_value``)."""

    def parse(value: Any) -> tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError("")
        return tuple(dict.fromkeys(check_value(key, v) for v in value if v is not None))

    return KeySpec("custom", default, text=f"a list of {key} values", parser=parse)


_POSITIVE = dict(low=0.0, low_open=True)
_ABOVE_ONE = dict(low=1.0, low_open=True)

#: Every ``[tune]`` key (dotted), its default and what it allows.
TUNE_KEYS: dict[str, KeySpec] = {
    "tune.stages": KeySpec(
        "custom",
        STAGES,
        text="a list of stages in the tuning order, from " + ", ".join(STAGES),
        parser=_stages,
    ),
    "tune.lr_range.min_lr": KeySpec("float", 1e-4, **_POSITIVE),
    "tune.lr_range.max_lr": KeySpec("float", 10.0, **_POSITIVE),
    "tune.lr_range.num_lrs": KeySpec("int", 11, low=3),
    "tune.lr_range.steps": KeySpec("int", 100, low=5),
    "tune.lr_range.band": KeySpec("choice", "within", BAND_RULES),
    "tune.lr_range.within": KeySpec("float", 0.1, **_POSITIVE),
    "tune.lr_range.factor": KeySpec("float", 3.0, **_ABOVE_ONE),
    "tune.lr_batch.band": KeySpec(
        "custom",
        optional=True,
        text="a list [low, high] of learning rates with 0 < low < high",
        parser=_band,
    ),
    "tune.lr_batch.num_trials": KeySpec("int", 16, low=1),
    "tune.lr_batch.batch_sizes": _values_of("train.batch_size", (32, 64, 128)),
    "tune.lr_batch.eta": KeySpec("float", 3.0, **_ABOVE_ONE),
    "tune.lr_batch.min_steps": KeySpec("int", None, low=1, optional=True),
    "tune.lr_batch.seed": KeySpec("int", 0, low=0),
    "tune.refine.schedules": _values_of("schedule.name", ("constant", "cosine")),
    "tune.refine.clip_norms": _values_of("optimizer.clip_norm", (1.0, 10.0)),
    "tune.refine.weight_decays": _values_of("optimizer.weight_decay", (0.0, 1e-4, 1e-3)),
    "tune.refine.grid": KeySpec(
        "custom", optional=True, text="a table of dotted key -> list of values", parser=_table
    ),
    "tune.seeds.count": KeySpec("int", 5, low=2),
    "tune.seeds.first": KeySpec("int", None, low=0, optional=True),
    "tune.seeds.confidence": KeySpec(
        "float", 0.95, low=0.0, high=1.0, low_open=True, high_open=True
    ),
}

#: Keys the stages set themselves (stage 3 leaves them to stages 2 and 4).
_NOT_IN_REFINE = ("train.seed",)


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """Validated ``[tune]`` settings: every key of :data:`TUNE_KEYS` with its value."""

    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        if key not in self.values:
            raise unknown(key, list(self.values), "tune key")
        return self.values[key]

    def to_dict(self) -> dict[str, Any]:
        """Dotted key -> JSON-friendly value (lists for tuples, tables for grids)."""
        out = {}
        for k, v in self.values.items():
            if isinstance(v, Mapping):
                v = {g: list(vs) for g, vs in v.items()}
            out[k] = list(v) if isinstance(v, tuple) else v
        return out


def _flatten(d: Mapping[str, Any], prefix: str = "tune.") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = k if k.startswith("tune.") else prefix + k
        if isinstance(v, Mapping) and key not in TUNE_KEYS:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check(key: str, value: Any, base: Mapping[str, Any]) -> Any:
    value = TUNE_KEYS[key].check(key, value)
    if key == "tune.refine.grid" and value is not None:
        return _check_grid(key, value, base)
    return value


def _check_grid(key: str, grid: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, tuple]:
    out = {}
    for k, values in grid.items():
        check_sweepable(k, key, base)
        if k in _NOT_IN_REFINE:
            raise ConfigError(f"{key} cannot vary {k}: stage 'seeds' repeats the choice over seeds")
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"{key}[{k!r}] = {values!r} is invalid: expected a non-empty list")
        out[k] = tuple(dict.fromkeys(check_value(k, v) for v in values))
    return out


def _default_grid(cfg: SweepConfig) -> dict[str, tuple]:
    """The configuration's own ``sweep.grid`` less what the other stages choose."""
    chosen = ("optimizer.learning_rate", "train.batch_size", *_NOT_IN_REFINE)
    return {k: tuple(v) for k, v in cfg.grid.items() if k not in chosen}


def tune_settings(tune: Mapping[str, Any] | TuneSettings | None, cfg: SweepConfig) -> TuneSettings:
    """Validate a ``[tune]`` table (nested or dotted keys) against the configuration ``cfg``.

    Defaults that depend on the configuration: with ``optimizer.factory`` (a user optimizer
    chain) stage 3 varies no schedule, clip norm or weight decay unless asked to (the factory
    builds its own chain); ``tune.refine.grid`` defaults to the configuration's own
    ``[sweep.grid]`` less the learning rate, batch size and seed.

    Raises:
      ConfigError: naming the key and its allowed values.
    """
    if isinstance(tune, TuneSettings):
        return tune
    base = cfg.base
    given = _flatten(tune or {})
    for key in given:
        if key not in TUNE_KEYS:
            raise unknown(key, list(TUNE_KEYS), "tune key")
    user_chain = base["optimizer.factory"] is not None
    values = {}
    for key, spec in TUNE_KEYS.items():
        if key in given:
            values[key] = _check(key, given[key], base)
        elif user_chain and key in REFINE_KEYS:
            values[key] = ()
        elif key == "tune.refine.grid":
            values[key] = _default_grid(cfg)
        else:
            values[key] = spec.default
    _check_together(values, base)
    return TuneSettings(values)


def _check_together(v: Mapping[str, Any], base: Mapping[str, Any]) -> None:
    stages, steps, every = v["tune.stages"], base["train.steps"], base["train.eval_every"]
    if v["tune.lr_range.min_lr"] >= v["tune.lr_range.max_lr"]:
        raise ConfigError(
            f"tune.lr_range.min_lr = {v['tune.lr_range.min_lr']} is invalid: expected a number "
            f"below tune.lr_range.max_lr ({v['tune.lr_range.max_lr']})"
        )
    band = v["tune.lr_batch.band"]
    if "lr_batch" in stages and "lr_range" in stages and band is not None:
        raise ConfigError(
            "tune.lr_batch.band is invalid with stage 'lr_range': the range test picks the band "
            "(remove the key, or 'lr_range' from tune.stages)"
        )
    if "lr_batch" in stages and "lr_range" not in stages and band is None:
        raise ConfigError(
            "tune.lr_batch.band is needed without stage 'lr_range': expected a list [low, high] "
            "of learning rates"
        )
    if "lr_batch" in stages and not v["tune.lr_batch.batch_sizes"]:
        raise ConfigError(
            "tune.lr_batch.batch_sizes = [] is invalid: expected a non-empty list of "
            "train.batch_size values (stage 'lr_batch' searches them)"
        )
    if "lr_batch" in stages and steps % every:
        raise ConfigError(
            f"train.steps = {steps} is invalid for stage 'lr_batch': expected a multiple of "
            f"train.eval_every ({every}), where successive halving ranks the trials"
        )
    first = v["tune.lr_batch.min_steps"]
    if "lr_batch" in stages and first is not None and (first % every or first >= steps):
        raise ConfigError(
            f"tune.lr_batch.min_steps = {first} is invalid: expected a multiple of "
            f"train.eval_every ({every}) below train.steps ({steps})"
        )
    if base["optimizer.factory"] is not None and v["tune.refine.schedules"]:
        raise ConfigError(
            "tune.refine.schedules is invalid with optimizer.factory: the factory builds its own "
            "chain and schedule; expected [] (vary your own keys with tune.refine.grid)"
        )


def refine_grid(settings: TuneSettings, base: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Stage 3's values per key around ``base`` (the incumbent's value first), for the keys
    that have a value other than the incumbent's."""
    wanted = {REFINE_KEYS[k]: settings[k] for k in REFINE_KEYS}
    wanted.update(settings["tune.refine.grid"])
    grid = {}
    for key, values in wanted.items():
        values = list(dict.fromkeys([base[key], *values]))
        if len(values) > 1:
            grid[key] = values
    return grid


def split_tune(d: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(configuration, tune table)`` of a TOML document (``[tune]`` and ``tune.*`` keys)."""
    rest = {k: v for k, v in d.items() if k != "tune" and not k.startswith("tune.")}
    table = {k: v for k, v in d.items() if k.startswith("tune.")}
    return rest, {**dict(d.get("tune", {})), **table}


def _parse_tune_override(text: str) -> tuple[str, Any]:
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def load_tune_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    document: Mapping[str, Any] | None = None,
) -> tuple[SweepConfig, TuneSettings]:
    """A TOML file's configuration and ``[tune]`` settings (the bundled default without a path).

    Args:
      path: a TOML file with sweep sections and an optional ``[tune]`` table.
      overrides: ``"key=value"`` strings; ``tune.*`` keys set tune settings, the others the
        configuration (as ``jaxtune sweep --set``).
      document: the parsed document instead of ``path`` (sections, ``tune`` or ``tune.*``).

    Raises:
      ConfigError: a missing file, a TOML syntax error, or an invalid key or value.
    """
    if document is not None:
        d: Mapping[str, Any] = document
    elif path is None:
        d = default_config_dict()
    else:
        d = read_toml(path)
    rest, table = split_tune(d)
    cfg = SweepConfig.from_dict(rest)
    tune_over, cfg_over = {}, {}
    for text in overrides:
        if text.strip().startswith("tune.") and "=" in text:
            key, value = _parse_tune_override(text)
            tune_over[key] = value
        else:
            key, value = parse_override(text)
            cfg_over[key] = value
    cfg = cfg.replace(cfg_over) if cfg_over else cfg
    return cfg, tune_settings({**_flatten(table), **tune_over}, cfg)
