"""Sweep configuration: dotted keys, validation, TOML loading and search spaces.

A sweep is described by a *base* configuration (one value per dotted key, such as
``optimizer.learning_rate``) and a ``[sweep]`` table that says which keys vary and how:

.. code-block:: toml

    [task]
    model = "mlp"

    [optimizer]
    name = "momentum"

    [sweep]
    method = "grid"
    seeds = 2

    [sweep.grid]
    "optimizer.learning_rate" = [0.01, 0.1]
    "train.batch_size" = [32, 128]

``expand_trials`` turns a :class:`SweepConfig` into the list of trial overrides; each trial is the
base configuration with its overrides applied.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ConfigError",
    "KEYS",
    "NUMERIC_KEYS",
    "SweepConfig",
    "config_hash",
    "expand_trials",
    "load_config",
    "trial_name",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the key and allowed values."""


@dataclasses.dataclass(frozen=True)
class _Key:
    default: Any
    kind: str  # "choice" | "float" | "int" | "widths" | "init" | "bool" | "auto_int"
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    help: str = ""

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "widths":
            return "a list of positive integers, e.g. [256, 256]"
        if self.kind == "init":
            return "an initializer preset name (e.g. 'he_normal') or 'normal(STDDEV)'"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "auto_int":
            return "'auto' or a positive integer"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        what = "an integer" if self.kind == "int" else "a number"
        none = " or null (unset)" if self.optional else ""
        return f"{what} in {left}{lo}, {hi}{right}{none}"


#: Every configuration key, its default and its allowed values.
KEYS: dict[str, _Key] = {
    "task.dataset": _Key("digits", "choice", ("digits", "synthetic")),
    "task.model": _Key("mlp", "choice", ("mlp", "cnn")),
    "task.widths": _Key(None, "widths", optional=True),
    "task.activation": _Key("relu", "choice", ("relu", "gelu", "tanh", "sigmoid")),
    "task.normalization": _Key("none", "choice", ("none", "batch", "layer", "group")),
    "task.init": _Key("he_normal", "init"),
    "task.init_scale": _Key(1.0, "float", low=0.0, low_open=True),
    "task.pooling": _Key("max", "choice", ("max", "avg")),
    "task.dropout": _Key(0.0, "float", low=0.0, high=1.0, high_open=True),
    "task.subset": _Key(0, "int", low=0),
    "task.test_fraction": _Key(0.2, "float", low=0.0, high=1.0, low_open=True, high_open=True),
    "optimizer.name": _Key(
        "momentum",
        "choice",
        ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"),
    ),
    "optimizer.learning_rate": _Key(0.1, "float", low=0.0, low_open=True),
    "optimizer.momentum": _Key(None, "float", low=0.0, high=1.0, high_open=True, optional=True),
    "optimizer.clip_norm": _Key(None, "float", low=0.0, low_open=True, optional=True),
    "optimizer.weight_decay": _Key(0.0, "float", low=0.0),
    "schedule.name": _Key(
        "constant", "choice", ("constant", "step_decay", "exponential", "cosine", "warmup_cosine")
    ),
    "schedule.decay_rate": _Key(0.5, "float", low=0.0, low_open=True),
    "schedule.every": _Key(100, "int", low=1),
    "schedule.warmup_steps": _Key(0, "int", low=0),
    "schedule.min_value": _Key(0.0, "float", low=0.0),
    "schedule.alpha": _Key(0.0, "float", low=0.0, high=1.0),
    "train.steps": _Key(500, "int", low=1),
    "train.batch_size": _Key(128, "int", low=1),
    "train.eval_every": _Key(100, "int", low=1),
    "train.seed": _Key(0, "int", low=0),
    "train.batch_grouping": _Key("auto", "choice", ("auto", "pad", "split")),
    "train.max_trials_per_call": _Key("auto", "auto_int"),
    "checkpoint.every": _Key(0, "int", low=0),
    "checkpoint.max_to_keep": _Key(2, "int", low=1),
    "log.tensorboard": _Key(True, "bool"),
    "log.plots": _Key(True, "bool"),
    "parallel.devices": _Key("all", "auto_int"),
    "parallel.coordinator": _Key(None, "str", optional=True),
    "parallel.num_processes": _Key(None, "int", low=1, optional=True),
    "parallel.process_id": _Key(None, "int", low=0, optional=True),
}

#: Keys whose values become traced per-trial arrays; every other key is structure.
NUMERIC_KEYS = (
    "optimizer.learning_rate",
    "optimizer.momentum",
    "optimizer.clip_norm",
    "optimizer.weight_decay",
    "schedule.decay_rate",
    "schedule.every",
    "schedule.warmup_steps",
    "schedule.min_value",
    "schedule.alpha",
    "task.init_scale",
    "train.batch_size",
    "train.seed",
)

#: Keys that cannot vary inside one sweep (all trials share one step clock).
_UNSWEEPABLE = (
    "train.steps",
    "train.eval_every",
    "train.max_trials_per_call",
    "train.batch_grouping",
    "task.dataset",
    "task.subset",
    "task.test_fraction",
)

_SWEEP_KEYS = ("method", "num_trials", "seeds", "seed", "grid", "space", "trials")
_METHODS = ("grid", "random", "quasi_random", "list")
_DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")

_SHORT = {
    "optimizer.learning_rate": "lr",
    "optimizer.momentum": "mom",
    "optimizer.clip_norm": "clip",
    "optimizer.weight_decay": "wd",
    "optimizer.name": "opt",
    "schedule.decay_rate": "decay",
    "schedule.every": "every",
    "schedule.name": "sched",
    "train.batch_size": "bs",
    "train.seed": "seed",
    "task.normalization": "norm",
    "task.activation": "act",
    "task.init_scale": "iscale",
}


def _unknown(key: str, allowed: Sequence[str], where: str = "configuration key") -> ConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {where} {key!r}{hint} Allowed: {', '.join(allowed)}")


def check_value(key: str, value: Any) -> Any:
    """Validate (and normalise) one value for a dotted key; raise ``ConfigError`` if invalid."""
    if key not in KEYS:
        raise _unknown(key, list(KEYS))
    spec = KEYS[key]
    bad = ConfigError(f"{key} = {value!r} is invalid: expected {spec.describe()}")
    if value is None:
        if spec.optional:
            return None
        raise bad
    if spec.kind == "choice":
        if value not in spec.choices:
            raise bad
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if spec.kind == "str":
        if not isinstance(value, str) or not value:
            raise bad
        return value
    if spec.kind == "widths":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise bad
        return tuple(int(v) for v in value)
    if spec.kind == "init":
        from jaxtune import initializers

        if not isinstance(value, str):
            raise bad
        try:
            initializers.get_initializer(value)
        except ValueError as e:
            raise ConfigError(f"{key} = {value!r} is invalid: {e}") from None
        return value
    if spec.kind == "auto_int":
        if value == "auto" or value == "all":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if spec.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
    else:
        value = float(value)
    if not math.isfinite(value):
        raise bad
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        raise bad
    if spec.high is not None and (value > spec.high or (spec.high_open and value == spec.high)):
        raise bad
    return value


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if key == "sweep" or key.startswith("sweep."):
            continue
        if isinstance(v, Mapping) and key not in KEYS:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: the base configuration and the search space.

    Attributes:
      base: every key of :data:`KEYS` with its value for the base trial.
      method: ``grid``, ``random``, ``quasi_random`` or ``list``.
      grid: for ``grid``, dotted key -> list of values (cartesian product, in order).
      space: for ``random``/``quasi_random``, dotted key -> distribution spec
        (``{"distribution": "log_uniform", "low": 1e-3, "high": 1.0}``, ``uniform``,
        ``int_uniform`` or ``{"choice": [...]}``).
      trials: for ``list``, explicit trial overrides.
      num_trials: number of points for ``random``/``quasi_random``.
      seeds: each setting is repeated with ``train.seed + 0 .. seeds - 1``.
      seed: seed of the random / quasi-random sampler.
    """

    base: Mapping[str, Any]
    method: str = "grid"
    grid: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    space: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    trials: tuple = ()
    num_trials: int | None = None
    seeds: int = 1
    seed: int = 0

    def __getitem__(self, key: str) -> Any:
        if key not in self.base:
            raise _unknown(key, list(KEYS))
        return self.base[key]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | SweepConfig) -> SweepConfig:
        """Build from nested sections (``{"optimizer": {"name": ...}}``) or dotted keys."""
        if isinstance(d, SweepConfig):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
        base = {k: spec.default for k, spec in KEYS.items()}
        for key, value in _flatten(d).items():
            base[key] = check_value(key, value)
        sweep = dict(d.get("sweep", {}))
        for k, v in d.items():
            if k.startswith("sweep."):
                sweep[k[len("sweep.") :]] = v
        for k in sweep:
            if k not in _SWEEP_KEYS:
                raise _unknown(k, list(_SWEEP_KEYS), "sweep key")
        method = sweep.get("method", "list" if "trials" in sweep else "grid")
        if method not in _METHODS:
            raise ConfigError(f"sweep.method = {method!r} is invalid: expected one of {_METHODS}")
        seeds = sweep.get("seeds", 1)
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"sweep.seeds = {seeds!r} is invalid: expected an integer >= 1")
        sampler_seed = sweep.get("seed", 0)
        if isinstance(sampler_seed, bool) or not isinstance(sampler_seed, int):
            raise ConfigError(f"sweep.seed = {sampler_seed!r} is invalid: expected an integer")
        grid = _check_grid(sweep.get("grid", {}))
        space = _check_space(sweep.get("space", {}))
        trials = _check_trials(sweep.get("trials", []))
        num_trials = sweep.get("num_trials")
        if method in ("random", "quasi_random"):
            if not space:
                raise ConfigError(f"sweep.method = {method!r} needs a non-empty sweep.space table")
            if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
                raise ConfigError(
                    f"sweep.num_trials = {num_trials!r} is invalid: expected an integer >= 1 "
                    f"for method {method!r}"
                )
        elif method == "grid" and space:
            raise ConfigError("sweep.space is only used by methods 'random' and 'quasi_random'")
        if method == "list" and not trials:
            raise ConfigError("sweep.method = 'list' needs a non-empty sweep.trials list")
        cfg = cls(
            base=base,
            method=method,
            grid=grid,
            space=space,
            trials=trials,
            num_trials=num_trials,
            seeds=seeds,
            seed=sampler_seed,
        )
        for overrides in expand_trials(cfg):
            _check_trial(cfg.base, overrides)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Nested sections (JSON/TOML friendly) that :meth:`from_dict` reads back."""
        out: dict[str, Any] = {}
        for key, value in self.base.items():
            section, name = key.split(".", 1)
            if value is None:
                continue
            out.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
        sweep: dict[str, Any] = {"method": self.method, "seeds": self.seeds, "seed": self.seed}
        if self.grid:
            sweep["grid"] = {k: [_plain(v) for v in vs] for k, vs in self.grid.items()}
        if self.space:
            sweep["space"] = {k: dict(v) for k, v in self.space.items()}
        if self.trials:
            sweep["trials"] = [{k: _plain(v) for k, v in t.items()} for t in self.trials]
        if self.num_trials is not None:
            sweep["num_trials"] = self.num_trials
        out["sweep"] = sweep
        return out

    def replace(self, overrides: Mapping[str, Any]) -> SweepConfig:
        """A copy with dotted base keys (or ``sweep.*`` keys) overridden, validated."""
        d = self.to_dict()
        for key, value in overrides.items():
            section, name = key.split(".", 1) if "." in key else (key, "")
            if section == "sweep":
                sweep = d.setdefault("sweep", {})
                if "." in name:
                    table, sub = name.split(".", 1)
                    sweep.setdefault(table, {})[sub] = value
                else:
                    sweep[name] = value
            else:
                check_value(key, value)
                d.setdefault(section, {})[name] = value
        return SweepConfig.from_dict(d)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _check_grid(grid: Any) -> dict[str, tuple]:
    if not isinstance(grid, Mapping):
        raise ConfigError("sweep.grid must be a table of dotted key -> list of values")
    out = {}
    for key, values in grid.items():
        _check_sweepable(key, "sweep.grid")
        if isinstance(values, str) or not isinstance(values, Sequence):
            values = [values]
        if not values:
            raise ConfigError(f"sweep.grid[{key!r}] is empty: give at least one value")
        out[key] = tuple(_freeze(check_value(key, v)) for v in values)
    return out


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _check_sweepable(key: str, where: str) -> None:
    if key not in KEYS:
        raise _unknown(key, list(KEYS), f"key in {where}:")
    if key in _UNSWEEPABLE or key.split(".")[0] in ("checkpoint", "log", "parallel"):
        raise ConfigError(f"{key} cannot vary within one sweep (in {where}); set it in the base")


def _check_space(space: Any) -> dict[str, dict]:
    if not isinstance(space, Mapping):
        raise ConfigError("sweep.space must be a table of dotted key -> distribution")
    out = {}
    for key, spec in space.items():
        _check_sweepable(key, "sweep.space")
        if isinstance(spec, Sequence) and not isinstance(spec, str):
            spec = {"choice": list(spec)}
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"sweep.space[{key!r}] must be a table, e.g. "
                '{ distribution = "log_uniform", low = 1e-3, high = 1.0 }'
            )
        spec = dict(spec)
        if "choice" in spec:
            spec.setdefault("distribution", "choice")
        dist = spec.get("distribution")
        if dist not in _DISTRIBUTIONS:
            raise ConfigError(
                f"sweep.space[{key!r}].distribution = {dist!r} is invalid: expected one of "
                f"{', '.join(_DISTRIBUTIONS)}"
            )
        if dist == "choice":
            values = spec.get("choice")
            if not isinstance(values, Sequence) or isinstance(values, str) or not values:
                raise ConfigError(f"sweep.space[{key!r}].choice must be a non-empty list")
            spec["choice"] = [_plain(check_value(key, v)) for v in values]
        else:
            for bound in ("low", "high"):
                if not isinstance(spec.get(bound), int | float) or isinstance(
                    spec.get(bound), bool
                ):
                    raise ConfigError(f"sweep.space[{key!r}].{bound} must be a number")
            low, high = spec["low"], spec["high"]
            if not low < high:
                raise ConfigError(f"sweep.space[{key!r}]: low ({low}) must be < high ({high})")
            if dist == "log_uniform" and low <= 0:
                raise ConfigError(f"sweep.space[{key!r}]: log_uniform needs low > 0")
            if dist == "int_uniform":
                spec["low"], spec["high"] = int(low), int(high)
            check_value(key, spec["low"])
            check_value(key, spec["high"])
        out[key] = spec
    return out


def _check_trials(trials: Any) -> tuple:
    if isinstance(trials, str) or not isinstance(trials, Sequence):
        raise ConfigError("sweep.trials must be a list of tables of dotted key -> value")
    out = []
    for i, t in enumerate(trials):
        if not isinstance(t, Mapping):
            raise ConfigError(f"sweep.trials[{i}] must be a table of dotted key -> value")
        flat = _flatten(t)
        for key, value in flat.items():
            _check_sweepable(key, f"sweep.trials[{i}]")
            flat[key] = _freeze(check_value(key, value))
        out.append(flat)
    return tuple(out)


def _check_trial(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    merged = {**base, **overrides}
    if merged["optimizer.name"] == "adagrad" and merged["optimizer.momentum"] is not None:
        raise ConfigError("optimizer.momentum must be null (unset) for optimizer.name = 'adagrad'")


def _sample(spec: Mapping[str, Any], u: float) -> Any:
    dist = spec["distribution"]
    if dist == "choice":
        values = spec["choice"]
        return _freeze(values[min(int(u * len(values)), len(values) - 1)])
    low, high = spec["low"], spec["high"]
    if dist == "uniform":
        return float(low + u * (high - low))
    if dist == "log_uniform":
        return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
    return int(min(low + math.floor(u * (high - low + 1)), high))


def expand_trials(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The overrides of every trial, in order (seeds vary fastest)."""
    if cfg.method == "grid":
        keys = list(cfg.grid)
        settings = [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*cfg.grid.values())
        ]
    elif cfg.method == "list":
        settings = [dict(t) for t in cfg.trials]
    else:
        keys = list(cfg.space)
        if cfg.method == "random":
            points = np.random.default_rng(cfg.seed).random((cfg.num_trials, len(keys)))
        else:
            from scipy.stats import qmc

            points = qmc.Halton(d=len(keys), scramble=True, seed=cfg.seed).random(cfg.num_trials)
        settings = [
            {k: _sample(cfg.space[k], float(p[j])) for j, k in enumerate(keys)} for p in points
        ]
    if cfg.seeds > 1:
        base_seed = cfg.base["train.seed"]
        settings = [
            {**s, "train.seed": s.get("train.seed", base_seed) + i}
            for s in settings
            for i in range(cfg.seeds)
        ]
    return settings


def trial_name(hparams: Mapping[str, Any]) -> str:
    """A short, filesystem-safe name such as ``lr=0.01,bs=32,seed=1``."""
    if not hparams:
        return "base"
    parts = []
    for key, value in hparams.items():
        short = _SHORT.get(key, key.split(".")[-1])
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, tuple | list):
            value = "-".join(str(v) for v in value)
        parts.append(f"{short}={value}")
    return ",".join(parts).replace("/", "_").replace(" ", "")


#: What may change between a run and its resume: where and how it runs, not what it computes.
_NOT_HASHED_SECTIONS = ("checkpoint", "log", "parallel")
_NOT_HASHED_KEYS = ("train.max_trials_per_call",)


def config_hash(cfg: SweepConfig) -> str:
    """A stable hash of everything that determines a sweep's results."""
    d = cfg.to_dict()
    for section in _NOT_HASHED_SECTIONS:
        d.pop(section, None)
    for key in _NOT_HASHED_KEYS:
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def diff_configs(a: SweepConfig, b: SweepConfig) -> list[str]:
    """Dotted keys whose values differ between two configs (results-relevant keys only)."""
    da, db = a.to_dict(), b.to_dict()
    keys = []
    for section in sorted(set(da) | set(db)):
        if section in _NOT_HASHED_SECTIONS:
            continue
        sa, sb = da.get(section, {}), db.get(section, {})
        for name in sorted(set(sa) | set(sb)):
            if f"{section}.{name}" in _NOT_HASHED_KEYS:
                continue
            if sa.get(name) != sb.get(name):
                keys.append(f"{section}.{name}")
    return keys


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
    if path is None:
        d = default_config_dict()
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            d = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: TOML syntax error: {e}") from None
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
    if key not in KEYS:
        raise _unknown(key, list(KEYS))
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
