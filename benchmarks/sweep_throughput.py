#!/usr/bin/env python
"""Throughput of a learning-rate sweep, run four ways, side by side in one process.

Variants (all train the same ``jaxtune.mlp`` with the same optimizer chain:
``make_optimizer("momentum", step_decay(lr, 0.5, 200), momentum=0.9, clip_norm=1.0)``, batches
gathered on device inside the step from each epoch's shuffle, computed once per chunk of steps
with ``jaxtune.data.epoch_permutations``, exactly as the engine does):

* ``loop``        -- a Python loop over trials, each calling a jitted ``train_step`` once per step;
* ``vmap``        -- a hand-written ``jit(vmap(train_step))`` called once per step for all trials;
* ``vmap_scan``   -- a hand-written ``jit(scan(vmap(train_step)))`` called once per chunk;
* ``sweep[auto]`` -- ``jaxtune.run_sweep`` (``train.max_trials_per_call = "auto"``), plus
  ``sweep[k]`` for a few fixed trials-per-call values ``k < N``.

Every variant of a (model, N) cell is compiled first, then timed in interleaved repeats; the
median is reported. Absolute numbers depend on the machine's load; compare the ratios.

Run ``python benchmarks/sweep_throughput.py --help`` for the options and see
``benchmarks/README.md`` for what the columns mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune
from jaxtune.data import batch_from_permutations, epoch_permutations
from jaxtune.engine import compile as compile_lib

MODELS: dict[str, dict[str, Any]] = {
    # widths of the hidden layers, batch size, chunk (= train.eval_every = steps per scan call)
    "dispatch": {"widths": (32,), "batch": 32, "chunk": 100},
    "digits": {"widths": (256, 256), "batch": 128, "chunk": 25},
}
FIXED_PER_CALL = (8, 16, 32)
NUM_CLASSES = 10
IN_FEATURES = 64
DECAY_RATE, DECAY_EVERY, MOMENTUM, CLIP = 0.5, 200, 0.9, 1.0


# ----------------------------------------------------------------------------------------------
# Helpers.


_T0 = time.perf_counter()


def progress(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def compiled_memory(compiled: Any) -> int | None:
    """Bytes a compiled program needs (arguments + outputs + temporaries - aliased)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def mlp_flops(widths: tuple[int, ...], batch: float) -> float:
    """Forward + backward FLOPs of one training step of one trial: 6 * batch * sum(in*out)."""
    dims = (IN_FEATURES, *widths, NUM_CLASSES)
    return 6.0 * batch * sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=False))


def learning_rates(n: int) -> list[float]:
    return [0.1] if n == 1 else [float(x) for x in np.geomspace(1e-3, 1.0, n)]


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted float32 ``n x n`` matmul (median of ``repeats``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot).lower(a, b).compile()
    f(a, b).block_until_ready()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2.0 * n**3 / median(ts)


# ----------------------------------------------------------------------------------------------
# The hand-written training step (the same work as the engine's step).


def make_fns(widths: tuple[int, ...], batch: int, n_train: int):
    model = jaxtune.mlp(num_outputs=NUM_CLASSES, input_shape=(IN_FEATURES,), widths=widths)
    steps_per_epoch = n_train // batch

    def optimizer(lr):
        sched = jaxtune.step_decay(lr, DECAY_RATE, DECAY_EVERY)
        return jaxtune.make_optimizer("momentum", sched, momentum=MOMENTUM, clip_norm=CLIP)

    def init(lr, key):
        init_key, _, _ = jax.random.split(key, 3)
        params, model_state = model.init(init_key)
        return params, model_state, optimizer(lr).init(params)

    def epochs(key, start, length):
        # The shuffles of the epochs a chunk of steps touches, computed once per chunk (a
        # permutation per step would make the small model sort-bound in every variant).
        _, data_key, _ = jax.random.split(key, 3)
        first = start // steps_per_epoch
        num = min(math.ceil(length / steps_per_epoch) + 1, length)
        return epoch_permutations(data_key, first, num, n_train), first

    def train_step(state, lr, perms, first, step, data):
        params, model_state, opt_state = state
        idx = batch_from_permutations(perms, first, step, batch, batch)
        x, y = data[0][idx], data[1][idx]

        def loss_fn(p):
            logits, new_ms = model.apply(p, model_state, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_ms

        (loss, new_ms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer(lr).update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_ms, opt_state), loss

    vstep = jax.vmap(train_step, in_axes=(0, 0, 0, 0, None, None))
    vepochs = jax.vmap(epochs, in_axes=(0, None, None))

    def chunk(state, lrs, keys, start, data, length):
        perms, first = vepochs(keys, start, length)

        def body(s, t):
            return vstep(s, lrs, perms, first, t, data)

        return jax.lax.scan(body, state, start + jnp.arange(length, dtype=jnp.int32))

    return init, train_step, vstep, chunk, model, epochs


class Variant:
    """A timed way of running the sweep: ``compile()`` once, then ``run()`` repeatedly."""

    name: str
    compile_s: float = math.nan
    memory: int | None = None
    memory_source: str = "memory_analysis"
    note: str = ""

    def trial_steps(self) -> int:
        raise NotImplementedError


class Loop(Variant):
    """Python loop over trials of a jitted per-trial step (one dispatch per step per trial)."""

    name = "loop"

    def __init__(self, fns, lrs, keys, data, steps, trials, chunk):
        init, step, _, _, _, epochs = fns
        self.lrs, self.keys, self.data = lrs, keys, data
        self.steps, self.trials, self.chunk = steps, trials, chunk
        self.init = jax.jit(init)
        self.epochs = jax.jit(epochs, static_argnums=2)
        self.jit_step = jax.jit(step, donate_argnums=0)

    def compile(self):
        s0 = self.init(self.lrs[0], self.keys[0])
        perms, first = self.epochs(self.keys[0], 0, self.chunk)
        t0 = time.perf_counter()
        self.step = self.jit_step.lower(s0, self.lrs[0], perms, first, 0, self.data).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = compiled_memory(self.step)

    def calibrate(self, calls: int = 30) -> float:
        """Seconds per jitted step call."""
        s = self.init(self.lrs[0], self.keys[0])
        perms, first = self.epochs(self.keys[0], 0, self.chunk)
        s, _ = self.step(s, self.lrs[0], perms, first, 0, self.data)
        jax.block_until_ready(s)
        t0 = time.perf_counter()
        for t in range(calls):
            s, _ = self.step(s, self.lrs[0], perms, first, t % self.chunk, self.data)
        jax.block_until_ready(s)
        return (time.perf_counter() - t0) / calls

    def run(self) -> float:
        states = [self.init(self.lrs[i], self.keys[i]) for i in range(self.trials)]
        jax.block_until_ready(states)
        t0 = time.perf_counter()
        for i in range(self.trials):
            s, lr, key = states[i], self.lrs[i], self.keys[i]
            for t in range(self.steps):
                if t % self.chunk == 0:
                    perms, first = self.epochs(key, t, self.chunk)
                s, loss = self.step(s, lr, perms, first, t, self.data)
            states[i] = s
        jax.block_until_ready(states)
        return time.perf_counter() - t0

    def trial_steps(self):
        return self.steps * self.trials


class VmapStep(Variant):
    """Hand-written ``jit(vmap(step))``, one call per step for all trials."""

    name = "vmap"

    def __init__(self, fns, lrs, keys, data, steps, chunk):
        init, _, vstep, _, _, epochs = fns
        self.lrs, self.keys, self.data = lrs, keys, data
        self.steps, self.chunk = steps, chunk
        self.init = jax.jit(jax.vmap(init))
        self.epochs = jax.jit(jax.vmap(epochs, in_axes=(0, None, None)), static_argnums=2)
        self.fn = jax.jit(vstep, donate_argnums=0)

    def compile(self):
        s0 = self.init(self.lrs, self.keys)
        perms, first = self.epochs(self.keys, 0, self.chunk)
        t0 = time.perf_counter()
        self.fn = self.fn.lower(s0, self.lrs, perms, first, 0, self.data).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = compiled_memory(self.fn)

    def run(self) -> float:
        s = jax.block_until_ready(self.init(self.lrs, self.keys))
        t0 = time.perf_counter()
        for t in range(self.steps):
            if t % self.chunk == 0:
                perms, first = self.epochs(self.keys, t, self.chunk)
            s, loss = self.fn(s, self.lrs, perms, first, t, self.data)
        jax.block_until_ready(s)
        return time.perf_counter() - t0

    def trial_steps(self):
        return self.steps * len(self.lrs)


class VmapScan(Variant):
    """Hand-written ``jit(scan(vmap(step)))``, one call per chunk of steps."""

    name = "vmap_scan"

    def __init__(self, fns, lrs, keys, data, steps, chunk, sharding=None):
        init, _, _, chunk_fn, _, _ = fns
        self.lrs, self.keys, self.data = lrs, keys, data
        self.steps, self.chunk, self.sharding = steps, chunk, sharding
        self.init = jax.jit(jax.vmap(init))
        self.chunk_fn = chunk_fn

    def _state(self):
        s = self.init(self.lrs, self.keys)
        if self.sharding is not None:
            s = jax.device_put(s, self.sharding)
        return jax.block_until_ready(s)

    def compile(self):
        if self.sharding is not None:
            self.lrs = jax.device_put(self.lrs, self.sharding)
            self.keys = jax.device_put(self.keys, self.sharding)
        s0 = self._state()
        fn = jax.jit(self.chunk_fn, static_argnames="length", donate_argnums=0)
        t0 = time.perf_counter()
        self.c = fn.lower(s0, self.lrs, self.keys, jnp.int32(0), self.data, self.chunk).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = compiled_memory(self.c)
        s, _ = self.c(s0, self.lrs, self.keys, jnp.int32(0), self.data)
        jax.block_until_ready(s)

    def run(self, chunks: int | None = None) -> float:
        s = self._state()
        n = self.steps // self.chunk if chunks is None else chunks
        t0 = time.perf_counter()
        for i in range(n):
            s, losses = self.c(s, self.lrs, self.keys, jnp.int32(i * self.chunk), self.data)
        jax.block_until_ready(s)
        return time.perf_counter() - t0

    def trial_steps(self):
        return self.steps * len(self.lrs)


def sweep_config(
    widths, batch, lrs, steps, chunk, per_call, batch_sizes=None
) -> jaxtune.SweepConfig:
    grid: dict[str, list] = {"optimizer.learning_rate": list(lrs)}
    if batch_sizes:
        grid["train.batch_size"] = list(batch_sizes)
    return jaxtune.SweepConfig.from_dict(
        {
            "task": {"dataset": "digits", "model": "mlp", "widths": list(widths)},
            "optimizer": {"name": "momentum", "momentum": MOMENTUM, "clip_norm": CLIP},
            "schedule": {"name": "step_decay", "decay_rate": DECAY_RATE, "every": DECAY_EVERY},
            "train": {
                "steps": steps,
                "eval_every": chunk,
                "batch_size": batch,
                "seed": 0,
                "max_trials_per_call": per_call,
            },
            "checkpoint": {"every": 0},
            "log": {"tensorboard": False, "plots": False},
            "sweep": {"method": "grid", "grid": grid},
        }
    )


class Sweep(Variant):
    """``jaxtune.run_sweep``; timing from ``result.timing`` (``run_s`` excludes compilation)."""

    def __init__(self, cfg: jaxtune.SweepConfig, ds, per_call, trials, model):
        self.cfg, self.ds, self.per_call, self.trials = cfg, ds, per_call, trials
        # The same Model object on every call: the engine's compile cache is keyed by id(model),
        # so letting it build the model from the config recompiles on every call.
        self.model = model
        self.name = f"sweep[{per_call}]"
        self.steps = cfg.base["train.steps"]
        self.groups: list = []

    def compile(self):
        # Compile from scratch (the engine caches programs by shape across calls): hide the
        # cache for this first call, then merge it back so the timed repeats reuse the programs.
        cache = compile_lib._COMPILED
        saved = dict(cache)
        cache.clear()
        rss0 = rss_bytes()
        try:
            res = jaxtune.run_sweep(self.cfg, dataset=self.ds, model=self.model)
            self.memory = self._memory(cache)
        finally:
            cache.update(saved)
        self.compile_s = float(res.timing["compile_s"])
        self.groups = res.timing["groups"]
        if self.memory is None:
            self.memory = max(rss_bytes() - rss0, 0)
            self.memory_source = "rss_delta"

    @staticmethod
    def _memory(cache) -> int | None:
        """The largest compiled training program of the sweep just run (per call), read from
        the programs it put in the engine's cache."""
        mems = [
            compiled_memory(program)
            for entry in cache.values()
            for name, program in entry["programs"].items()
            if name.startswith("steps")
        ]
        mems = [m for m in mems if m is not None]
        return max(mems) if mems else None

    def run(self) -> float:
        res = jaxtune.run_sweep(self.cfg, dataset=self.ds, model=self.model)
        return float(res.timing["run_s"])

    def trial_steps(self):
        return self.steps * self.trials


# ----------------------------------------------------------------------------------------------
# One (model, N) cell.


def bench_cell(model_name, n, ds, data, args, log) -> dict[str, Any]:
    spec = MODELS[model_name]
    widths, batch, chunk = spec["widths"], spec["batch"], spec["chunk"]
    n_train = int(ds.train[0].shape[0])
    fns = make_fns(widths, batch, n_train)
    lrs_list = learning_rates(n)
    lrs = jnp.asarray(lrs_list, jnp.float32)
    keys = jnp.stack([jax.random.PRNGKey(0)] * n)  # every trial of the grid has seed 0

    # Steps: enough scan chunks for the vmap+scan timing to last >= min_time.
    progress(f"{model_name} N={n}: compiling vmap_scan")
    scan = VmapScan(fns, lrs, keys, data, chunk, chunk)
    scan.compile()
    progress(f"{model_name} N={n}: calibrating")
    t_chunk = min(scan.run(1) for _ in range(2))
    chunks = max(1, math.ceil(args.min_time / max(t_chunk, 1e-9)))
    if args.steps:
        chunks = max(1, math.ceil(args.steps / chunk))
    chunks = min(chunks, args.max_chunks)
    steps = chunks * chunk
    scan.steps = steps

    loop = Loop(fns, lrs, keys, data, steps, n, chunk)
    loop.compile()
    t_call = loop.calibrate()
    note = ""
    if t_call * steps * n > args.min_time * 1.5:
        # Extrapolate per trial-step: fewer trials (and, if needed, fewer steps).
        loop.trials = max(1, min(n, math.ceil(args.min_time / (t_call * steps))))
        if loop.trials == 1 and t_call * steps > args.min_time * 1.5:
            loop.steps = max(10, math.ceil(args.min_time / t_call))
        note = f"extrapolated from {loop.trials} trial(s) x {loop.steps} steps"
    loop.note = note

    variants: list[Variant] = [loop, VmapStep(fns, lrs, keys, data, steps, chunk), scan]
    per_calls: list[Any] = ["auto"] + [k for k in args.per_call if k < n]
    for k in per_calls:
        cfg = sweep_config(widths, batch, lrs_list, steps, chunk, k)
        variants.append(Sweep(cfg, ds, k, n, fns[4]))
    for v in variants[1:]:
        if v is not scan:
            progress(f"{model_name} N={n}: compiling {v.name}")
            v.compile()

    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants:
            times[v.name].append(v.run())
            progress(f"{model_name} N={n}: repeat {rep} {v.name} {times[v.name][-1]:.2f} s")

    peak = args.peak
    flops = mlp_flops(widths, batch)
    rows = []
    for v in variants:
        t = median(times[v.name])
        tsps = v.trial_steps() / t
        rows.append(
            {
                "model": model_name,
                "n": n,
                "variant": v.name,
                "steps": getattr(v, "steps", steps),
                "trials_timed": getattr(v, "trials", n),
                "trial_steps_per_s": tsps,
                "times_s": times[v.name],
                "compile_s": v.compile_s,
                "memory_bytes": v.memory,
                "memory_source": v.memory_source,
                "flops_per_trial_step": flops,
                "flop_per_s": flops * tsps,
                "frac_of_matmul_peak": flops * tsps / peak,
                "groups": getattr(v, "groups", None),
                "note": v.note,
            }
        )
    base = rows[0]["trial_steps_per_s"]
    for r in rows:
        r["ratio_to_loop"] = r["trial_steps_per_s"] / base
    for r in rows:
        log(fmt_row(r))
    return {"rows": rows, "steps": steps}


# ----------------------------------------------------------------------------------------------
# Batch-size sweep, device split, GPU large.


def bench_batch_sizes(ds, args, steps, log) -> dict[str, Any]:
    spec = MODELS["digits"]
    sizes = [32, 64, 128, 256]
    lrs = learning_rates(8)
    cfg = sweep_config(spec["widths"], spec["batch"], lrs, steps, spec["chunk"], "auto", sizes)
    model = make_fns(spec["widths"], spec["batch"], int(ds.train[0].shape[0]))[4]
    v = Sweep(cfg, ds, "auto", len(sizes) * len(lrs), model)
    v.compile()
    times = [v.run() for _ in range(args.repeats)]
    t = median(times)
    trials = len(sizes) * len(lrs)
    real = sum(g["batch_utilization"] * g["trials"] * g["gathered_batch"] for g in v.groups)
    gathered = sum(g["trials"] * g["gathered_batch"] for g in v.groups)
    useful = sum(mlp_flops(spec["widths"], b) for b in sizes) * len(lrs) * steps / t
    row = {
        "model": "digits",
        "variant": "sweep[auto] batch sizes " + ",".join(map(str, sizes)) + " x 8 lrs",
        "n": trials,
        "steps": steps,
        "trial_steps_per_s": trials * steps / t,
        "times_s": times,
        "compile_s": v.compile_s,
        "memory_bytes": v.memory,
        "groups": v.groups,
        "compute_utilization": real / gathered,
        "useful_flop_per_s": useful,
        "frac_of_matmul_peak": useful / args.peak,
    }
    log(
        f"batch-size sweep: {trials} trials, {len(v.groups)} program(s), "
        f"utilization {row['compute_utilization']:.0%}, "
        f"{row['trial_steps_per_s']:.0f} trial-steps/s, useful "
        f"{useful / 1e9:.1f} GFLOP/s ({row['frac_of_matmul_peak']:.0%} of peak)"
    )
    return row


def shard_child(args) -> None:
    """In a 2-CPU-device process: vmap+scan on 1 device vs sharded over 2 (interleaved)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    ds = jaxtune.load_digits(flat=True)
    data = jax.device_put(ds.train)
    n_train = int(ds.train[0].shape[0])
    out = []
    devices = jax.devices()
    mesh = Mesh(np.array(devices[:2]), ("trials",))
    sharding = NamedSharding(mesh, P("trials"))
    for model_name in args.models:
        spec = MODELS[model_name]
        n = args.shard_n
        fns = make_fns(spec["widths"], spec["batch"], n_train)
        lrs = jnp.asarray(learning_rates(n), jnp.float32)
        keys = jnp.stack([jax.random.PRNGKey(0)] * n)
        steps = args.shard_steps[model_name]
        one = VmapScan(fns, lrs, keys, data, steps, spec["chunk"])
        two = VmapScan(fns, lrs, keys, data, steps, spec["chunk"], sharding=sharding)
        one.compile()
        two.compile()
        t1, t2 = [], []
        for _ in range(args.repeats):
            t1.append(one.run())
            t2.append(two.run())
        tsps1, tsps2 = n * steps / median(t1), n * steps / median(t2)
        out.append(
            {
                "model": model_name,
                "n": n,
                "steps": steps,
                "devices": len(devices),
                "one_device_trial_steps_per_s": tsps1,
                "two_devices_trial_steps_per_s": tsps2,
                "two_over_one": tsps2 / tsps1,
                "times_one_s": t1,
                "times_two_s": t2,
            }
        )
    print("SHARD_JSON " + json.dumps(out), flush=True)


def bench_sharding(args, steps_by_model, log) -> list[dict[str, Any]]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    cmd = [
        sys.executable,
        __file__,
        "--shard-child",
        "--models",
        ",".join(steps_by_model),
        "--shard-n",
        str(args.shard_n),
        "--shard-steps",
        json.dumps(steps_by_model),
        "--repeats",
        str(args.repeats),
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    for line in p.stdout.splitlines():
        if line.startswith("SHARD_JSON "):
            rows = json.loads(line[len("SHARD_JSON ") :])
            for r in rows:
                log(
                    f"2 CPU devices vs 1 ({r['model']}, N={r['n']}): "
                    f"{r['two_over_one']:.2f}x ({r['one_device_trial_steps_per_s']:.0f} -> "
                    f"{r['two_devices_trial_steps_per_s']:.0f} trial-steps/s)"
                )
            return rows
    log("sharding experiment failed:\n" + p.stderr[-2000:])
    return [{"error": p.stderr[-2000:]}]


def bench_gpu_large(ds, args, log) -> dict[str, Any]:
    spec = MODELS["digits"]
    out = {}
    for n in (1, 1024):
        cfg = sweep_config(spec["widths"], spec["batch"], learning_rates(n), 200, 50, "auto")
        t0 = time.perf_counter()
        res = jaxtune.run_sweep(cfg, dataset=ds)  # engine-built model: as a user runs it
        out[n] = {
            "wall_s": time.perf_counter() - t0,
            "compile_s": res.timing["compile_s"],
            "run_s": res.timing["run_s"],
        }
    r = {"n1": out[1], "n1024": out[1024], "wall_ratio": out[1024]["wall_s"] / out[1]["wall_s"]}
    log(f"gpu-large: N=1024 wall {r['wall_ratio']:.2f}x N=1 ({out[1024]['wall_s']:.1f} s)")
    return r


# ----------------------------------------------------------------------------------------------
# Output.

HEADER = (
    f"{'model':<9}{'N':>5} {'variant':<13}{'steps':>6}{'trial-steps/s':>14}{'x loop':>8}"
    f"{'compile s':>10}{'mem MB':>9}{'GFLOP/s':>9}{'% peak':>8}  note"
)


def fmt_row(r: dict[str, Any]) -> str:
    mem = "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 2**20:.1f}"
    note = r["note"]
    if r.get("groups") and r["variant"].startswith("sweep"):
        g = r["groups"][0]
        note = (note + f" calls={g['calls']}x{g['trials_per_call']}").strip()
    return (
        f"{r['model']:<9}{r['n']:>5} {r['variant']:<13}{r['steps']:>6}"
        f"{r['trial_steps_per_s']:>14.0f}{r['ratio_to_loop']:>8.1f}{r['compile_s']:>10.2f}"
        f"{mem:>9}{r['flop_per_s'] / 1e9:>9.2f}{100 * r['frac_of_matmul_peak']:>7.1f}%  {note}"
    )


def check_targets(rows: list[dict[str, Any]], peak: float) -> list[dict[str, Any]]:
    def get(model, n, variant):
        for r in rows:
            if (r["model"], r["n"], r["variant"]) == (model, n, variant):
                return r
        return None

    out = []

    def add(name, value, goal, ok):
        out.append({"target": name, "measured": value, "goal": goal, "met": ok})

    r = get("dispatch", 128, "sweep[auto]")
    if r:
        ratio = r["ratio_to_loop"]
        add("dispatch N=128: run_sweep / loop", ratio, ">= 30", ratio >= 30)
        s = get("dispatch", 128, "vmap_scan")
        add("dispatch N=128: vmap_scan / loop (reference ~36)", s["ratio_to_loop"], "~36", None)
    ns = sorted({r["n"] for r in rows if r["model"] == "digits"})
    for n in ns:
        a, b = get("digits", n, "sweep[auto]"), get("digits", n, "vmap_scan")
        ratio = a["trial_steps_per_s"] / b["trial_steps_per_s"]
        add(f"digits N={n}: run_sweep / vmap_scan", ratio, ">= 1.0", ratio >= 1.0)
    r = get("digits", 128, "sweep[auto]")
    if r:
        f = r["frac_of_matmul_peak"]
        add("digits N=128: run_sweep fraction of matmul peak", f, ">= 0.65", f >= 0.65)
    for model in ("dispatch", "digits"):
        a, b = get(model, 1, "sweep[auto]"), get(model, 256, "sweep[auto]")
        if a and b:
            ratio = b["compile_s"] / a["compile_s"]
            add(f"{model}: run_sweep compile N=256 / N=1", ratio, "<= 1.5", ratio <= 1.5)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N in {1, 8}, short timings (< 2 min)")
    p.add_argument("--n", default=None, help="trial counts, e.g. 1,8,32 (default 1,8,32,128,256)")
    p.add_argument("--models", default="dispatch,digits", help="dispatch,digits")
    p.add_argument("--steps", type=int, default=0, help="steps per timing (default: auto)")
    p.add_argument("--min-time", type=float, default=1.0, help="target seconds per timing")
    p.add_argument("--max-chunks", type=int, default=200, help="cap on scan chunks per timing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median)")
    p.add_argument("--per-call", default="8,16,32", help="fixed train.max_trials_per_call values")
    p.add_argument("--out", default="benchmarks/results/sweep_throughput.json")
    p.add_argument("--no-shard", action="store_true", help="skip the 2-CPU-device experiment")
    p.add_argument("--shard-n", type=int, default=128, help="N of the 2-CPU-device experiment")
    p.add_argument("--gpu-large", action="store_true", help="also time N=1024 vs N=1 (wall)")
    p.add_argument("--no-batch-sizes", action="store_true", help="skip the batch-size row")
    p.add_argument("--shard-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shard-steps", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in MODELS:
            p.error(f"--models: unknown model {m!r}; expected a subset of {','.join(MODELS)}")
    args.per_call = [int(x) for x in args.per_call.split(",") if x]
    if args.shard_child:
        args.shard_steps = json.loads(args.shard_steps)
        shard_child(args)
        return 0
    if args.n:
        ns = [int(x) for x in args.n.split(",") if x]
    elif args.quick:
        ns = [1, 8]
    else:
        ns = [1, 8, 32, 128, 256]
    if args.quick:
        args.min_time = min(args.min_time, 0.2)
        args.max_chunks = min(args.max_chunks, 4)
        args.no_shard = True

    t_start = time.perf_counter()
    lines: list[str] = []

    def log(s: str) -> None:
        lines.append(s)
        print(s, flush=True)

    backend = jax.default_backend()
    machine = {
        "backend": backend,
        "device_count": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "jaxtune_version": getattr(jaxtune, "__version__", None),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    log(
        f"backend={backend} devices={machine['device_count']} cpus={machine['cpu_count']} "
        f"jax={jax.__version__} load={machine['loadavg_at_start']}"
    )
    ds = jaxtune.load_digits(flat=True)
    data = jax.device_put(ds.train)

    peaks = [matmul_peak()]
    args.peak = peaks[0]
    log(f"matmul peak (2048x2048 f32 jnp.dot): {args.peak / 1e9:.1f} GFLOP/s")
    log(HEADER)
    rows: list[dict[str, Any]] = []
    steps_by_model: dict[str, int] = {}
    for model_name in args.models:
        for n in ns:
            cell = bench_cell(model_name, n, ds, data, args, log)
            rows.extend(cell["rows"])
            partial = {"machine": machine, "partial": True, "matmul_peaks": peaks, "rows": rows}
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(partial, indent=2, default=str))
            if n == args.shard_n or (args.shard_n not in ns and n == max(ns)):
                steps_by_model[model_name] = cell["steps"]
            peaks.append(matmul_peak())
    # Report fractions against the median of the peaks measured through the run.
    peak = median(peaks)
    for r in rows:
        r["frac_of_matmul_peak"] = r["flop_per_s"] / peak
    args.peak = peak
    log(
        f"matmul peak: median {peak / 1e9:.1f} GFLOP/s over {len(peaks)} measurements "
        f"({min(peaks) / 1e9:.1f} .. {max(peaks) / 1e9:.1f})"
    )

    batch_row = None
    if "digits" in args.models and not args.no_batch_sizes:
        bs_steps = MODELS["digits"]["chunk"] * (2 if args.quick else 4)
        if args.steps:
            bs_steps = args.steps
        batch_row = bench_batch_sizes(ds, args, bs_steps, log)

    compile_vs_n = {}
    for model_name in args.models:
        sw = {
            r["n"]: r["compile_s"]
            for r in rows
            if r["model"] == model_name and r["variant"] == "sweep[auto]"
        }
        if len(sw) > 1:
            lo, hi = min(sw), max(sw)
            compile_vs_n[model_name] = {
                "n_low": lo,
                "n_high": hi,
                "compile_s": sw,
                "ratio": sw[hi] / sw[lo],
            }
            log(
                f"{model_name}: run_sweep compile N={hi} / N={lo} = {sw[hi] / sw[lo]:.2f}x "
                f"({sw[lo]:.2f} s -> {sw[hi]:.2f} s)"
            )

    shard = None
    if not args.no_shard and backend == "cpu" and steps_by_model:
        args.shard_n = args.shard_n if args.shard_n in ns else max(ns)
        shard = bench_sharding(args, steps_by_model, log)

    gpu_large = bench_gpu_large(ds, args, log) if args.gpu_large else None

    targets = check_targets(rows, peak)
    if targets:
        log("targets:")
        for t in targets:
            met = {True: "MET", False: "MISSED", None: "info"}[t["met"]]
            log(f"  {t['target']}: {t['measured']:.3g} (goal {t['goal']}) {met}")
    total = time.perf_counter() - t_start
    log(f"total wall time {total:.0f} s")

    out = {
        "machine": machine,
        "settings": {
            "ns": ns,
            "models": {m: {**MODELS[m], "widths": list(MODELS[m]["widths"])} for m in args.models},
            "optimizer": f"momentum {MOMENTUM}, clip {CLIP}, step_decay({DECAY_RATE}, "
            f"every {DECAY_EVERY})",
            "repeats": args.repeats,
            "min_time_s": args.min_time,
            "quick": args.quick,
            "flops": "analytic: 6 * batch * sum(in*out) per trial-step",
        },
        "matmul_peak_flop_per_s": peak,
        "matmul_peaks": peaks,
        "rows": rows,
        "batch_size_sweep": batch_row,
        "compile_vs_n": compile_vs_n,
        "two_cpu_devices": shard,
        "gpu_large": gpu_large,
        "targets": targets,
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "total_wall_s": total,
        "table": lines,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
