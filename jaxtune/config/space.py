"""Search spaces: which keys vary and how, expanded into the overrides of every trial.

``grid`` is a cartesian product, ``random`` and ``quasi_random`` (scrambled Halton from
``scipy.stats.qmc``) sample ``sweep.space`` distributions, ``list`` gives trials explicitly;
``sweep.seeds = k`` repeats every setting with ``k`` seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.config.dotted import dotted
from jaxtune.config.schema import KEYS, check_value, is_hparam, unknown
from jaxtune.errors import ConfigError
from jaxtune.formatting import fmt

__all__ = ["METHODS", "expand", "trial_name"]

METHODS = ("grid", "random", "quasi_random", "list")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")

#: Keys that cannot vary inside one sweep (all trials share one step clock, data and selection).
UNSWEEPABLE = (
    "train.steps",
    "train.eval_every",
    "train.max_trials_per_call",
    "train.batch_grouping",
    "train.execution",
    "train.precision",
    "train.grad_norm",
    "task.factory",
    "task.dataset",
    "task.subset",
    "task.valid_fraction",
    "task.test_fraction",
)
_GLOBAL_SECTIONS = (
    "checkpoint",
    "log",
    "parallel",
    "select",
    "eval",
    "data",
    "halving",
    "pbt",
    "optuna",
)

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


def freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def check_sweepable(key: str, where: str, base: Mapping[str, Any]) -> None:
    if is_hparam(key):
        if key not in base:
            raise ConfigError(
                f"{key} (in {where}) is not defined: add it under [hparams] with a default value"
            )
        return
    if key not in KEYS:
        raise unknown(key, list(KEYS), f"key in {where}:")
    if key in UNSWEEPABLE or key.split(".")[0] in _GLOBAL_SECTIONS:
        raise ConfigError(f"{key} cannot vary within one sweep (in {where}); set it in the base")


def check_grid(grid: Any, base: Mapping[str, Any]) -> dict[str, tuple]:
    if not isinstance(grid, Mapping):
        raise ConfigError("sweep.grid must be a table of dotted key -> list of values")
    out = {}
    for key, values in grid.items():
        check_sweepable(key, "sweep.grid", base)
        if isinstance(values, str) or not isinstance(values, Sequence):
            values = [values]
        if not values:
            raise ConfigError(f"sweep.grid[{key!r}] is empty: give at least one value")
        out[key] = tuple(freeze(check_value(key, v)) for v in values)
    return out


def check_space(space: Any, base: Mapping[str, Any]) -> dict[str, dict]:
    if not isinstance(space, Mapping):
        raise ConfigError("sweep.space must be a table of dotted key -> distribution")
    out = {}
    for key, spec in space.items():
        check_sweepable(key, "sweep.space", base)
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
        if dist not in DISTRIBUTIONS:
            raise ConfigError(
                f"sweep.space[{key!r}].distribution = {dist!r} is invalid: expected one of "
                f"{', '.join(DISTRIBUTIONS)}"
            )
        if dist == "choice":
            values = spec.get("choice")
            if not isinstance(values, Sequence) or isinstance(values, str) or not values:
                raise ConfigError(f"sweep.space[{key!r}].choice must be a non-empty list")
            spec["choice"] = [plain(check_value(key, v)) for v in values]
        else:
            for bound in ("low", "high"):
                v = spec.get(bound)
                if not isinstance(v, int | float) or isinstance(v, bool):
                    raise ConfigError(f"sweep.space[{key!r}].{bound} must be a number")
            low, high = spec["low"], spec["high"]
            if not low < high:
                raise ConfigError(f"sweep.space[{key!r}]: low ({low}) must be < high ({high})")
            if dist == "log_uniform" and low <= 0:
                raise ConfigError(f"sweep.space[{key!r}]: log_uniform needs low > 0")
            if dist != "int_uniform" and not is_hparam(key) and KEYS[key].kind == "int":
                raise ConfigError(
                    f"sweep.space[{key!r}].distribution = {dist!r} is invalid for an integer "
                    "key: expected 'int_uniform' or 'choice'"
                )
            if dist == "int_uniform":
                spec["low"], spec["high"] = int(low), int(high)
            check_value(key, spec["low"])
            check_value(key, spec["high"])
        out[key] = spec
    return out


def check_trials(trials: Any, base: Mapping[str, Any]) -> tuple:
    if isinstance(trials, str) or not isinstance(trials, Sequence):
        raise ConfigError("sweep.trials must be a list of tables of dotted key -> value")
    out = []
    for i, t in enumerate(trials):
        if not isinstance(t, Mapping):
            raise ConfigError(f"sweep.trials[{i}] must be a table of dotted key -> value")
        flat = dotted(t, leaves=KEYS)
        for key, value in flat.items():
            check_sweepable(key, f"sweep.trials[{i}]", base)
            flat[key] = freeze(check_value(key, value))
        out.append(flat)
    return tuple(out)


def sample_one(spec: Mapping[str, Any], u: float) -> Any:
    """The value of a ``sweep.space`` distribution at quantile ``u`` in [0, 1)."""
    dist = spec["distribution"]
    if dist == "choice":
        values = spec["choice"]
        return freeze(values[min(int(u * len(values)), len(values) - 1)])
    low, high = spec["low"], spec["high"]
    if dist == "uniform":
        return float(low + u * (high - low))
    if dist == "log_uniform":
        return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
    return int(min(low + math.floor(u * (high - low + 1)), high))


def expand(
    method: str,
    *,
    grid: Mapping[str, tuple],
    space: Mapping[str, Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]],
    num_trials: int | None,
    seeds: int,
    seed: int,
    base_seed: int,
) -> list[dict[str, Any]]:
    """The overrides of every trial, in order (seeds vary fastest)."""
    if method == "grid":
        keys = list(grid)
        settings = [dict(zip(keys, c, strict=True)) for c in itertools.product(*grid.values())]
    elif method == "list":
        settings = [dict(t) for t in trials]
    else:
        keys = list(space)
        if method == "random":
            points = np.random.default_rng(seed).random((num_trials, len(keys)))
        else:
            from scipy.stats import qmc

            points = qmc.Halton(d=len(keys), scramble=True, seed=seed).random(num_trials)
        settings = [
            {k: sample_one(space[k], float(p[j])) for j, k in enumerate(keys)} for p in points
        ]
    if seeds > 1:
        settings = [
            {**s, "train.seed": s.get("train.seed", base_seed) + i}
            for s in settings
            for i in range(seeds)
        ]
    return settings


def trial_name(hparams: Mapping[str, Any]) -> str:
    """A short, filesystem-safe name such as ``lr=0.01,bs=32,seed=1``.

    Example:
        >>> trial_name({"optimizer.learning_rate": 0.01, "hparams.label_smoothing": 0.1})
        'lr=0.01,label_smoothing=0.1'
    """
    if not hparams:
        return "base"
    parts = []
    for key, value in hparams.items():
        parts.append(f"{_SHORT.get(key, key.split('.')[-1])}={fmt(value)}")
    return ",".join(parts).replace("/", "_").replace(" ", "").replace(":", "_")
