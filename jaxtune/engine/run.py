"""``run_sweep``: bind, check and compile, then train with the configured strategy.

Nothing is written before every task is checked and every program compiled. The strategy
(``sweep.strategy``, :data:`jaxtune.registry.STRATEGIES`) decides which populations of trials
train for how long: ``all`` trains every trial of the search space to the end (:func:`run_all`);
the adaptive ones live in :mod:`jaxtune.search`. Every strategy receives a :class:`Sweep`, the
shared context of one call: configuration, binder, histories, callbacks, checkpoints, results.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtune import checkpoint as ckpt_lib
from jaxtune import config as config_lib
from jaxtune import parallel, registry
from jaxtune.config import SweepConfig
from jaxtune.engine.bind import Binder
from jaxtune.engine.history import empty_history
from jaxtune.engine.loop import Checkpoints, SweepCallback, eval_keys
from jaxtune.engine.loop import train as loop_train
from jaxtune.engine.population import Population
from jaxtune.engine.prepare import Preparer
from jaxtune.engine.result import Selection, SweepResult, resolve_selection, summarize
from jaxtune.errors import ConfigError
from jaxtune.files import atomic_write
from jaxtune.tasks import Task

__all__ = ["Sweep", "SweepCallback", "run_all", "run_sweep"]


class Sweep:
    """What one :func:`run_sweep` call shares with its strategy.

    Attributes:
      cfg, binder: the configuration and the binder of tasks and optimizers.
      overrides: every trial of the search space (its overrides), by sweep-wide id.
      names, hparams: each trial's name and varying keys.
      history: the sweep-wide histories (one row per trial).
      checkpoints: when and where to checkpoint (None without ``out_dir``).
      planned: trial-steps the strategy plans (default: the grid's); set before the first
        population (it sizes how long ``train.execution = "auto"`` may measure).
    """

    def __init__(self, cfg, binder, *, out_dir, resume, callbacks, verbose) -> None:
        self.cfg, self.binder = cfg, binder
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.resume, self.callbacks, self.verbose = resume, list(callbacks), verbose
        self.overrides = config_lib.expand_trials(cfg)
        if not self.overrides:
            raise ConfigError("the search space is empty: the sweep has no trials")
        self.define({})
        self.history: dict[str, np.ndarray] | None = None
        self.checkpoints: Checkpoints | None = None
        self.planned: int | None = None
        self.selection: Selection | None = None
        self.trial_steps = 0
        self._preparer: Preparer | None = None
        self._t0 = self._t_run = time.perf_counter()
        self._started = False

    def define(
        self, overrides: Mapping[int, Mapping[str, Any]], names: Sequence[str] | None = None
    ) -> None:
        """Set the overrides of some trials (a strategy that proposes its own points) and
        recompute every trial's varying keys; ``names`` replaces the trials' names."""
        for i, o in overrides.items():
            self.overrides[i] = dict(o)
        varying = list(dict.fromkeys(k for o in self.overrides for k in o))
        base = self.cfg.base
        self.hparams = [{k: {**base, **o}[k] for k in varying} for o in self.overrides]
        if names is not None:
            self.names = list(names)
        elif not overrides:
            self.names = [f"{i:03d}-{config_lib.trial_name(h)}" for i, h in enumerate(self.hparams)]

    @property
    def steps(self) -> int:
        return self.cfg.base["train.steps"]

    @property
    def compile_s(self) -> float:
        return 0.0 if self._preparer is None else self._preparer.compile_s

    def _prepare(self) -> Preparer:
        if self._preparer is None:
            recorded = None
            if self.resume and self.out_dir is not None:
                recorded = ckpt_lib.latest_notes(self.out_dir / "checkpoints")
            self._preparer = Preparer(
                self.cfg,
                self.binder,
                planned_trial_steps=self.planned or len(self.overrides) * self.steps,
                recorded=(recorded or {}).get("prepared"),
            )
        return self._preparer

    def population(
        self,
        ids: Sequence[int] | None = None,
        *,
        overrides: Mapping[int, Mapping[str, Any]] | None = None,
        fresh: bool = True,
    ) -> Population:
        """Plan and compile the trials ``ids`` (default all); ``overrides[id]`` changes keys.

        ``fresh=False`` for a population whose states will be loaded (its init programs compile
        only if called).
        """
        ids = list(range(len(self.overrides))) if ids is None else list(ids)
        extra = overrides or {}
        trials = [(i, {**self.overrides[i], **extra.get(i, {})}) for i in ids]
        pop = self._prepare().population(trials, fresh=fresh)
        if self.selection is None:
            self.selection = _selection(self.cfg, self.binder, pop)
        if self.history is None:
            self.history = empty_history(len(self.overrides), self.steps, eval_keys(pop))
        return pop

    def open_checkpoints(self) -> None:
        """Open the checkpoints, then write ``config.toml`` (after everything compiled): a run
        the checkpoints refuse (a resume that changed a key, a folder holding another run)
        leaves the folder's configuration as it was."""
        parallel.barrier("jaxtune-compiled")
        base = self.cfg.base
        if self.out_dir is not None and base["checkpoint.every"] > 0:
            checkpointer = ckpt_lib.SweepCheckpointer(
                self.out_dir / "checkpoints", self.cfg, resume=self.resume
            )
            self.checkpoints = Checkpoints(checkpointer, base["checkpoint.every"])
        if self.out_dir is not None and parallel.is_primary():
            _write_config(self.out_dir, self.cfg)

    def start(
        self, first: Population, rebuild: Callable[[dict], Population] | None = None
    ) -> tuple[Population, int, dict | None]:
        """Open the checkpoints, then resume from the latest one or start ``first`` fresh.

        ``rebuild(notes)`` gives the population a checkpoint's strategy notes name (default:
        ``first``). Returns ``(population, step, notes)``; ``notes`` is None for a fresh start.
        """
        self.open_checkpoints()
        restored = None
        if self.checkpoints is not None and self.resume:
            built: dict[int, Population] = {}

            def target(extra: dict) -> tuple[Any, Any]:
                pop = first if rebuild is None else rebuild(extra.get("strategy", {}))
                built[0] = pop
                return pop.templates(), pop.members

            restored = self.checkpoints.checkpointer.restore_latest(target)
        if restored is None:
            first.init()
            return first, 0, None
        number, states, saved, extra = restored
        pop = built[0]
        pop.scatter(states)
        self.history = {**self.history, **saved}
        step = int(extra.get("step", number))
        self.checkpoints.offset, self.checkpoints.last = int(extra.get("offset", 0)), step
        self.trial_steps = int(extra.get("trial_steps", step * len(self.overrides)))
        return pop, step, extra.get("strategy", {})

    def begin(self, population: Population, start_step: int) -> None:
        """Tell the callbacks the sweep starts (once)."""
        if self._started:
            return
        self._started = True
        info = {
            "names": self.names,
            "hparams": self.hparams,
            "steps": self.steps,
            "num_trials": len(self.names),
            "out_dir": None if self.out_dir is None else str(self.out_dir),
            "start_step": start_step,
            "selection": self.selection,
            "groups": population.plan.group_info,
            "execution": population.execution,
            "data": population.data,
            "devices": population.mesh.size,
            "backend": jax.default_backend(),
            "strategy": self.cfg.strategy,
            "trial_steps": self.planned or len(self.names) * self.steps,
            "trial_steps_done": start_step * len(self.names)
            if self.cfg.strategy == "all"
            else int(np.isfinite(self.history["train.loss"]).sum()),
        }
        if self.verbose:
            print(population.describe())
        for cb in self.callbacks:
            cb.on_start(info)
        self._t_run = time.perf_counter()

    def train(
        self, population: Population, start: int, stop: int, *, notes: dict | None = None, **kw
    ) -> tuple[int, bool]:
        """Train a population over ``[start, stop)``; returns ``(step reached, interrupted)``.

        ``notes`` (JSON) is the strategy's state, saved with every checkpoint of the span.
        """
        for cb in self.callbacks:
            hook = getattr(cb, "on_population", None)  # callbacks need not subclass
            if hook is not None:
                hook(population.ids, start, stop)
        extra = {
            "strategy": notes or {},
            "trial_steps_base": self.trial_steps - start * len(population.ids),
            "prepared": self._prepare().record(),
        }
        step, self.history, interrupted = loop_train(
            population,
            start,
            stop,
            self.history,
            callbacks=self.callbacks,
            checkpoints=self.checkpoints,
            extra=extra,
            **kw,
        )
        self.trial_steps += (step - start) * len(population.ids)
        return step, interrupted

    def finish(
        self,
        populations: Sequence[Population],
        step: int,
        interrupted: bool,
        *,
        stopped: Mapping[int, tuple[int, str]] | None = None,
        diverged: Mapping[int, int | None] | None = None,
        search: dict[str, Any] | Callable[[SweepResult], dict[str, Any]] | None = None,
    ) -> SweepResult:
        """Assemble, save and announce the result; raise KeyboardInterrupt when interrupted.

        A trial's divergence step is read from the last of ``populations`` that holds it,
        then from ``diverged`` (``id -> step``), which must name every diverged trial of a
        population not passed: one a strategy left behind, or one trained before a resume
        (strategies keep those in their checkpointed notes). ``search`` is the strategy's
        record, or a function of the result that returns it.
        """
        if self.checkpoints is not None:
            self.checkpoints.checkpointer.close()
        last = populations[-1]
        run_s = time.perf_counter() - self._t_run
        n = len(self.names)
        div = {i: None for i in range(n)}
        for pop in populations:
            div.update(pop.diverged_steps())
        div.update(diverged or {})
        timing = {
            "compile_s": self.compile_s,
            "run_s": run_s,
            "trial_steps": self.trial_steps,
            "grid_trial_steps": n * self.steps,
            "trial_steps_per_s": self.trial_steps / run_s if run_s > 0 else math.nan,
            "steps_done": step,
            "interrupted": interrupted,
            "groups": last.plan.group_info,
            "execution": last.execution,
            "data": last.data,
            "precision": self.cfg.base["train.precision"],
            "backend": jax.default_backend(),
            "devices": last.mesh.size,
            "trials_per_call": last.call_choice,
        }
        trials = summarize(
            self.cfg,
            self.names,
            self.hparams,
            self.history,
            [div[i] for i in range(n)],
            self.selection,
            step,
            stopped,
        )
        result = SweepResult(self.cfg, trials, self.history, timing, self.selection)
        result.units = [u for pop in populations for u in pop.trained_units()]
        result.search = (search(result) if callable(search) else search) or {}
        if self.out_dir is not None and parallel.is_primary():
            result.save(self.out_dir)
        for cb in self.callbacks:
            cb.on_end(result)
        if interrupted:
            raise KeyboardInterrupt
        return result


def _selection(cfg: SweepConfig, binder: Binder, pop: Population) -> Selection:
    """``select.*`` completed from the tasks' metrics; every task must report the metric."""
    selection = resolve_selection(cfg, binder.metric_names or [])
    for g in pop.plan.groups:
        names = g.binding.metric_names
        if selection.metric != "valid.loss" and selection.metric[6:] not in names:
            raise ConfigError(
                f"select.metric = {selection.metric!r} is not reported by every task of the "
                f"sweep (one reports {names})"
            )
    return selection


def _write_config(out: Path, cfg: SweepConfig) -> None:
    """``<out>/config.toml``, the resolved configuration (re-runnable), written atomically."""
    atomic_write(out / "config.toml", config_lib.to_toml(cfg.to_dict()))


def run_all(sweep: Sweep) -> SweepResult:
    """The plain strategy: every trial of the search space trains to ``train.steps``."""
    pop, start, _ = sweep.start(sweep.population())
    sweep.begin(pop, start)
    step, interrupted = sweep.train(pop, start, sweep.steps)
    return sweep.finish([pop], step, interrupted)


def run_sweep(
    config: SweepConfig | Mapping[str, Any] | None = None,
    *,
    task: Task | Callable[[dict[str, Any]], Task] | None = None,
    optimizer: Callable[[Mapping[str, Any]], Any] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[SweepCallback] = (),
    model: Any = None,
    dataset: Any = None,
    verbose: bool = False,
    search_path: Sequence[str | Path] = (),
) -> SweepResult:
    """Train the trials of a sweep, vectorized per group, and collect the results.

    Args:
      config: a :class:`jaxtune.SweepConfig`, a dict of sections/dotted keys, or ``None`` for
        the bundled default sweep. ``sweep.strategy`` picks how trials train (every trial to the
        end, or an adaptive strategy of :mod:`jaxtune.search`).
      task: a :class:`jaxtune.Task`, or ``task(structure) -> Task`` called once per structure
        group with the group's flat configuration minus its numeric keys (so structure sweeps
        of width or depth work with user code). Default: ``task.factory``, else the built-in
        task of ``task.dataset`` and ``task.model``.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation`` for every trial. Default:
        ``optimizer.factory``, else the chain ``optimizer.*`` and ``schedule.*`` name.
      out_dir: where results and checkpoints (``<out_dir>/checkpoints`` when
        ``checkpoint.every > 0``) are written.
      resume: continue from the latest intact checkpoint in ``out_dir``.
      callbacks: host-side hooks (progress bars, TensorBoard logging).
      model: a :class:`jaxtune.Model` for the built-in task (convenience).
      dataset: a :class:`jaxtune.Splits` for the built-in task (convenience; a missing
        validation split is carved out of train with ``task.valid_fraction``).
      verbose: print what the engine chose (groups, trials per call, devices).
      search_path: folders tried first when importing ``task.factory`` / ``optimizer.factory``.

    Returns:
      A :class:`jaxtune.SweepResult`.

    Example:
      >>> import jaxtune
      >>> result = jaxtune.run_sweep({
      ...     "task": {"dataset": "synthetic", "widths": [16]},
      ...     "train": {"steps": 20, "eval_every": 10, "batch_size": 32},
      ...     "sweep": {"grid": {"optimizer.learning_rate": [0.01, 0.1]}},
      ... })
      >>> len(result.trials), result.selection.metric
      (2, 'valid.accuracy')
    """
    cfg = config_lib.default_config() if config is None else SweepConfig.from_dict(config)
    base = cfg.base
    parallel.initialize(base)
    if not parallel.is_primary():
        callbacks = ()  # results, logs and plots are written by process 0
    if resume and (out_dir is None or base["checkpoint.every"] == 0):
        raise ConfigError("resume needs an output directory and checkpoint.every > 0")
    module, _, attr = registry.STRATEGIES[cfg.strategy].partition(":")
    strategy = getattr(importlib.import_module(module), attr)
    binder = Binder(
        cfg, task=task, optimizer=optimizer, model=model, dataset=dataset, search=search_path
    )
    sweep = Sweep(cfg, binder, out_dir=out_dir, resume=resume, callbacks=callbacks, verbose=verbose)
    return strategy(sweep)
