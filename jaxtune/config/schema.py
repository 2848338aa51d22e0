"""Every configuration key: its default, what it allows, and whether it is numeric (traced).

Allowed names (datasets, models, activations, optimizers, schedules...) come from
:mod:`jaxtune.registry`, the one table of each kind. Keys under ``[hparams]`` are the user's own
numeric hyperparameters: any name, a number as value, traced and sweepable like a learning rate.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtune import registry
from jaxtune.errors import ConfigError

__all__ = ["HPARAMS", "KEYS", "NUMERIC_KEYS", "check_value", "numeric_keys"]

HPARAMS = "hparams"
"""The section of user hyperparameters: ``hparams.<name> = <number>``."""


@dataclasses.dataclass(frozen=True)
class _Key:
    default: Any
    kind: str  # "choice" | "float" | "int" | "widths" | "init" | "bool" | "auto_int" | "str"
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        none = " or null (unset)" if self.optional else ""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices) + none
        if self.kind == "widths":
            return "a list of positive integers, e.g. [256, 256]" + none
        if self.kind == "init":
            return "an initializer preset name (e.g. 'he_normal') or 'normal(STDDEV)'"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "auto_int":
            return "'auto' or a positive integer"
        if self.kind == "str":
            return "a non-empty string" + none
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        what = "an integer" if self.kind == "int" else "a number"
        return f"{what} in {left}{lo}, {hi}{right}{none}"


_FRACTION = dict(low=0.0, high=1.0, low_open=True, high_open=True)

#: Every configuration key (other than ``hparams.*``), its default and its allowed values.
KEYS: dict[str, _Key] = {
    "task.factory": _Key(None, "str", optional=True),
    "task.dataset": _Key("digits", "choice", tuple(registry.DATASETS)),
    "task.model": _Key("mlp", "choice", tuple(registry.MODELS)),
    "task.widths": _Key(None, "widths", optional=True),
    "task.activation": _Key("relu", "choice", tuple(registry.ACTIVATIONS)),
    "task.normalization": _Key("none", "choice", tuple(registry.NORMALIZATIONS)),
    "task.init": _Key("he_normal", "init"),
    "task.init_scale": _Key(1.0, "float", low=0.0, low_open=True),
    "task.pooling": _Key("max", "choice", tuple(registry.POOLINGS)),
    "task.dropout": _Key(0.0, "float", low=0.0, high=1.0, high_open=True),
    "task.subset": _Key(0, "int", low=0),
    "task.valid_fraction": _Key(0.1, "float", **_FRACTION),
    "task.test_fraction": _Key(0.2, "float", **_FRACTION),
    "optimizer.factory": _Key(None, "str", optional=True),
    "optimizer.name": _Key("momentum", "choice", tuple(registry.OPTIMIZERS)),
    "optimizer.learning_rate": _Key(0.1, "float", low=0.0, low_open=True),
    "optimizer.momentum": _Key(None, "float", low=0.0, high=1.0, high_open=True, optional=True),
    "optimizer.clip_norm": _Key(None, "float", low=0.0, low_open=True, optional=True),
    "optimizer.weight_decay": _Key(0.0, "float", low=0.0),
    "schedule.name": _Key("constant", "choice", registry.SCHEDULES),
    "schedule.decay_rate": _Key(0.5, "float", low=0.0, low_open=True),
    "schedule.every": _Key(100, "int", low=1),
    "schedule.warmup_steps": _Key(0, "int", low=0),
    "schedule.min_value": _Key(0.0, "float", low=0.0),
    "schedule.alpha": _Key(0.0, "float", low=0.0, high=1.0),
    "train.steps": _Key(500, "int", low=1),
    "train.batch_size": _Key(128, "int", low=1),
    "train.eval_every": _Key(100, "int", low=1),
    "train.log_every": _Key(1, "int", low=1),
    "train.seed": _Key(0, "int", low=0),
    "train.batch_grouping": _Key("auto", "choice", ("auto", "pad", "split")),
    "train.max_trials_per_call": _Key("auto", "auto_int"),
    "train.execution": _Key("auto", "execution"),
    "train.precision": _Key(
        "float32", "choice", ("float32", "tensorfloat32", "bfloat16", "default")
    ),
    "augment.shift": _Key(0.0, "float", low=0.0),
    "augment.noise": _Key(0.0, "float", low=0.0),
    "augment.cutout": _Key(0.0, "float", low=0.0),
    "eval.batch_size": _Key(1024, "int", low=1),
    "halving.min_steps": _Key(None, "int", low=1, optional=True),
    "halving.eta": _Key(3.0, "float", low=1.0, low_open=True),
    "pbt.interval": _Key(None, "int", low=1, optional=True),
    "pbt.quantile": _Key(0.25, "float", low=0.0, high=0.5, low_open=True),
    "pbt.resample_probability": _Key(0.25, "float", low=0.0, high=1.0),
    "optuna.batch_size": _Key(8, "int", low=1),
    "optuna.rounds": _Key(4, "int", low=1),
    "optuna.sampler": _Key("tpe", "choice", registry.SAMPLERS),
    "select.metric": _Key(None, "str", optional=True),
    "select.mode": _Key(None, "choice", ("max", "min"), optional=True),
    "select.target": _Key(None, "float", optional=True),
    "checkpoint.every": _Key(0, "int", low=0),
    "checkpoint.max_to_keep": _Key(2, "int", low=1),
    "log.tensorboard": _Key(True, "bool"),
    "log.plots": _Key(True, "bool"),
    "parallel.devices": _Key("all", "auto_int"),
    "parallel.coordinator": _Key(None, "str", optional=True),
    "parallel.num_processes": _Key(None, "int", low=1, optional=True),
    "parallel.process_id": _Key(None, "int", low=0, optional=True),
}

#: Built-in keys whose values become traced per-trial arrays; every other key is structure.
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
    "augment.shift",
    "augment.noise",
    "augment.cutout",
    "train.batch_size",
    "train.seed",
)


def numeric_keys(base: Mapping[str, Any]) -> tuple[str, ...]:
    """The numeric keys of a configuration: the built-in ones and every ``hparams.*`` key."""
    return NUMERIC_KEYS + tuple(sorted(k for k in base if is_hparam(k)))


def is_hparam(key: str) -> bool:
    return key.startswith(HPARAMS + ".") and len(key) > len(HPARAMS) + 1


def unknown(key: str, allowed: Sequence[str], where: str = "configuration key") -> ConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if key.startswith("tune."):
        hint = " (the [tune] table is read by `jaxtune tune`, not by `jaxtune sweep`)"
    return ConfigError(f"unknown {where} {key!r}{hint} Allowed: {', '.join(allowed)}")


def _check_hparam(key: str, value: Any) -> int | float:
    name = key[len(HPARAMS) + 1 :]
    if not name.isidentifier():
        raise ConfigError(f"{key} is invalid: a user hyperparameter name must be an identifier")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(
            f"{key} = {value!r} is invalid: expected a finite number (user hyperparameters are "
            "numeric and traced; structure belongs in the task factory's configuration)"
        )
    return value


def check_value(key: str, value: Any) -> Any:
    """Validate (and normalise) one value for a dotted key; raise ``ConfigError`` if invalid."""
    if is_hparam(key):
        return _check_hparam(key, value)
    if key not in KEYS:
        raise unknown(key, list(KEYS))
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
    if spec.kind == "execution":
        from jaxtune.engine.execution import parse_form

        if value != "auto":
            parse_form(value, key)
        return value
    if spec.kind == "auto_int":
        if value in ("auto", "all"):
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
