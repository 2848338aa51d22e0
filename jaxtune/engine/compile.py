"""Preparing a sweep: bind, check, plan and compile; a compile cache; fitting calls to memory.

Every unit's ``init`` and ``chunk`` programs are compiled ahead of time from shapes. Compiled
programs are cached by everything they depend on (the program description, trials per call,
data shapes, devices and the identity of the task and optimizer), so a second sweep of the same
shapes in one process compiles nothing.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtune import parallel
from jaxtune.config import SweepConfig
from jaxtune.data import num_examples
from jaxtune.engine.bind import Binder
from jaxtune.engine.plan import Plan, Unit, make_plan, trial_sharding
from jaxtune.engine.program import make_program
from jaxtune.engine.result import Selection, resolve_selection
from jaxtune.errors import ConfigError

__all__ = [
    "DIRECT_TRIALS",
    "PROBE_TRIALS",
    "SPLITS",
    "Prepared",
    "compile_unit",
    "describe",
    "fit_memory",
    "prepare",
]

#: The evaluated splits, in order (``test`` only where a task has one).
SPLITS = ("valid", "test")

#: ``train.max_trials_per_call = "auto"`` compiles a group of up to this many trials per device
#: in one call first (most groups fit; then nothing compiles twice); larger groups are probed
#: with calls of :data:`PROBE_TRIALS` per device, and the memory analysis decides the size.
DIRECT_TRIALS = 64

#: Trials per device of the probe call for groups larger than :data:`DIRECT_TRIALS`.
PROBE_TRIALS = 8

_CACHE_SIZE = 64


class _Cache(collections.OrderedDict):
    """Compiled programs, least recently used evicted first. Entries keep the task alive, so
    an identity in a key can never be reused by another object."""

    def entry(self, key: tuple, make: Any) -> dict:
        if key in self:
            self.move_to_end(key)
        else:
            self[key] = make()
            while len(self) > _CACHE_SIZE:
                self.popitem(last=False)
        return self[key]


_COMPILED = _Cache()


def _shapes(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (str(treedef), *((tuple(a.shape), str(a.dtype)) for a in leaves))


def compile_unit(
    unit: Unit,
    plan: Plan,
    data: dict[str, Any],
    lengths: Sequence[int],
    n_train: int,
    *,
    init: bool = True,
) -> float:
    """Compile the unit's init and chunk programs (cached); returns the seconds spent.

    With ``init=False`` the init program is compiled when first called (a population whose
    states come from elsewhere never calls it).
    """
    t0 = time.perf_counter()
    group = plan.groups[unit.group]
    mesh = plan.mesh
    key = (
        group.program,
        unit.size,
        tuple(sorted(unit.hp)),
        _shapes(data),
        tuple(d.id for d in mesh.devices.flat),
        group.bound.identity,
    )

    def make() -> dict:
        init_all, chunk_all = make_program(group.program, group.bound.fns, n_train)
        return {"fns": (init_all, chunk_all), "bound": group.bound}

    entry = _COMPILED.entry(key, make)
    init_all, chunk_all = entry["fns"]
    trial_sh = trial_sharding(mesh)

    def compiled_init(hp: Any, keys: Any) -> Any:
        if "init" not in entry:
            entry["init"] = jax.jit(init_all, out_shardings=trial_sh).lower(hp, keys).compile()
        return entry["init"](hp, keys)

    if init and "init" not in entry:  # compile now, not at the first call
        entry["init"] = (
            jax.jit(init_all, out_shardings=trial_sh).lower(unit.hp, unit.keys).compile()
        )
    unit.init = compiled_init
    unit.state_shape = jax.eval_shape(init_all, unit.hp, unit.keys)
    state_shape = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=trial_sh), unit.state_shape
    )
    step_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "trials"))
    for length in lengths:
        if length not in entry:
            fn = jax.jit(
                chunk_all,
                static_argnames="length",
                donate_argnums=0,
                out_shardings=(trial_sh, step_sh, trial_sh),
            )
            entry[length] = fn.lower(
                state_shape, unit.hp, data, np.int32(0), unit.data_key, length=length
            ).compile()
        unit.chunk[length] = entry[length]
    return time.perf_counter() - t0


def _last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=default)


def _device_memory_budget(mesh: jax.sharding.Mesh) -> int:
    """Bytes one call may use on each device of the mesh."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    dev = local[0] if local else jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] * 0.8)
    import psutil

    return int(psutil.virtual_memory().available * 0.5 / mesh.size)


def _memory_bytes(compiled: Any) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def fit_memory(plan: Plan, lengths: Sequence[int], probe: int) -> tuple[int | None, str]:
    """Trials per call for ``train.max_trials_per_call = "auto"``, from the probe compile.

    Each call must fit the device's memory (the compiled program's memory analysis, scaled per
    trial, against the device's limit). On CPU devices a call is also kept within half the
    last-level cache: a group whose per-step working set spills out of the cache runs slower
    in one call than in several (benchmarks/sweep_throughput.py measured 8 trials per call as
    the fastest for the digits MLP on a 2-core CPU with a 32 MiB cache). ``plan`` was compiled
    with calls of at most ``probe`` trials.

    Returns:
      ``(per_call, choice)``: the trials per call (None: one call per group) and a sentence
      saying what decided it.
    """
    k = plan.mesh.size
    per_trial = max(_memory_bytes(u.chunk[max(lengths)]) / max(u.size // k, 1) for u in plan.units)
    budget = _device_memory_budget(plan.mesh)
    limit = max(1, int(budget // max(per_trial, 1)))
    reason = f"the {budget / 2**20:.0f} MiB per-device memory budget"
    if jax.default_backend() == "cpu":
        cache = _last_level_cache_bytes()
        fits = 2 ** int(math.log2(max(1, int(cache / 2 // max(per_trial, 1)))))
        if fits < limit:
            limit, reason = fits, f"half the {cache / 2**20:.0f} MiB last-level CPU cache"
    largest = max(len(g.members) for g in plan.groups)
    per_device = min(limit, math.ceil(largest / k))
    choice = (
        f"auto: up to {per_device} trials per call on each of {k} device(s) "
        f"(~{per_trial * per_device / 2**20:.1f} MiB each, within {reason})"
    )
    return (None if math.ceil(largest / k) <= limit else limit * k), choice


# ----------------------------------------------------------------------------------------------
# Preparing a sweep: bind, check, plan, compile.


class Prepared(NamedTuple):
    """A planned and compiled sweep, before anything ran or was written."""

    cfg: SweepConfig
    plan: Plan
    data: list[dict[str, Any]]  # device splits per Plan.data entry
    selection: Selection
    compile_s: float
    choice: str  # what decided the trials per call
    per_call: int | None = None  # the trials per call chosen (None: one call per group)


def _mesh(setting: Any) -> jax.sharding.Mesh:
    devices = jax.devices()
    k = len(devices) if setting in ("all", "auto") else int(setting)
    if k > len(devices):
        raise ConfigError(
            f"parallel.devices = {k} is invalid: expected 'all' or an integer in "
            f"[1, {len(devices)}] ({len(devices)} {jax.default_backend()} devices available)"
        )
    return jax.sharding.Mesh(np.asarray(devices[:k]), ("trials",))


def prepare(
    cfg: SweepConfig,
    binder: Binder,
    *,
    compile_programs: bool = True,
    trials: Sequence[tuple[int, dict[str, Any]]] | None = None,
    like: Prepared | None = None,
    init: bool = True,
    prefer: Mapping[str, Sequence[int]] | None = None,
) -> Prepared:
    """Bind, check, plan and (optionally) compile a sweep; nothing is written.

    ``trials`` prepares an explicit population (``(sweep-wide id, overrides)`` pairs) instead
    of the whole search space. ``like``: a population prepared before in the same sweep, whose
    trials per call this one keeps (no probe compile: a strategy's later populations are
    smaller); its calls are padded to a power of two trials per device, so that the populations
    of a strategy share few compiled programs, and ``prefer`` (see :func:`make_plan`) lets a
    call run in a program the sweep already compiled. ``init=False`` compiles the init programs
    only when called.
    """
    base = cfg.base
    steps, eval_every = base["train.steps"], base["train.eval_every"]
    lengths = sorted({min(eval_every, steps), (steps % eval_every) or min(eval_every, steps)})
    mesh = _mesh(base["parallel.devices"])
    mtpc = base["train.max_trials_per_call"]
    probe = PROBE_TRIALS * mesh.size
    per_call = probe if mtpc == "auto" else mtpc
    if like is not None:
        mtpc = per_call = like.per_call
    pad_pow2 = like is not None
    plan = make_plan(
        cfg, binder, per_call, mesh, splits=SPLITS, trials=trials, pad_pow2=pad_pow2, prefer=prefer
    )
    if mtpc == "auto" and max(len(g.members) for g in plan.groups) <= DIRECT_TRIALS * mesh.size:
        probe = max(len(g.members) for g in plan.groups)
        plan = make_plan(cfg, binder, probe, mesh, splits=SPLITS, trials=trials)
    selection = resolve_selection(cfg, binder.metric_names or [])
    for g in plan.groups:
        names = g.bound.metric_names
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
    if like is not None:
        choice = like.choice
    compile_s = 0.0
    if compile_programs:
        compile_s = _compile_all(plan, data, lengths, init)
        if mtpc == "auto":
            want, choice = fit_memory(plan, lengths, probe)
            largest = max(len(g.members) for g in plan.groups)
            have = probe if largest > probe else None
            per_call = want
            if have is not None and want is not None and have <= want <= 2 * have:
                # Within a factor of two of what fits, the probe's calls run about as fast
                # (benchmarks/sweep_throughput.py): keep them rather than compile again.
                per_call = have
                choice += f"; kept the compiled calls of {have}"
            elif want != have:
                plan = make_plan(cfg, binder, want, mesh, splits=SPLITS, trials=trials)
                compile_s += _compile_all(plan, data, lengths, init)
    per_call = None if per_call == "auto" else per_call
    return Prepared(cfg, plan, data, selection, compile_s, choice, per_call)


def _compile_all(
    plan: Plan, data: list[dict[str, Any]], lengths: Sequence[int], init: bool = True
) -> float:
    total = 0.0
    for unit in plan.units:
        group = plan.groups[unit.group]
        n_train = num_examples(plan.data[group.data_index].train)
        total += compile_unit(unit, plan, data[group.data_index], lengths, n_train, init=init)
    return total


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
