"""Binding a group's structure to what it trains: the task, the optimizer and their step.

The task is, in order of precedence: ``run_sweep(task=...)`` (a :class:`jaxtune.Task`, or a
callable that receives the group's structure and returns one), the ``task.factory`` import path,
or the built-in task of ``task.dataset`` / ``task.model`` (with the ``model=`` / ``dataset=``
conveniences). The optimizer is ``run_sweep(optimizer=...)`` (``optimizer(hp) ->
optax.GradientTransformation``), the ``optimizer.factory`` import path, or the configured chain.
Every task is checked against its contract (:func:`jaxtune.tasks.check_task`) before anything is
compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from jaxtune import config as config_lib
from jaxtune import registry
from jaxtune.augment import AUGMENT_KEYS
from jaxtune.config import SweepConfig
from jaxtune.engine.step import TrainStep, make_train_step
from jaxtune.engine.trials import hp_arrays
from jaxtune.errors import ConfigError
from jaxtune.tasks import Task, check_task

__all__ = ["Binder", "Binding"]

#: Structure keys the built-in task depends on.
_TASK_KEYS = (
    "task.dataset",
    "task.model",
    "task.widths",
    "task.activation",
    "task.normalization",
    "task.init",
    "task.pooling",
    "task.dropout",
    "task.dtype",
    "task.subset",
    "task.valid_fraction",
    "task.test_fraction",
)


class Binding(NamedTuple):
    """What a group's structure binds to: its task, optimizer and per-trial step functions."""

    task: Task
    step: TrainStep  # the pure per-trial init / train_step / evaluate
    cache_key: tuple  # what a compiled program depends on besides shapes and the form
    optimizer: Callable  # optimizer(hp) -> optax.GradientTransformation
    schedule: Callable | None  # schedule(hp) -> learning rate, or None
    rng: bool  # whether apply gets a dropout key
    metric_names: tuple[str, ...]  # what the task's metrics return


class Binder:
    """Turns a group's structure into a :class:`Binding` (task, step functions, cache key).

    Args:
      cfg: the sweep configuration.
      task: a :class:`jaxtune.Task` or ``callable(structure) -> Task``, or None.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation``, or None.
      model, dataset: the built-in task's conveniences (ignored when a task is given).
      search: folders tried first when importing ``task.factory`` / ``optimizer.factory``.
    """

    def __init__(
        self,
        cfg: SweepConfig,
        *,
        task: Task | Callable[[dict[str, Any]], Task] | None = None,
        optimizer: Callable[[Mapping[str, Any]], Any] | None = None,
        model: Any = None,
        dataset: Any = None,
        search: Sequence[str | Path] = (),
    ) -> None:
        base = cfg.base
        self.numeric = config_lib.numeric_keys(base)
        self.where = "task"
        if task is None and base["task.factory"]:
            task = registry.import_factory(base["task.factory"], "task.factory", search=search)
            self.where = f"task.factory {base['task.factory']!r}"
        self.opt_where, self._optimizer_checked = "optimizer", False
        if optimizer is None and base["optimizer.factory"]:
            optimizer = registry.import_factory(
                base["optimizer.factory"], "optimizer.factory", search=search
            )
            self.opt_where = f"optimizer.factory {base['optimizer.factory']!r}"
        if task is not None and not callable(task) and not isinstance(task, Task):
            raise ConfigError(
                "task must be a jaxtune.Task or a callable returning one, got "
                f"{type(task).__name__}"
            )
        if optimizer is not None and not callable(optimizer):
            raise ConfigError(
                "optimizer must be a callable hp -> optax.GradientTransformation, got "
                f"{type(optimizer).__name__}"
            )
        self.task, self.optimizer = task, optimizer
        self.model, self.dataset = model, dataset
        self._base = base
        self._tasks: dict[tuple, Task] = {}
        self._reads: dict[tuple, _Reads] = {}  # what each factory call read of its structure
        self._checked: dict[int, list[str]] = {}
        self.metric_names: list[str] | None = None

    def task_for(
        self, structure: dict[str, Any], trials: list[dict[str, Any]]
    ) -> tuple[Task, tuple]:
        """The task of a structure group (not yet checked) and its identity."""
        if isinstance(self.task, Task):
            return self.task, _identity(self.task)
        if self.task is not None:
            key = tuple(sorted(structure.items(), key=lambda kv: kv[0]))
            if key not in self._tasks:
                given = _Reads(structure)
                try:
                    self._tasks[key] = self.task(given)
                except ValueError as e:  # a model builder refusing its arguments
                    shown = ", ".join(
                        f"{k} = {v!r}"
                        for k, v in key
                        if k.startswith("task.") and k != "task.factory" and _set(k, v)
                    )
                    raise ConfigError(
                        f"{self.where} refused its configuration ({shown}): {e}"
                    ) from e
                self._reads[key] = given
            t = self._tasks[key]
            if not isinstance(t, Task):
                raise ConfigError(
                    f"{self.where} must return a jaxtune.Task, got {type(t).__name__}"
                )
            return t, _identity(t)
        augment = any(t.get(k, 0.0) for t in trials for k in AUGMENT_KEYS)
        key = (*((k, structure[k]) for k in _TASK_KEYS), augment)
        if key not in self._tasks:
            self._tasks[key] = registry.build_task(
                structure, model=self.model, data=self.dataset, augment=augment
            )
        model_id = None if self.model is None else id(self.model)
        return self._tasks[key], ("builtin", key, model_id)

    def optimizer_for(
        self, structure: dict[str, Any], trials: list[dict[str, Any]]
    ) -> tuple[Callable, Callable | None, tuple]:
        """``(optimizer(hp), schedule(hp) or None, identity)`` of a structure group."""
        if self.optimizer is not None:
            return self.optimizer, None, ("user", id(self.optimizer))
        use_wd = any(t["optimizer.weight_decay"] != 0.0 for t in trials)

        def optimizer(hp, flat=structure, use_wd=use_wd):
            return registry.build_optimizer(flat, hp, weight_decay=use_wd)

        def schedule(hp, flat=structure):
            return registry.build_schedule(flat, hp)

        name = structure["schedule.name"]
        steps = structure["train.steps"] if name in registry.SCHEDULES_OF_STEPS else None
        return optimizer, schedule, ("config", structure["optimizer.name"], name, steps, use_wd)

    def __call__(self, structure: dict[str, Any], trials: list[dict[str, Any]]) -> Binding:
        task, task_id = self.task_for(structure, trials)
        hp0 = {k: v[0] for k, v in hp_arrays(trials[:1], self.numeric).items()}
        if id(task) not in self._checked:
            self._checked[id(task)] = check_task(task, hp0, where=self.where)
        names = self._checked[id(task)]
        self._check_effect(task, structure, trials)
        if self.metric_names is None:
            self.metric_names = names
        optimizer, schedule, opt_id = self.optimizer_for(structure, trials)
        if self.optimizer is not None:
            self._check_optimizer(hp0)
        rng = task_id[0] != "builtin" or structure["task.dropout"] > 0
        norm = structure["train.grad_norm"]
        step = make_train_step(task, optimizer, schedule=schedule, rng=rng, grad_norm=norm)
        present = tuple(k in hp0 for k in ("optimizer.momentum", "optimizer.clip_norm"))
        cache_key = (task_id, opt_id, rng, norm, present, tuple(sorted(hp0)))
        return Binding(task, step, cache_key, optimizer, schedule, rng, tuple(names))

    def _check_optimizer(self, hp0: Mapping[str, Any]) -> None:
        """A user optimizer must build an optax chain from ``hp`` (checked once, before
        anything compiles)."""
        if self._optimizer_checked:
            return
        tx = self.optimizer(hp0)  # its own errors keep their traceback
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise ConfigError(
                f"{self.opt_where} must return an optax.GradientTransformation (with init and "
                f"update), got {type(tx).__name__}"
            )
        self._optimizer_checked = True

    def _check_effect(self, task: Task, structure: dict[str, Any], trials: list[dict]) -> None:
        """Refuse settings a user task would ignore: a structure key of the built-in task that
        the factory never read, set away from its default, and augmentation strengths for a
        task without an ``augment`` function. (Checked after the task's functions first ran,
        so that a factory reading its structure lazily counts.)"""
        if self.task is None:
            return
        if isinstance(self.task, Task):  # built already: trials varying a task.* key differ
            for k in _TASK_KEYS:  # in nothing (its base value may say how it was built)
                if structure.get(k) != self._base.get(k):
                    raise ConfigError(
                        f"{k} = {structure[k]!r} has no effect: the given Task is built "
                        "already, so trials that vary it train the same task; vary it in a "
                        "factory that reads it"
                    )
        else:
            given = self._reads[tuple(sorted(structure.items(), key=lambda kv: kv[0]))]
            for k in _TASK_KEYS:
                if k not in given.read and _set(k, structure.get(k)):
                    reads = sorted(r for r in given.read if r.startswith("task."))
                    raise ConfigError(
                        f"{k} = {structure[k]!r} has no effect: {self.where} does not read it "
                        f"(it reads {', '.join(reads) if reads else 'no task.* key'}); leave "
                        "it unset, or read it in the factory"
                    )
        if task.augment is None:
            who = (
                "the given Task"
                if isinstance(self.task, Task)
                else f"the Task {self.where} returns"
            )
            for k in AUGMENT_KEYS:
                if any(t.get(k, 0.0) for t in trials):
                    raise ConfigError(
                        f"{k} has no effect: {who} has no augment function (give it one "
                        "reading hp['augment.*'], or leave the strengths at 0)"
                    )

    def names_of(self, task: Task) -> list[str]:
        """The metric names of a task this binder checked."""
        return self._checked[id(task)]


class _Reads(dict):
    """A task factory's structure that records which keys the factory reads (every key once
    it is iterated or copied)."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def _everything(self) -> None:
        self.read.update(super().keys())

    def __iter__(self) -> Any:
        self._everything()
        return super().__iter__()

    def keys(self) -> Any:
        self._everything()
        return super().keys()

    def items(self) -> Any:
        self._everything()
        return super().items()

    def values(self) -> Any:
        self._everything()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._everything()
        return dict(super().items())


def _set(key: str, value: Any) -> bool:
    """Whether a configuration key holds other than its default."""
    spec = config_lib.KEYS.get(key)
    return spec is None or value != spec.default


def _identity(task: Task) -> tuple:
    return (
        "task",
        *(id(f) for f in (task.init, task.apply, task.loss, task.metrics, task.augment)),
    )
