"""Compiling a call's programs ahead of time, a compile cache, and fitting calls to memory.

Every call's ``init``, ``shuffle``, ``steps`` (or ``chunk``: shuffle and steps in one program)
and ``evaluate`` programs are compiled from shapes (:class:`CompiledCall`). Compiled programs
are cached by everything they depend on (the batch layout, trials per call, data shapes,
devices, the task and optimizer, the execution form and the matmul precision), so a second
sweep of the same shapes in one process compiles nothing.
"""

from __future__ import annotations

import collections
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtune.engine.execution import CallFunctions, Form, call_functions
from jaxtune.engine.plan import Group, trial_sharding
from jaxtune.errors import ConfigError

__all__ = [
    "CallFit",
    "CompiledCall",
    "call_memory_bytes",
    "dispatches",
    "fit_memory",
    "make_mesh",
    "state_bytes",
]

_CACHE_SIZE = 64


class _Cache(collections.OrderedDict):
    """Compiled programs, least recently used evicted first. Entries keep the binding alive,
    so an ``id`` in a key can never be reused by another object."""

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
    return (str(treedef), *((tuple(np.shape(a)), str(a.dtype)) for a in leaves))


def dispatches(form: Form, length: int) -> list[int]:
    """The steps of each dispatch that runs a chunk of ``length`` steps in ``form``.

    Example:
      >>> dispatches(Form("scan", 4), 10)
      [4, 4, 2]
    """
    m = form.steps_per_call(length)
    return [m] * (length // m) + ([length % m] if length % m else [])


class CompiledCall:
    """A call's compiled programs in one form; programs compile on first need and are cached.

    Args:
      group: the call's group; ``size``: its trials (padded).
      hp, keys, data_key, data: the call's device arrays (shapes and shardings are read);
        ``data`` holds the splits on the devices.
      n_train: training examples; ``mesh``: the devices; ``form``, ``precision``: how to run.
      feed: the call's :class:`jaxtune.engine.feed.HostFeed` when its training batches stream
        from the host (else None); ``host_evals``: its evaluation splits on the host, by name.
    """

    def __init__(
        self,
        group: Group,
        size: int,
        hp: Any,
        keys: Any,
        data_key: Any,
        data: Any,
        n_train: int,
        mesh: jax.sharding.Mesh,
        form: Form,
        precision: str,
        *,
        feed: Any = None,
        host_evals: dict[str, Any] | None = None,
    ) -> None:
        self.form, self.precision, self.mesh = form, precision, mesh
        self.shared_batch = group.layout.shared_batch
        self.feed, self.host_evals = feed, dict(host_evals or {})
        self._args = (hp, keys, data_key, data)
        fed = None if feed is None else (len(feed.pairs), _shapes(feed.spec(1)))
        evals = tuple((k, _shapes(v.spec())) for k, v in sorted(self.host_evals.items()))
        #: What the call's programs depend on besides the form.
        self.shape_key = (
            group.layout,
            size,
            _shapes(hp),
            _shapes(data),
            tuple(d.id for d in mesh.devices.flat),
            group.binding.cache_key,
            precision,
            fed,
            evals,
        )
        key = (*self.shape_key, str(form))

        def make() -> dict:
            fns = call_functions(
                form, group.layout, group.binding.step, n_train, mesh, fed=feed is not None
            )
            with jax.default_matmul_precision(precision):
                shape = jax.eval_shape(fns.init, hp, keys)
            sh = trial_sharding(mesh)
            state = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shape
            )
            return {"fns": fns, "binding": group.binding, "programs": {}, "state_shape": state}

        self._entry = _COMPILED.entry(key, make)
        self.fns: CallFunctions = self._entry["fns"]
        #: The abstract state of the call (leading trial axis, sharded).
        self.state_shape = self._entry["state_shape"]
        self.seconds = 0.0  # spent compiling by this object

    def _compiled(self, name: str, make: Any) -> Any:
        programs = self._entry["programs"]
        if name not in programs:
            t0 = time.perf_counter()
            with jax.default_matmul_precision(self.precision):
                programs[name] = make().compile()
            self.seconds += time.perf_counter() - t0
        return programs[name]

    def init(self) -> Any:
        hp, keys, _, _ = self._args
        sh = trial_sharding(self.mesh)
        return self._compiled(
            "init", lambda: jax.jit(self.fns.init, out_shardings=sh).lower(hp, keys)
        )

    def shuffle(self, length: int) -> Any:
        """The program of a chunk's shuffle. Its outputs are placed as the steps program takes
        them: split over the trials (one permutation per trial), or replicated when the trials
        share their batches."""
        hp, keys, data_key, _ = self._args
        spec = (
            jax.sharding.PartitionSpec()
            if self.shared_batch
            else jax.sharding.PartitionSpec("trials")
        )
        out = jax.sharding.NamedSharding(self.mesh, spec)
        return self._compiled(
            f"shuffle{length}",
            lambda: jax.jit(self.fns.shuffle, static_argnames="length", out_shardings=out).lower(
                data_key, keys, hp, np.int32(0), length=length
            ),
        )

    def batches_shape(self, chunk: int) -> tuple:
        """The abstract ``batches`` argument of :meth:`steps` for chunks of ``chunk`` steps."""
        hp, keys, data_key, _ = self._args
        if self.feed is not None:
            which = jax.ShapeDtypeStruct(keys.shape[:1], np.int32)
            return (self.feed.spec(chunk), which, np.int32(0))
        return jax.eval_shape(
            lambda *a: self.fns.shuffle(*a, length=chunk), data_key, keys, hp, np.int32(0)
        )

    def lower_steps(self, length: int, chunk: int) -> Any:
        """The lowered (not compiled) program of :meth:`steps`. One that runs a whole chunk
        leaves its last step out of the loop, as :meth:`chunk` does: a chunk fed from the host
        then trains bit for bit what the same chunk trains from the device."""
        hp, _, _, data = self._args
        steps = functools.partial(self.fns.steps, last_apart=length == chunk)
        fn = jax.jit(steps, static_argnames="length", donate_argnums=0)
        with jax.default_matmul_precision(self.precision):
            return fn.lower(
                self.state_shape, hp, data, self.batches_shape(chunk), np.int32(0), length=length
            )

    def steps(self, length: int, chunk: int) -> Any:
        """The program of ``length`` steps per dispatch within chunks of ``chunk`` steps (the
        shuffles, or the feed, it reads are the chunk's)."""
        return self._compiled(f"steps{length}/{chunk}", lambda: self.lower_steps(length, chunk))

    def one_program(self, length: int) -> bool:
        """Whether a chunk of ``length`` steps runs as one program, its shuffle included: a
        chunk run in one dispatch from the on-device split (:meth:`chunk`)."""
        return self.feed is None and dispatches(self.form, length) == [length]

    def chunk(self, length: int) -> Any:
        """The program of a whole chunk of ``length`` steps, shuffle and steps together
        (``chunk(state, hp, data, data_key, keys, start)``)."""
        hp, keys, data_key, data = self._args

        def lower():
            fn = jax.jit(self.fns.chunk, static_argnames="length", donate_argnums=0)
            with jax.default_matmul_precision(self.precision):
                return fn.lower(
                    self.state_shape, hp, data, data_key, keys, np.int32(0), length=length
                )

        return self._compiled(f"chunk{length}", lower)

    def replay(self, length: int) -> Any:
        """The program that replays a chunk of ``length`` steps with the quarantine per step
        (``replay(state, hp, data, data_key, keys, start, until)``, see
        :class:`~jaxtune.engine.execution.CallFunctions`). Compiled when a trial first
        diverges within a :meth:`chunk`: a sweep without divergence never needs it."""
        hp, keys, data_key, data = self._args
        until = jax.ShapeDtypeStruct(keys.shape[:1], np.int32, sharding=trial_sharding(self.mesh))

        def lower():
            fn = jax.jit(self.fns.replay, static_argnames="length", donate_argnums=0)
            with jax.default_matmul_precision(self.precision):
                return fn.lower(
                    self.state_shape, hp, data, data_key, keys, np.int32(0), until, length=length
                )

        return self._compiled(f"replay{length}", lower)

    def main(self, length: int) -> Any:
        """The program that runs most of a chunk of ``length`` steps: :meth:`chunk` or the
        :meth:`steps` of one dispatch."""
        if self.one_program(length):
            return self.chunk(length)
        return self.steps(self.form.steps_per_call(length), length)

    def evaluate(self) -> Any:
        hp, _, _, data = self._args
        return self._compiled(
            "evaluate", lambda: jax.jit(self.fns.evaluate).lower(self.state_shape, hp, data)
        )

    def evaluate_batch(self, split: str) -> Any:
        """The program of one evaluation batch of a split on the host."""
        hp = self._args[0]
        batch, mask = self.host_evals[split].spec()
        return self._compiled(
            f"evaluate_batch/{split}",
            lambda: jax.jit(self.fns.evaluate_batch).lower(self.state_shape, hp, batch, mask),
        )

    def compile_all(self, lengths: Sequence[int], *, init: bool = True) -> float:
        """Compile every program the chunk ``lengths`` need; returns the seconds spent now."""
        before = self.seconds
        if init:
            self.init()
        for length in lengths:
            if self.one_program(length):
                self.chunk(length)
                continue
            if self.feed is None:
                self.shuffle(length)
            for m in sorted(set(dispatches(self.form, length))):
                self.steps(m, length)
        self.evaluate()
        for split in self.host_evals:
            self.evaluate_batch(split)
        return self.seconds - before


# ----------------------------------------------------------------------------------------------
# Devices and memory.


def make_mesh(setting: Any) -> jax.sharding.Mesh:
    """The one-axis ``trials`` mesh of ``parallel.devices`` (``"all"`` or a count)."""
    devices = jax.devices()
    k = len(devices) if setting in ("all", "auto") else int(setting)
    if k > len(devices):
        raise ConfigError(
            f"parallel.devices = {k} is invalid: expected 'all' or an integer in "
            f"[1, {len(devices)}] ({len(devices)} {jax.default_backend()} devices available)"
        )
    return jax.sharding.Mesh(np.asarray(devices[:k]), ("trials",))


def _last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=default)


def device_memory_budget(mesh: jax.sharding.Mesh) -> int:
    """Bytes one call may use on each device of the mesh."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    dev = local[0] if local else jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] * 0.8)
    import psutil

    return int(psutil.virtual_memory().available * 0.5 / mesh.size)


def state_bytes(state: Any) -> int:
    """Bytes of every leaf of a (possibly abstract) state."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(state))


def call_memory_bytes(compiled: Any) -> int:
    """Bytes a compiled program needs (arguments + outputs + temporaries - aliased)."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


#: On a CPU, trials too large for this many of them to fit half the last-level cache are
#: "large": calls hold this many of them (memory permitting), to be run unrolled.
LARGE_TRIALS_PER_CALL = 8


class CallFit(NamedTuple):
    """What :func:`fit_memory` settled: ``per_call`` trials per call (None: one call per
    group), the ``reason`` in a sentence, and whether the trials are ``large``."""

    per_call: int | None
    reason: str
    large: bool = False


def fit_memory(
    per_trial: float, largest: int, mesh: jax.sharding.Mesh, *, working: float | None = None
) -> CallFit:
    """Trials per call for ``train.max_trials_per_call = "auto"``.

    ``per_trial`` is the bytes one trial of a probe call needs on its device (the compiled
    program's memory analysis, per trial); ``working`` the part of it each step touches (by
    default all of it), which the cache rule below uses. Each call must fit the device's
    memory. On CPU devices a call is also kept within half the last-level cache: a group whose
    per-step working set spills out of the cache runs slower in one call than in several
    (benchmarks/sweep_throughput.py measured 8 trials per call as the fastest for the vmapped
    digits MLP on a 2-core CPU with a 32 MiB cache). Trials too large for
    :data:`LARGE_TRIALS_PER_CALL` of them to fit are *large*: calls then hold that many
    anyway, and ``auto`` tries them unrolled first (for the transformer LM and the 32x32 CNN of
    ``jaxtune.workloads``, one call of 8 unrolled trials ran 1.16-1.19x faster than 8 calls of
    one; benchmarks/trials_per_call.py).
    """
    k = mesh.size
    budget = device_memory_budget(mesh)
    limit = max(1, int(budget // max(per_trial, 1)))
    reason = f"within the {budget / 2**20:.0f} MiB per-device memory budget"
    large = False
    if jax.default_backend() == "cpu":
        cache = _last_level_cache_bytes()
        step_bytes = per_trial if working is None else working
        fits = 2 ** int(math.log2(max(1, int(cache / 2 // max(step_bytes, 1)))))
        half = f"half the {cache / 2**20:.0f} MiB last-level CPU cache"
        text = f"within {half}"
        if fits < LARGE_TRIALS_PER_CALL:
            large, fits = True, LARGE_TRIALS_PER_CALL
            text = f"large trials: fewer than {fits} fit {half}, so calls of {fits} to run unrolled"
        if fits < limit:
            limit, reason = fits, text
    per_device = min(limit, math.ceil(largest / k))
    touched = ""
    if working is not None and working != per_trial:
        touched = f", ~{working * per_device / 2**20:.1f} MiB of it per step"
    choice = (
        f"auto: up to {per_device} trials per call on each of {k} device(s) "
        f"(~{per_trial * per_device / 2**20:.1f} MiB each{touched}, {reason})"
    )
    return CallFit(None if math.ceil(largest / k) <= limit else limit * k, choice, large)
