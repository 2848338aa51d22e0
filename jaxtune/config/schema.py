"""Every configuration key: its default, what it allows, and whether it is numeric (traced).

Each key is a :class:`jaxtune.spec.KeySpec`: it describes its allowed values and checks a value.

Allowed names (datasets, models, activations, optimizers, schedules...) come from
:mod:`jaxtune.registry`, the one table of each kind. Keys under ``[hparams]`` are the user's own
numeric hyperparameters: any name, a number as value, traced and sweepable like a learning rate.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtune import registry
from jaxtune.errors import ConfigError
from jaxtune.spec import KeySpec

__all__ = ["HPARAMS", "KEYS", "NUMERIC_KEYS", "check_value", "numeric_keys"]

HPARAMS = "hparams"
"""The section of user hyperparameters: ``hparams.<name> = <number>``."""


_FRACTION = dict(low=0.0, high=1.0, low_open=True, high_open=True)

EXECUTION_TEXT = (
    "'auto' or LOOP/TRIALS with LOOP one of scan, scan:M (either may end in '(unroll=U)'), "
    "unroll, unroll:M, host and TRIALS one of vmap, unroll, map, map:K (e.g. 'scan/vmap', "
    "'host/unroll', 'scan:16/map:4', 'scan(unroll=4)/unroll')"
)


def _execution(value: Any) -> str:
    """``train.execution``: ``"auto"`` or a form :func:`jaxtune.engine.execution.parse_form`
    reads."""
    from jaxtune.engine.execution import parse_form

    if value != "auto":
        try:
            parse_form(value)
        except ConfigError:
            raise ValueError("") from None
    return value


#: Every configuration key (other than ``hparams.*``), its default and its allowed values.
KEYS: dict[str, KeySpec] = {
    "task.factory": KeySpec("str", None, optional=True),
    "task.dataset": KeySpec("choice", "digits", tuple(registry.DATASETS)),
    "task.model": KeySpec("choice", "mlp", tuple(registry.MODELS)),
    "task.widths": KeySpec(
        "shape", None, optional=True, text="a list of positive integers, e.g. [256, 256]"
    ),
    "task.activation": KeySpec("choice", "relu", tuple(registry.ACTIVATIONS)),
    "task.normalization": KeySpec("choice", "none", tuple(registry.NORMALIZATIONS)),
    "task.init": KeySpec("init", "he_normal"),
    "task.init_scale": KeySpec("float", 1.0, low=0.0, low_open=True),
    "task.pooling": KeySpec("choice", "max", tuple(registry.POOLINGS)),
    "task.dropout": KeySpec("float", 0.0, low=0.0, high=1.0, high_open=True),
    "task.dtype": KeySpec("choice", "float32", tuple(registry.DTYPES)),
    "task.subset": KeySpec("int", 0, low=0),
    "task.valid_fraction": KeySpec("float", 0.1, **_FRACTION),
    "task.test_fraction": KeySpec("float", 0.2, **_FRACTION),
    "optimizer.factory": KeySpec("str", None, optional=True),
    "optimizer.name": KeySpec("choice", "momentum", tuple(registry.OPTIMIZERS)),
    "optimizer.learning_rate": KeySpec("float", 0.1, low=0.0, low_open=True),
    "optimizer.momentum": KeySpec("float", None, low=0.0, high=1.0, high_open=True, optional=True),
    "optimizer.clip_norm": KeySpec("float", None, low=0.0, low_open=True, optional=True),
    "optimizer.weight_decay": KeySpec("float", 0.0, low=0.0),
    "schedule.name": KeySpec("choice", "constant", registry.SCHEDULES),
    "schedule.decay_rate": KeySpec("float", 0.5, low=0.0, low_open=True),
    "schedule.every": KeySpec("int", 100, low=1),
    "schedule.warmup_steps": KeySpec("int", 0, low=0),
    "schedule.min_value": KeySpec("float", 0.0, low=0.0),
    "schedule.alpha": KeySpec("float", 0.0, low=0.0, high=1.0),
    "train.steps": KeySpec("int", 500, low=1),
    "train.batch_size": KeySpec("int", 128, low=1),
    "train.eval_every": KeySpec("int", 100, low=1),
    "train.seed": KeySpec("int", 0, low=0),
    "train.batch_grouping": KeySpec("choice", "auto", ("auto", "pad", "split")),
    "train.max_trials_per_call": KeySpec("auto_int", "auto", ("auto",)),
    "train.execution": KeySpec("custom", "auto", text=EXECUTION_TEXT, parser=_execution),
    "train.precision": KeySpec(
        "choice", "float32", ("float32", "tensorfloat32", "bfloat16", "default")
    ),
    "train.grad_norm": KeySpec("bool", True),
    "augment.shift": KeySpec("float", 0.0, low=0.0),
    "augment.noise": KeySpec("float", 0.0, low=0.0),
    "augment.cutout": KeySpec("float", 0.0, low=0.0),
    "eval.batch_size": KeySpec("int", 1024, low=1),
    "data.placement": KeySpec("choice", "auto", ("auto", "device", "host")),
    "data.device_bytes": KeySpec("int", None, low=1, optional=True),
    "halving.min_steps": KeySpec("int", None, low=1, optional=True),
    "halving.eta": KeySpec("float", 3.0, low=1.0, low_open=True),
    "pbt.interval": KeySpec("int", None, low=1, optional=True),
    "pbt.quantile": KeySpec("float", 0.25, low=0.0, high=0.5, low_open=True),
    "pbt.resample_probability": KeySpec("float", 0.25, low=0.0, high=1.0),
    "optuna.batch_size": KeySpec("int", 8, low=1),
    "optuna.rounds": KeySpec("int", 4, low=1),
    "optuna.sampler": KeySpec("choice", "tpe", registry.SAMPLERS),
    "select.metric": KeySpec("str", None, optional=True),
    "select.mode": KeySpec("choice", None, ("max", "min"), optional=True),
    "select.target": KeySpec("float", None, optional=True),
    "checkpoint.every": KeySpec("int", 0, low=0),
    "checkpoint.max_to_keep": KeySpec("int", 2, low=1),
    "log.tensorboard": KeySpec("bool", True),
    "log.plots": KeySpec("bool", True),
    "parallel.devices": KeySpec("auto_int", "all", ("all", "auto")),
    "parallel.coordinator": KeySpec("str", None, optional=True),
    "parallel.num_processes": KeySpec("int", None, low=1, optional=True),
    "parallel.process_id": KeySpec("int", None, low=0, optional=True),
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


def _finite_number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("")
    return value


#: The value of every ``hparams.*`` key.
HPARAM = KeySpec(
    "custom",
    text="a finite number (user hyperparameters are numeric and traced; structure belongs in "
    "the task factory's configuration)",
    parser=_finite_number,
)


def _check_hparam(key: str, value: Any) -> int | float:
    if not key[len(HPARAMS) + 1 :].isidentifier():
        raise ConfigError(f"{key} is invalid: a user hyperparameter name must be an identifier")
    return HPARAM.check(key, value)


def check_value(key: str, value: Any) -> Any:
    """Validate (and normalise) one value for a dotted key; raise ``ConfigError`` if invalid."""
    if is_hparam(key):
        return _check_hparam(key, value)
    if key not in KEYS:
        raise unknown(key, list(KEYS))
    return KEYS[key].check(key, value)
