"""The entries of the ``[bench]`` table: submissions and workloads, their keys and checks.

A submission is an optimizer (a built-in name or an ``optimizer.factory`` path) with its own
search space; a workload is a task factory with a validation metric, a target and a step
budget (a built-in :data:`jaxtune.workloads.WORKLOADS` name, optionally with overrides, or a
user factory). Every key is a :class:`jaxtune.spec.KeySpec` (:data:`SUBMISSION_KEYS`,
:data:`WORKLOAD_KEYS`); a bad value fails naming its key.

Example:
    >>> w = parse_workloads([{"name": "digits_cnn", "steps": 100}], {"train.eval_every": 100})
    >>> w[0].factory, w[0].steps, w[0].eval_every, w[0].target
    ('jaxtune.workloads.vision:digits_cnn', 100, 10, 0.945)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from jaxtune import registry
from jaxtune.config import check_value
from jaxtune.config.schema import unknown
from jaxtune.errors import ConfigError
from jaxtune.spec import KeySpec
from jaxtune.tasks import METRIC_MODES
from jaxtune.workloads import WORKLOADS, get_workload

__all__ = [
    "SUBMISSION_KEYS",
    "WORKLOADS_TEXT",
    "WORKLOAD_KEYS",
    "BenchWorkload",
    "Submission",
    "parse_submission",
    "parse_table",
    "parse_workloads",
]


def parse_table(value: Any) -> Mapping[str, Any]:
    """A TOML table (any mapping), for a ``"custom"`` :class:`KeySpec`; raises ValueError."""
    if not isinstance(value, Mapping):
        raise ValueError("")
    return value


_TABLE = dict(text="a table of dotted key -> value", parser=parse_table)

#: What ``bench.workloads`` allows, in words.
WORKLOADS_TEXT = (
    f"a non-empty list of workload names ({', '.join(WORKLOADS)}) or tables "
    "{ name, factory, metric, mode, target, steps, ... }, or a table of name -> table"
)

#: The keys of one submission (``bench.submissions.<name>.<key>``).
SUBMISSION_KEYS: dict[str, KeySpec] = {
    "optimizer": KeySpec("choice", None, tuple(registry.OPTIMIZERS), optional=True),
    "factory": KeySpec("str", None, optional=True),
    "space": KeySpec(
        "custom", text="a table of dotted key -> distribution, as sweep.space", parser=parse_table
    ),
    "set": KeySpec("custom", None, optional=True, **_TABLE),
}

_SUBMISSION_TEXT = "a table { optimizer = NAME or factory = 'module:function', space = {...} }"

#: The keys of one workload (``bench.workloads.<name>.<key>``).
WORKLOAD_KEYS: dict[str, KeySpec] = {
    "name": KeySpec("str", None),
    "factory": KeySpec("str", None, optional=True),
    "metric": KeySpec("str", None, optional=True),
    "mode": KeySpec("choice", None, ("max", "min"), optional=True),
    "target": KeySpec("float", None, optional=True),
    "steps": KeySpec("int", None, low=1, optional=True),
    "eval_every": KeySpec("int", None, low=1, optional=True),
    "batch_size": KeySpec("int", None, low=1, optional=True),
    "set": KeySpec("custom", None, optional=True, **_TABLE),
}

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_name(where: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{where}: the name {name!r} is invalid: expected letters, digits, '_', '-' and '.' "
            "(it names a folder)"
        )
    return name


#: Keys the benchmark owns: a workload sets them by its own fields (a ``set`` would change
#: the budget or target its numbers are reported against; the studies' seeds are the bench's).
_WORKLOAD_FIELDS = {
    "task.factory": "factory",
    "train.steps": "steps",
    "train.eval_every": "eval_every",
    "train.batch_size": "batch_size",
    "select.metric": "metric",
    "select.mode": "mode",
    "select.target": "target",
}


def _owned(key: str, workload: bool) -> str | None:
    """Why a ``set`` may not hold ``key`` (None: it may)."""
    if key == "train.seed":
        return "the benchmark seeds every study itself (bench.seed)"
    if workload and key in _WORKLOAD_FIELDS:
        return f"it is the workload's {_WORKLOAD_FIELDS[key]!r}"
    if not workload and (key in _WORKLOAD_FIELDS or key.startswith("task.")):
        if key == "train.batch_size":
            return None  # a submission may choose its batch size
        return "the workload owns it: a submission may not change the task, budget or target"
    return None


def _dotted(where: str, table: Mapping[str, Any] | None, *, workload: bool) -> dict[str, Any]:
    """A ``set`` table's dotted keys, each value checked by the configuration's own spec."""
    out = {}
    for key, value in (table or {}).items():
        if key.split(".")[0] in ("sweep", "bench"):
            raise ConfigError(f"{where}[{key!r}] is invalid: set search keys in space")
        why = _owned(key, workload)
        if why is not None:
            raise ConfigError(f"{where}[{key!r}] is invalid: {why}")
        try:
            out[key] = check_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return out


@dataclasses.dataclass(frozen=True)
class Submission:
    """One submission: an optimizer (a built-in name or a factory) and its search space.

    Attributes:
      name: the key under ``bench.submissions``.
      optimizer: a :data:`jaxtune.OPTIMIZERS` name, or None with ``factory``.
      factory: ``"module:function"`` returning ``optax.GradientTransformation`` from ``hp``.
      space: ``sweep.space`` of its studies.
      fixed: dotted keys set in every sweep (``set``), e.g. a fixed momentum or ``hparams.*``.
    """

    name: str
    optimizer: str | None
    factory: str | None
    space: Mapping[str, Any]
    fixed: Mapping[str, Any]

    def keys(self) -> dict[str, Any]:
        chosen = {"optimizer.factory": self.factory}
        if self.optimizer is not None:
            chosen["optimizer.name"] = self.optimizer
        return {**chosen, **self.fixed}


@dataclasses.dataclass(frozen=True)
class BenchWorkload:
    """One workload: a task factory, a validation target and a step budget.

    Attributes:
      name: the built-in workload's name, or the user's.
      factory: the ``task.factory`` import path.
      metric, mode, target: ``select.*``: the target the time is measured to.
      steps, eval_every, batch_size: the budget, the evaluation cadence (the resolution of the
        time to target) and the batch size (None: the base configuration's).
      fixed: further dotted keys (``set``), e.g. ``task.subset``.
    """

    name: str
    factory: str
    metric: str
    mode: str
    target: float
    steps: int
    eval_every: int
    batch_size: int | None
    fixed: Mapping[str, Any]

    def keys(self) -> dict[str, Any]:
        out = {
            "task.factory": self.factory,
            "train.steps": self.steps,
            "train.eval_every": self.eval_every,
            "select.metric": self.metric,
            "select.mode": self.mode,
            "select.target": self.target,
        }
        if self.batch_size is not None:
            out["train.batch_size"] = self.batch_size
        return {**out, **self.fixed}


def parse_submission(name: str, table: Any) -> Submission:
    where = f"bench.submissions.{_check_name('bench.submissions', name)}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} = {table!r} is invalid: expected {_SUBMISSION_TEXT}")
    for key in table:
        if key not in SUBMISSION_KEYS:
            raise unknown(key, list(SUBMISSION_KEYS), f"key of {where}:")
    if "space" not in table:
        raise ConfigError(f"{where}.space is needed: {SUBMISSION_KEYS['space'].describe()}")
    v = {k: spec.check(f"{where}.{k}", table.get(k)) for k, spec in SUBMISSION_KEYS.items()}
    if (v["optimizer"] is None) == (v["factory"] is None):
        raise ConfigError(
            f"{where} needs exactly one of optimizer (one of {', '.join(registry.OPTIMIZERS)}) "
            "or factory ('module:function')"
        )
    space = v["space"]
    if not space:
        raise ConfigError(f"{where}.space is empty: give at least one distribution")
    fixed = _dotted(f"{where}.set", v["set"], workload=False)
    return Submission(name, v["optimizer"], v["factory"], dict(space), fixed)


def _workload(where: str, item: Any, base: Mapping[str, Any]) -> BenchWorkload:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, Mapping):
        raise ConfigError(
            f"{where} = {item!r} is invalid: expected a workload name or a table "
            "{ name, factory, metric, mode, target, steps, eval_every, batch_size, set }"
        )
    for key in item:
        if key not in WORKLOAD_KEYS:
            raise unknown(key, list(WORKLOAD_KEYS), f"key of {where}:")
    if "name" not in item:
        raise ConfigError(f"{where}.name is needed: the workload's name")
    v = {k: spec.check(f"{where}.{k}", item.get(k)) for k, spec in WORKLOAD_KEYS.items()}
    name = _check_name(f"{where}.name", v["name"])
    if where.endswith("]"):
        where = f"bench.workloads.{name}"
    if v["factory"] is None:
        if name not in WORKLOADS:
            raise ConfigError(
                f"{where} is invalid: unknown workload {name!r}: expected one of "
                f"{', '.join(map(repr, WORKLOADS))}, or a table with a factory"
            )
        w = get_workload(name)
        own = dict(factory=w.factory, metric=w.metric, mode=w.mode, target=w.target)
        own.update(steps=w.steps, eval_every=w.eval_every, batch_size=w.batch_size)
        if v["metric"] not in (None, w.metric) and v["target"] is None:
            raise ConfigError(f"{where}.target is needed with a metric other than {w.metric!r}")
        v = {k: own[k] if v.get(k) is None and k in own else v[k] for k in WORKLOAD_KEYS}
    for key in ("metric", "target", "steps"):
        if v[key] is None:
            raise ConfigError(
                f"{where}.{key} is needed for a workload with a factory: "
                f"{WORKLOAD_KEYS[key].describe().replace(' or null (unset)', '')}"
            )
    metric = check_value("select.metric", v["metric"])
    if not metric.startswith("valid."):
        raise ConfigError(
            f"{where}.metric = {metric!r} is invalid: expected 'valid.loss' or 'valid.<metric>' "
            "(the target is a validation target)"
        )
    mode = v["mode"] or METRIC_MODES.get(metric.split(".", 1)[1])
    if mode is None:
        raise ConfigError(f"{where}.mode is needed for metric {metric!r}: expected 'max' or 'min'")
    eval_every = v["eval_every"] or base["train.eval_every"]
    fixed = _dotted(f"{where}.set", v["set"], workload=True)
    return BenchWorkload(
        name,
        v["factory"],
        metric,
        mode,
        v["target"],
        v["steps"],
        eval_every,
        v["batch_size"],
        fixed,
    )


def parse_workloads(value: Any, base: Mapping[str, Any]) -> tuple[BenchWorkload, ...]:
    if isinstance(value, Mapping):
        for k, t in value.items():
            if t is not None and not isinstance(t, Mapping):
                raise ConfigError(f"bench.workloads.{k} = {t!r} is invalid: expected a table")
        items = [(f"bench.workloads.{k}", {"name": k, **(t or {})}) for k, t in value.items()]
    else:
        items = [(f"bench.workloads[{i}]", t) for i, t in enumerate(value)]
    out = tuple(_workload(where, t, base) for where, t in items)
    names = [w.name for w in out]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"bench.workloads names {name!r} twice: expected unique names")
    if not out:
        raise ConfigError("bench.workloads is empty: give at least one workload")
    return out
