#!/usr/bin/env python
"""What the sweep engine costs per step, against hand-written loops, side by side in one run.

Two questions, each answered by interleaved rounds: every round runs each variant once, and
the reported ratio is the median over rounds of that round's ratio (a paired comparison, so a
machine that slows down for a while slows both sides of a round), with its quartiles:

1. ``small``: a dispatch-bound MLP 64-32-10 on digits, batch 32, N trials of momentum SGD with one
   learning rate each (one seed, so every trial sees the same batches). ``run_sweep`` against two
   hand-written ``jit(scan(vmap(step)))`` loops written here with plain optax: one that gathers
   the batch once and broadcasts it (``shared``), one where every trial gathers its own copy of
   the same indices (``per_trial``). ``run_sweep`` also evaluates every trial on the validation
   and test splits once per chunk, checks divergence and records per-step metrics; that work is
   part of its time.
2. ``task``: the built-in classification path against a user :class:`jaxtune.Task` that restates
   it (same model, loss and metric written by the user), on the digits MLP 64-256-256-10.

Run::

    python benchmarks/engine_overhead.py                        # full: N=128, ~3 minutes
    python benchmarks/engine_overhead.py --quick                # a smoke run
    python benchmarks/engine_overhead.py --out benchmarks/results/engine_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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

MOMENTUM = 0.9


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _forward(params, x):
    layers = sorted(params, key=lambda name: int(name.split("_")[1]))
    for i, name in enumerate(layers):
        x = x @ params[name]["kernel"] + params[name]["bias"]
        if i < len(layers) - 1:
            x = jnp.maximum(x, 0.0)
    return x


class HandWritten:
    """``jit(scan(vmap(step)))`` with plain optax, the epoch shuffles computed once per chunk."""

    def __init__(self, lrs, widths, batch, chunk, splits, *, shared: bool):
        x, y = (jnp.asarray(a) for a in splits.train)
        n = x.shape[0]
        spe = n // batch
        model = jaxtune.mlp(num_outputs=10, input_shape=(64,), widths=widths)
        init_key, data_key, _ = jax.random.split(jax.random.PRNGKey(0), 3)
        params0, _ = model.init(init_key)

        def tx(lr):
            return optax.sgd(lr, momentum=MOMENTUM)

        def step(params, opt_state, lr, bx, by):
            def loss_fn(p):
                return optax.softmax_cross_entropy_with_integer_labels(_forward(p, bx), by).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx(lr).update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def chunk_fn(state, lrs, start):
            first = start // spe
            num = min(-(-chunk // spe) + 1, chunk)
            perms = epoch_permutations(data_key, first, num, n)

            def body(s, t):
                idx = batch_from_permutations(perms, first, t, batch, batch)
                if shared:
                    bx, by = x[idx], y[idx]
                    p, o, loss = jax.vmap(step, in_axes=(0, 0, 0, None, None))(*s, lrs, bx, by)
                else:
                    idxs = jnp.broadcast_to(idx, (lrs.shape[0], batch))
                    p, o, loss = jax.vmap(step)(*s, lrs, x[idxs], y[idxs])
                return (p, o), loss

            return jax.lax.scan(body, state, start + jnp.arange(chunk, dtype=jnp.int32))

        self.lrs = jnp.asarray(lrs, jnp.float32)
        self.chunk = chunk
        stack = lambda t: jax.tree.map(lambda a: jnp.stack([a] * len(lrs)), t)
        self.init = lambda: (stack(params0), jax.vmap(lambda lr: tx(lr).init(params0))(self.lrs))
        self.fn = jax.jit(chunk_fn, donate_argnums=0).lower(self.init(), self.lrs, 0).compile()

    def run(self, steps: int) -> float:
        state = jax.block_until_ready(self.init())
        t0 = time.perf_counter()
        for c in range(steps // self.chunk):
            state, _ = self.fn(state, self.lrs, np.int32(c * self.chunk))
        jax.block_until_ready(state)
        return time.perf_counter() - t0


def sweep_config(lrs, widths, batch, chunk, steps) -> dict[str, Any]:
    return {
        "task": {"dataset": "digits", "widths": list(widths)},
        "optimizer": {"name": "momentum", "momentum": MOMENTUM},
        "train": {"steps": steps, "eval_every": chunk, "batch_size": batch},
        "sweep": {"grid": {"optimizer.learning_rate": list(lrs)}},
    }


def restated_task(widths) -> jaxtune.Task:
    """The built-in classification task, written out as a user would."""
    splits = jaxtune.load_digits()
    model = jaxtune.mlp(num_outputs=10, input_shape=(64,), widths=tuple(widths))

    def init(key, hp):
        params, state = model.init(key)
        return jaxtune.initializers.scale_kernels(params, hp["task.init_scale"]), state

    return jaxtune.Task(
        init,
        model.apply,
        lambda out, y, hp: optax.softmax_cross_entropy_with_integer_labels(out, y),
        lambda out, y: {"accuracy": (jnp.argmax(out, -1) == y).astype(jnp.float32)},
        splits,
    )


def timed_sweep(cfg, **kwargs) -> float:
    return float(jaxtune.run_sweep(cfg, **kwargs).timing["run_s"])


def interleave(variants: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(fn())
    return times


def paired(times: dict[str, list[float]], base: str, other: str) -> dict[str, float]:
    """Median and quartiles over rounds of ``time(base) / time(other)`` (>1: other is faster)."""
    ratios = np.asarray(times[base]) / np.asarray(times[other])
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3)}


def bench_small(n: int, steps: int, repeats: int) -> dict[str, Any]:
    widths, batch, chunk = (32,), 32, 100
    lrs = [float(v) for v in np.geomspace(1e-3, 1.0, n)]
    splits = jaxtune.load_digits()
    log(f"small N={n}: compiling")
    shared = HandWritten(lrs, widths, batch, chunk, splits, shared=True)
    per_trial = HandWritten(lrs, widths, batch, chunk, splits, shared=False)
    cfg = sweep_config(lrs, widths, batch, chunk, steps)
    first = jaxtune.run_sweep(cfg)
    log(f"small N={n}: timing {repeats} interleaved repeats of {steps} steps")
    times = interleave(
        {
            "hand_shared": lambda: shared.run(steps),
            "hand_per_trial": lambda: per_trial.run(steps),
            "run_sweep": lambda: timed_sweep(cfg),
        },
        repeats,
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": "MLP 64-32-10, batch 32, momentum SGD, one seed",
        "trials": n,
        "steps": steps,
        "chunk": chunk,
        "groups": first.timing["groups"],
        "trials_per_call": first.timing["trials_per_call"],
        "seconds": times,
        "trial_steps_per_s": {k: n * steps / v for k, v in med.items()},
        "run_sweep_vs_hand_shared": paired(times, "hand_shared", "run_sweep"),
        "run_sweep_vs_hand_per_trial": paired(times, "hand_per_trial", "run_sweep"),
    }


def bench_task(n: int, steps: int, repeats: int) -> dict[str, Any]:
    widths, batch, chunk = (256, 256), 128, 25
    lrs = [float(v) for v in np.geomspace(1e-3, 1.0, n)]
    cfg = sweep_config(lrs, widths, batch, chunk, steps)
    task = restated_task(widths)
    log(f"task N={n}: compiling")
    jaxtune.run_sweep(cfg)
    jaxtune.run_sweep(cfg, task=task)
    log(f"task N={n}: timing {repeats} interleaved repeats of {steps} steps")
    times = interleave(
        {"builtin": lambda: timed_sweep(cfg), "user_task": lambda: timed_sweep(cfg, task=task)},
        repeats,
    )
    return {
        "model": "MLP 64-256-256-10, batch 128, momentum SGD",
        "trials": n,
        "steps": steps,
        "seconds": times,
        "user_task_vs_builtin": paired(times, "builtin", "user_task"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small N and few steps (smoke run)")
    p.add_argument("--n", type=int, default=128, help="trials of the small-MLP comparison")
    p.add_argument("--task-n", type=int, default=32, help="trials of the user-task comparison")
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.quick:
        args.n, args.task_n, args.repeats = 16, 8, 2
    small_steps = 400 if args.quick else 1000
    task_steps = 50 if args.quick else 100
    results = {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "small": bench_small(args.n, small_steps, args.repeats),
        "task": bench_task(args.task_n, task_steps, args.repeats),
    }
    s, t = results["small"], results["task"]
    print(f"backend {results['backend']} x {results['devices']}")
    print(
        f"small MLP, N={s['trials']}: trial-steps/s "
        + ", ".join(f"{k} {v:,.0f}" for k, v in s["trial_steps_per_s"].items())
    )

    def fmt(r: dict[str, float]) -> str:
        return f"{r['median']:.3f}x (quartiles {r['q1']:.3f}..{r['q3']:.3f})"

    print(f"  run_sweep vs hand-written, shared batch: {fmt(s['run_sweep_vs_hand_shared'])}")
    per_trial = fmt(s["run_sweep_vs_hand_per_trial"])
    print(f"  run_sweep vs hand-written, per-trial gather: {per_trial}")
    task_ratio = fmt(t["user_task_vs_builtin"])
    print(f"user Task vs built-in classification (N={t['trials']}): {task_ratio}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
