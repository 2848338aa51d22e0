"""What a check examines: one trial of a configuration or of a user task, and its result type.

A :class:`Subject` is the base trial of a configuration, bound the way the sweep engine binds it
(:class:`jaxtune.engine.bind.Binder`): the same task (built-in, ``task.factory`` or a
:class:`jaxtune.Task`), the same optimizer factory, the same numeric hyperparameters and the same
key rule. Every check trains through the public per-trial step
(:func:`jaxtune.make_train_step`), so a diagnosis is about exactly what a sweep would run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import config as config_lib
from jaxtune import data as data_lib
from jaxtune.config import SweepConfig
from jaxtune.engine.bind import Binder
from jaxtune.engine.step import TrainStep, make_train_step, trial_keys
from jaxtune.engine.trials import hp_arrays, structure_of
from jaxtune.errors import ConfigError, TaskError
from jaxtune.report import figures
from jaxtune.tasks import Task

__all__ = ["Check", "Subject", "make_subject"]


def require_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, or a ``ConfigError`` naming ``name`` when it is not an integer
    ``>= minimum`` (a check's step budget, a synthetic net's depth or width)."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} = {value!r} is invalid: expected an integer >= {minimum}")
    return int(value)


def require_lrs(name: str, lrs: Sequence[Any]) -> list[float]:
    """``lrs`` as floats, or a ``ConfigError`` naming ``name`` unless it holds one or more
    learning rates, each finite and > 0."""
    try:
        values = [float(x) for x in lrs]
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(
            f"{name} = {list(lrs)!r} is invalid: expected one or more learning rates, each a "
            "finite number > 0"
        )
    return values


@dataclasses.dataclass
class Check:
    """The common part of every check's result: a verdict, one line saying why, a report."""

    passed: bool
    reason: str

    #: ``True`` when the check could not apply to the task (then ``passed`` is True).
    skipped: bool = dataclasses.field(default=False, kw_only=True)
    name: str = dataclasses.field(default="check", kw_only=True)

    @property
    def mark(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")

    def lines(self) -> list[str]:
        """Detail lines under the verdict (override)."""
        return []

    def report(self) -> str:
        return "\n".join([f"[{self.mark}] {self.name}: {self.reason}", *self.lines()])


@dataclasses.dataclass(frozen=True)
class Subject:
    """The base trial of a configuration, bound like a sweep binds it.

    Attributes:
      cfg: the configuration (with the check's overrides applied).
      structure: the flat configuration minus its numeric keys (what a task factory receives).
      task: the bound :class:`jaxtune.Task`.
      fns: its public step (:func:`jaxtune.make_train_step`).
      optimizer, schedule: the optimizer factory ``optimizer(hp)`` and the recorded schedule.
      hp: the trial's numeric hyperparameters (JAX scalars).
      key: the trial's root key ``PRNGKey(train.seed)``.
      task_source, optimizer_source: what the caller gave (for checks that run a sweep).
      metric_names: the task's metrics.
    """

    cfg: SweepConfig
    structure: dict[str, Any]
    task: Task
    fns: TrainStep
    optimizer: Callable[[Mapping[str, Any]], Any]
    schedule: Callable[[Mapping[str, Any]], Any] | None
    rng: bool
    hp: dict[str, jax.Array]
    key: jax.Array
    task_source: Any
    optimizer_source: Any
    metric_names: tuple[str, ...]

    @property
    def flat(self) -> dict[str, Any]:
        return dict(self.cfg.base)

    @property
    def fixed_task(self) -> bool:
        """A :class:`jaxtune.Task` was given: structural switches cannot rebuild it."""
        return isinstance(self.task_source, Task)

    def with_task(self, task: Task) -> Subject:
        """The same trial training another task (e.g. without augmentation)."""
        fns = make_train_step(task, self.optimizer, schedule=self.schedule, rng=self.rng)
        return dataclasses.replace(self, task=task, fns=fns)

    def batch(self, size: int, step: int = 0) -> tuple[Any, Any]:
        """The training batch of ``step`` by the engine's key rule (``size`` rows)."""
        n = data_lib.num_examples(self.task.data.train)
        data_key = trial_keys(self.key)[1]
        idx = np.asarray(data_lib.batch_indices(data_key, step, min(size, n), n))
        return data_lib.stack_batches(self.task.data.train, idx)

    def labels(self) -> np.ndarray | None:
        """The training targets when they are integer class labels ``[N]``, else None."""
        train = self.task.data.train
        if data_lib.is_host_source(train):
            try:
                targets = data_lib.as_source(train).part(1)
            except TaskError:  # one source of (inputs, targets) items: not read whole
                return None
            y = targets.gather(np.arange(len(targets)))
        else:
            y = train[1]
        is_array = isinstance(y, np.ndarray | jax.Array) and np.ndim(y) == 1
        if is_array and np.issubdtype(np.asarray(y).dtype, np.integer):
            return np.asarray(y)
        return None

    def num_outputs(self) -> int | None:
        """The size of the outputs' last axis on a training batch (None if not one array)."""
        x, _ = self.batch(2)
        params, state = jax.eval_shape(self.task.init, self.key, self.hp)

        def forward(p, s, x):
            return self.task.apply(p, s, x, train=False, key=None, mask=None)[0]

        out = jax.eval_shape(forward, params, state, x)
        return int(out.shape[-1]) if hasattr(out, "shape") and len(out.shape) >= 2 else None


def make_subject(
    config: SweepConfig | Mapping[str, Any] | None = None,
    *,
    task: Task | Callable[[dict[str, Any]], Task] | None = None,
    optimizer: Callable[[Mapping[str, Any]], Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    search: Sequence[str | Path] = (),
    check: bool = True,
) -> Subject:
    """Bind the base trial of ``config`` (default: the bundled sweep) as a sweep would.

    Args:
      config: a configuration; its search space is ignored (the base trial is examined).
      task, optimizer: as for :func:`jaxtune.run_sweep` (default: ``task.factory`` /
        ``optimizer.factory`` / the built-ins).
      overrides: dotted keys set on the base trial first (e.g. ``{"task.dropout": 0.0}``).
        ``train.grad_norm`` is always on: the checks read the gradient norms.
      search: folders searched first for ``task.factory`` / ``optimizer.factory``.
      check: check the task's contract (:func:`jaxtune.tasks.check_task`).

    Raises:
      TaskError / ConfigError: a task that breaks its contract, or a bad configuration.
    """
    cfg = config_lib.default_config() if config is None else SweepConfig.from_dict(config)
    cfg = cfg.replace({"train.grad_norm": True, **dict(overrides or {})})
    binder = Binder(cfg, task=task, optimizer=optimizer, search=search)
    trial = dict(cfg.base)
    numeric = config_lib.numeric_keys(cfg.base)
    structure = dict(structure_of(trial, numeric))
    hp = {k: jnp.asarray(v[0]) for k, v in hp_arrays([trial], numeric).items()}
    if check:
        bound = binder(structure, [trial])
        bound_task, names = bound.task, tuple(binder.names_of(bound.task))
        opt, sched, rng, fns = bound.optimizer, bound.schedule, bound.rng, bound.step
    else:
        bound_task, task_id = binder.task_for(structure, [trial])
        opt, sched, _ = binder.optimizer_for(structure, [trial])
        rng = task_id[0] != "builtin" or structure["task.dropout"] > 0
        fns, names = make_train_step(bound_task, opt, schedule=sched, rng=rng), ()
    return Subject(
        cfg,
        structure,
        bound_task,
        fns,
        opt,
        sched,
        rng,
        hp,
        jax.random.PRNGKey(cfg.base["train.seed"]),
        binder.task,
        binder.optimizer,
        names,
    )


def savefig(fig: Any, path: str | Path | None) -> Path | None:
    """Write a figure from :func:`figure` as a PNG when ``path`` is given."""
    return None if path is None else figures.save(fig, path, bbox_inches="tight")


def figure(ncols: int = 1) -> tuple[Any, Any]:
    """A figure of ``ncols`` panels side by side and its axes, shape ``[1, ncols]``."""
    fig = figures.figure(6.4 * ncols, 4.2)
    return fig, fig.subplots(1, ncols, squeeze=False)
