"""The sweep loop: prepare, compile, then chunks of steps with host work in between.

``run_sweep`` binds every group to its task and optimizer, checks them, plans the calls,
compiles every program, and only then writes anything. Each chunk runs every unit's compiled
program once; between chunks the host records the histories, calls the callbacks (progress bar,
TensorBoard) and writes checkpoints. The first Ctrl-C stops at the next chunk boundary.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtune import checkpoint as ckpt_lib
from jaxtune import config as config_lib
from jaxtune import parallel
from jaxtune.config import SweepConfig
from jaxtune.engine.bind import Binder
from jaxtune.engine.compile import SPLITS, Prepared, describe, prepare
from jaxtune.engine.plan import Plan, group_states, group_templates, scatter_states
from jaxtune.engine.result import STEP_KEYS, SweepResult, TrainedUnit, summarize
from jaxtune.errors import ConfigError
from jaxtune.tasks import Task

__all__ = ["SweepCallback", "run_sweep"]


class SweepCallback:
    """Hooks called on the host between compiled chunks. Subclass and override what you need."""

    def on_start(self, info: dict[str, Any]) -> None:
        """``info`` has ``names``, ``hparams``, ``steps``, ``num_trials``, ``out_dir``,
        ``start_step``, ``selection``, ``groups``, ``devices``, ``backend``."""

    def on_chunk(self, start: int, stop: int, history: dict[str, np.ndarray]) -> None:
        """Steps ``[start, stop)`` are done; ``history`` holds all metrics up to ``stop``."""

    def on_end(self, result: SweepResult) -> None:
        """The sweep finished (or stopped); ``result`` is final."""


def _write_config(out: Path, cfg: SweepConfig) -> None:
    """``<out>/config.toml``, the resolved configuration (re-runnable), written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "config.toml.tmp"
    tmp.write_text(config_lib.to_toml(cfg.to_dict()))
    tmp.replace(out / "config.toml")


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn the first Ctrl-C into a request to stop at the next chunk boundary.

    A chunk's update of every trial's state is then never cut in half, so the final checkpoint
    is consistent. A second Ctrl-C interrupts at once.
    """
    requested = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print("\nstopping after the current chunk (Ctrl-C again to abort now)", flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


def _empty_history(n: int, steps: int, eval_keys: Sequence[str]) -> dict[str, np.ndarray]:
    history = {k: np.full((n, steps), np.nan, np.float32) for k in STEP_KEYS if k != "clipped"}
    history["clipped"] = np.zeros((n, steps), bool)
    history["eval_step"] = np.zeros((0,), np.int32)
    for k in eval_keys:
        history[k] = np.zeros((n, 0), np.float32)
    return history


def _record(history, plan: Plan, outs, start: int, length: int) -> dict[str, np.ndarray]:
    history = dict(history)
    stop = start + length
    n = len(plan.trials)
    evals = {k: np.full((n,), np.nan, np.float32) for k in history if k.startswith(SPLITS)}
    for unit, (metrics, ev) in zip(plan.units, outs, strict=True):
        ids = np.asarray(unit.trial_ids)
        k = len(ids)
        for name, key in zip(
            ("loss", "grad_norm", "clipped", "learning_rate"), STEP_KEYS, strict=True
        ):
            history[key][ids, start:stop] = np.asarray(metrics[name])[:, :k].T
        for name, v in ev.items():
            evals[name][ids] = np.asarray(v)[:k]
    history["eval_step"] = np.append(history["eval_step"], np.int32(stop))
    for name, v in evals.items():
        history[name] = np.concatenate([history[name], v[:, None]], axis=1)
    return history


def _eval_keys(prep: Prepared, binder: Binder) -> list[str]:
    keys = []
    for g in prep.plan.groups:
        for split in g.program.splits:
            for m in ["loss", *binder.names_of(g.bound.task)]:
                keys.append(f"{split}.{m}")
    return list(dict.fromkeys(keys))


class _Chunk(NamedTuple):
    """A dispatched chunk of steps ``[start, stop)`` and its (possibly pending) outputs."""

    start: int
    stop: int
    outs: list


def _dispatch(prep: Prepared, start: int, length: int) -> _Chunk:
    """Run every unit's program for one chunk; returns at once (JAX dispatches asynchronously)."""
    plan, outs = prep.plan, []
    for unit in plan.units:
        data = prep.data[plan.groups[unit.group].data_index]
        unit.state, metrics, evals = unit.chunk[length](
            unit.state, unit.hp, data, np.int32(start), unit.data_key
        )
        outs.append((metrics, evals))
    return _Chunk(start, start + length, outs)


def _train(prep, start_step, history, callbacks, ckpt, members):
    """The chunk loop. Returns ``(step, history, interrupted)``.

    The next chunk is dispatched before the host records the previous one, so recording,
    callbacks and the progress bar overlap with the device's work. Before a checkpoint the loop
    does not run ahead: the saved state is the state at the recorded step.
    """
    plan, base = prep.plan, prep.cfg.base
    steps, eval_every, every = (
        base["train.steps"],
        base["train.eval_every"],
        base["checkpoint.every"],
    )
    last_ckpt = done = step = start_step

    def due(stop: int) -> bool:
        return ckpt is not None and (stop // every > last_ckpt // every or stop == steps)

    def record(chunk: _Chunk) -> dict[str, np.ndarray]:
        outs = parallel.gather(chunk.outs)
        return _record(history, plan, outs, chunk.start, chunk.stop - chunk.start)

    pending: _Chunk | None = None
    ahead: _Chunk | None = None
    interrupted = False
    with _deferred_interrupt() as stop_requested:
        try:
            while True:
                ahead = None
                if step < steps and not stop_requested() and not (pending and due(pending.stop)):
                    ahead = _dispatch(prep, step, min(eval_every, steps - step))
                    step = ahead.stop
                if pending is not None:
                    history, done = record(pending), pending.stop
                    for cb in callbacks:
                        cb.on_chunk(pending.start, done, history)
                    if due(done):
                        ckpt.save(done, group_states(plan), history, members)
                        last_ckpt = done
                pending = ahead
                if pending is None and (step >= steps or stop_requested()):
                    break
        except KeyboardInterrupt:  # raised by a callback: record what already ran
            interrupted = True
            for chunk in (pending, ahead):
                if chunk is not None and chunk.stop > done:
                    history, done = record(chunk), chunk.stop
        interrupted = interrupted or stop_requested()
        if interrupted and ckpt is not None and done > last_ckpt:
            ckpt.save(done, group_states(plan), history, members)
    return done, history, interrupted


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
    """Train every trial of a sweep, vectorized per group, and collect the results.

    Args:
      config: a :class:`jaxtune.SweepConfig`, a dict of sections/dotted keys, or ``None`` for
        the bundled default sweep.
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
    binder = Binder(
        cfg, task=task, optimizer=optimizer, model=model, dataset=dataset, search=search_path
    )
    prep = prepare(cfg, binder)
    parallel.barrier("jaxtune-compiled")
    if out_dir is not None and parallel.is_primary():
        _write_config(Path(out_dir), cfg)
    plan = prep.plan
    steps = base["train.steps"]
    n = len(plan.trials)
    history = _empty_history(n, steps, _eval_keys(prep, binder))
    start_step = 0
    ckpt = None
    members = [g.members for g in plan.groups]
    if out_dir is not None and base["checkpoint.every"] > 0:
        ckpt = ckpt_lib.SweepCheckpointer(Path(out_dir) / "checkpoints", cfg, resume=resume)
    restored = None
    if ckpt is not None and resume:
        restored = ckpt.restore_latest(group_templates(plan), members)
    if restored is not None:
        start_step, states, saved = restored
        history = {**history, **saved}
        scatter_states(plan, states)
    else:
        for unit in plan.units:
            unit.state = unit.init(unit.hp, unit.keys)
    info = {
        "names": plan.names,
        "hparams": plan.hparams,
        "steps": steps,
        "num_trials": n,
        "out_dir": None if out_dir is None else str(out_dir),
        "start_step": start_step,
        "selection": prep.selection,
        "groups": plan.group_info,
        "devices": plan.mesh.size,
        "backend": jax.default_backend(),
    }
    if verbose:
        print(describe(prep))
    for cb in callbacks:
        cb.on_start(info)

    t_run = time.perf_counter()
    step, history, interrupted = _train(prep, start_step, history, callbacks, ckpt, members)
    if ckpt is not None:
        ckpt.close()
    run_s = time.perf_counter() - t_run
    timing = {
        "compile_s": prep.compile_s,
        "run_s": run_s,
        "trial_steps_per_s": (step - start_step) * n / run_s if run_s > 0 else math.nan,
        "steps_done": step,
        "interrupted": interrupted,
        "groups": plan.group_info,
        "backend": jax.default_backend(),
        "devices": plan.mesh.size,
        "trials_per_call": prep.choice,
    }
    div_steps: list[int | None] = [None] * n
    for unit in plan.units:
        ds_ = np.asarray(parallel.gather(unit.state.diverged_step))
        for j, i in enumerate(unit.trial_ids):
            div_steps[i] = int(ds_[j]) if ds_[j] >= 0 else None
    trials = summarize(cfg, plan.names, plan.hparams, history, div_steps, prep.selection, step)
    result = SweepResult(cfg, trials, history, timing, prep.selection)
    multi = jax.process_count() > 1
    result.units = [
        TrainedUnit(
            u.trial_ids,
            parallel.gather(u.state) if multi else u.state,
            parallel.gather(u.hp),
            plan.groups[u.group].bound.task,
        )
        for u in plan.units
    ]
    if out_dir is not None and parallel.is_primary():
        result.save(out_dir)
    for cb in callbacks:
        cb.on_end(result)
    if interrupted:
        raise KeyboardInterrupt
    return result
