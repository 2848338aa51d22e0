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
from jaxtune.data import num_examples
from jaxtune.engine import compile as compile_lib
from jaxtune.engine.bind import Binder
from jaxtune.engine.plan import Plan, make_plan, pad_trials, trial_sharding
from jaxtune.engine.result import STEP_KEYS, Selection, SweepResult, TrainedUnit, summarize
from jaxtune.errors import ConfigError
from jaxtune.tasks import METRIC_MODES, Task, default_selection

__all__ = ["SweepCallback", "run_sweep"]

_SPLITS = ("valid", "test")


class SweepCallback:
    """Hooks called on the host between compiled chunks. Subclass and override what you need."""

    def on_start(self, info: dict[str, Any]) -> None:
        """``info`` has ``names``, ``hparams``, ``steps``, ``num_trials``, ``out_dir``,
        ``start_step``, ``selection``, ``groups``, ``devices``, ``backend``."""

    def on_chunk(self, start: int, stop: int, history: dict[str, np.ndarray]) -> None:
        """Steps ``[start, stop)`` are done; ``history`` holds all metrics up to ``stop``."""

    def on_end(self, result: SweepResult) -> None:
        """The sweep finished (or stopped); ``result`` is final."""


class Prepared(NamedTuple):
    """A planned and compiled sweep, before anything ran or was written."""

    cfg: SweepConfig
    plan: Plan
    data: list[dict[str, Any]]  # device splits per Plan.data entry
    selection: Selection
    compile_s: float
    choice: str  # what decided the trials per call


def _mesh(setting: Any) -> jax.sharding.Mesh:
    devices = jax.devices()
    k = len(devices) if setting in ("all", "auto") else int(setting)
    if k > len(devices):
        raise ConfigError(
            f"parallel.devices = {k} is invalid: expected 'all' or an integer in "
            f"[1, {len(devices)}] ({len(devices)} {jax.default_backend()} devices available)"
        )
    return jax.sharding.Mesh(np.asarray(devices[:k]), ("trials",))


def _selection(cfg: SweepConfig, metric_names: Sequence[str]) -> Selection:
    base = cfg.base
    metric = base["select.metric"] or default_selection(metric_names)
    allowed = ["valid.loss", *(f"valid.{m}" for m in metric_names)]
    if metric not in allowed:
        raise ConfigError(
            f"select.metric = {metric!r} is invalid: the task reports {', '.join(allowed)}"
        )
    mode = base["select.mode"] or METRIC_MODES.get(metric.split(".", 1)[1])
    if mode is None:
        raise ConfigError(
            f"select.mode is needed for select.metric = {metric!r}: expected 'max' or 'min'"
        )
    return Selection(metric, mode, base["select.target"])


def prepare(cfg: SweepConfig, binder: Binder, *, compile_programs: bool = True) -> Prepared:
    """Bind, check, plan and (optionally) compile a sweep; nothing is written."""
    base = cfg.base
    steps, eval_every = base["train.steps"], base["train.eval_every"]
    lengths = sorted({min(eval_every, steps), (steps % eval_every) or min(eval_every, steps)})
    mesh = _mesh(base["parallel.devices"])
    mtpc = base["train.max_trials_per_call"]
    probe = compile_lib.PROBE_TRIALS * mesh.size
    per_call = probe if mtpc == "auto" else mtpc
    plan = make_plan(cfg, binder, per_call, mesh, splits=_SPLITS)
    selection = _selection(cfg, binder.metric_names or [])
    for g in plan.groups:
        names = binder._checked[id(g.bound.task)]
        if selection.metric != "valid.loss" and selection.metric[6:] not in names:
            raise ConfigError(
                f"select.metric = {selection.metric!r} is not reported by every task of the "
                f"sweep (one reports {names})"
            )
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = [
        parallel.put(
            {k: jax.tree.map(np.asarray, v) for k, v in s._asdict().items() if v is not None},
            replicated,
        )
        for s in plan.data
    ]
    choice = "all trials of a group in one call" if mtpc == "auto" else f"fixed at {mtpc}"
    compile_s = 0.0
    if compile_programs:
        compile_s = _compile_all(plan, data, lengths)
        if mtpc == "auto":
            want, choice = compile_lib.fit_memory(plan, lengths, probe)
            largest = max(len(g.members) for g in plan.groups)
            have = probe if largest > probe else None
            if want != have:
                plan = make_plan(cfg, binder, want, mesh, splits=_SPLITS)
                compile_s += _compile_all(plan, data, lengths)
    return Prepared(cfg, plan, data, selection, compile_s, choice)


def _compile_all(plan: Plan, data: list[dict[str, Any]], lengths: Sequence[int]) -> float:
    total = 0.0
    for unit in plan.units:
        group = plan.groups[unit.group]
        n_train = num_examples(plan.data[group.data_index].train)
        total += compile_lib.compile_unit(unit, plan, data[group.data_index], lengths, n_train)
    return total


def group_templates(plan: Plan) -> list[Any]:
    """Abstract per-group states (stacked over each group's real trials), for restoring."""
    out = []
    for g, group in enumerate(plan.groups):
        unit = next(u for u in plan.units if u.group == g)
        shape = unit.state_shape
        n = len(group.members)
        out.append(
            jax.tree.map(lambda a, n=n: jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype), shape)
        )
    return out


def group_states(plan: Plan) -> list[Any]:
    """Host copies of each group's state, stacked over its real trials in member order."""
    out = []
    for g in range(len(plan.groups)):
        parts = [
            jax.tree.map(lambda a, u=u: np.asarray(a)[: len(u.trial_ids)], parallel.gather(u.state))
            for u in plan.units
            if u.group == g
        ]
        out.append(jax.tree.map(lambda *xs: np.concatenate(xs), *parts))
    return out


def scatter_states(plan: Plan, states: Sequence[Any]) -> None:
    """Give every unit its slice of the groups' states (padded, sharded over the mesh)."""
    sharding = trial_sharding(plan.mesh)
    for unit in plan.units:
        part = jax.tree.map(
            lambda a, u=unit: np.asarray(a)[u.offset : u.offset + len(u.trial_ids)],
            states[unit.group],
        )
        unit.state = parallel.put(pad_trials(part, unit.size), sharding)


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
    evals = {k: np.full((n,), np.nan, np.float32) for k in history if k.startswith(_SPLITS)}
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
            for m in ["loss", *binder._checked[id(g.bound.task)]]:
                keys.append(f"{split}.{m}")
    return list(dict.fromkeys(keys))


def describe(prep: Prepared) -> str:
    """What the engine chose: devices, groups, calls, batch utilization."""
    plan = prep.plan
    lines = [f"devices: {plan.mesh.size} x {jax.default_backend()}; {prep.choice}"]
    for g in plan.group_info:
        lines.append(
            f"group: {g['trials']} trials, {g['calls']} call(s) of {g['trials_per_call']}, "
            f"batch sizes {g['batch_sizes']} gathered at {g['gathered_batch']} "
            f"(utilization {g['batch_utilization']:.0%}"
            f"{', shared batch' if g['shared_batch'] else ''}) {g['structure'] or ''}"
        )
    return "\n".join(lines)


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
    steps, eval_every = base["train.steps"], base["train.eval_every"]
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

    interrupted = False
    t_run = time.perf_counter()
    step = last_ckpt = start_step
    every = base["checkpoint.every"]
    with _deferred_interrupt() as stop_requested:
        try:
            while step < steps and not stop_requested():
                length = min(eval_every, steps - step)
                outs = []
                for unit in plan.units:
                    data = prep.data[plan.groups[unit.group].data_index]
                    unit.state, metrics, evals = unit.chunk[length](
                        unit.state, unit.hp, data, np.int32(step), unit.data_key
                    )
                    outs.append((metrics, evals))
                history = _record(history, plan, parallel.gather(outs), step, length)
                step += length
                for cb in callbacks:
                    cb.on_chunk(step - length, step, history)
                if ckpt is not None and (step // every > last_ckpt // every or step == steps):
                    ckpt.save(step, group_states(plan), history, members)
                    last_ckpt = step
        except KeyboardInterrupt:  # raised by a callback; the state is consistent at `step`
            interrupted = True
        interrupted = interrupted or stop_requested()
        if interrupted and ckpt is not None and step > last_ckpt:
            ckpt.save(step, group_states(plan), history, members)
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
