#!/usr/bin/env python
"""Execution forms side by side: every workload x trial count x form, beside two baselines.

For each workload of ``jaxtune.workloads`` (and the digits MLP at batch 128 with momentum SGD,
``digits_mlp_b128``) and each trial count N (an N-point learning-rate sweep around the
workload's reference learning rate, one seed, so the trials share their batches), this times:

* ``loop``: a Python loop of solo jitted steps, one trial after another (hand-written from the
  task's ``init`` / ``apply`` / ``loss`` and an optax chain, batches gathered on the device by
  the documented index rule);
* ``scan_vmap``: a hand-written ``jit(scan(vmap(step)))`` over a chunk, the batch of each step
  gathered once and shared by every trial;
* ``scan_vmap_norm``: the same with the global gradient norm of every step recorded, as the
  engine records it (for its divergence check, clip rate and gradient-health report), so that
  the cost of that one feature is measured apart from the rest of the engine;
* ``jaxtune[FORM]``: ``jaxtune.run_sweep`` with ``train.execution = FORM`` for every form, and
  ``jaxtune[auto]`` (what ``auto`` chose is recorded). ``--grad-norm off`` runs them with
  ``train.grad_norm = false``: no gradient norm per step, the per-step work of ``scan_vmap``;
  ``--grad-norm both`` adds ``jaxtune[auto,no_norm]`` beside the rest (row key ``no_norm``).

Every variant does the same work per chunk of ``--chunk`` steps: the training steps, then an
evaluation of every trial on the validation and test splits (the engine evaluates after each
chunk; the baselines do the same). Variants are compiled first, then timed in interleaved
rounds (median of ``--repeats``; every other round in reverse order), every variant running
the same whole chunks per timing, enough for the fastest one's to last ``--min-time``
seconds. ``auto`` is also compared round by round: the median of its per-round ratios to each
baseline and to the fastest form, with a 95% paired t interval (``*_paired``, ``*_ci``). A
variant whose first timing takes longer than ``--max-time`` seconds is timed once. Absolute
rates depend on the machine's load; the ratios are measured side by side.

    python benchmarks/execution.py --quick
    python benchmarks/execution.py --out benchmarks/results/execution_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
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

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import machine, paired_interval

FORMS = ("scan/vmap", "scan:16/vmap", "host/vmap", "host/unroll", "host/map", "scan/map")
_T0 = time.perf_counter()
TOO_SLOW: set[tuple[str, str]] = set()  # (workload, form) timed once at a smaller N


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Cases.


def cases(names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        if name == "digits_mlp_b128":
            w = jaxtune.workloads.get_workload("digits_mlp")
            out[name] = {"workload": w, "batch": 128, "optimizer": "momentum", "lr": 0.1}
        else:
            w = jaxtune.workloads.get_workload(name)
            out[name] = {
                "workload": w,
                "batch": w.batch_size,
                "optimizer": w.optimizer,
                "lr": w.learning_rate,
            }
    return out


def learning_rates(lr: float, n: int) -> list[float]:
    return [lr] if n == 1 else [float(v) for v in lr * np.geomspace(1 / 3, 3, n)]


def chain(name: str, lr: Any) -> optax.GradientTransformation:
    momentum = 0.9 if name in ("momentum", "nesterov") else None
    return jaxtune.make_optimizer(name, lr, momentum=momentum)


# ----------------------------------------------------------------------------------------------
# Baselines, written from the task's pieces (not the engine's step).


class Baselines:
    def __init__(self, task, opt_name, lrs, batch, chunk):
        self.task, self.batch, self.chunk = task, batch, chunk
        self.lrs = jnp.asarray(lrs, jnp.float32)
        data = task.data
        self.train = jax.tree.map(jnp.asarray, data.train)
        self.evals = [
            jax.tree.map(jnp.asarray, s) for s in (data.valid, data.test) if s is not None
        ]
        self.n_train = int(jax.tree.leaves(self.train)[0].shape[0])
        root = jax.random.PRNGKey(0)
        self.init_key, self.data_key = jax.random.split(root, 4)[:2]
        n_train, spe = self.n_train, self.n_train // batch
        num = min(math.ceil(chunk / spe) + 1, chunk)

        def init(lr):
            params, ms = task.init(self.init_key, {"optimizer.learning_rate": lr})
            return params, ms, chain(opt_name, lr).init(params)

        def shuffle(start):
            first = start // spe
            return epoch_permutations(self.data_key, first, num, n_train), first

        def step(state, lr, batch_xy, t, norm=False):
            params, ms, opt = state
            x, y = batch_xy
            hp = {"optimizer.learning_rate": lr}

            def loss_fn(p):
                out, new_ms = task.apply(p, ms, x, train=True, key=None, mask=None)
                return jnp.mean(task.loss(out, y, hp)), new_ms

            (loss, new_ms), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            upd, opt = chain(opt_name, lr).update(g, opt, params)
            out = (loss, optax.tree.norm(g)) if norm else loss
            return (optax.apply_updates(params, upd), new_ms, opt), out

        def gather(perms, first, t):
            idx = batch_from_permutations(perms, first, t, batch, batch)
            return jax.tree.map(lambda a: a[idx], self.train)

        def evaluate(state, lr):
            params, ms, _ = state
            out = []
            for x, y in self.evals:
                o, _ = task.apply(params, ms, x, train=False, key=None, mask=None)
                out.append(jnp.mean(task.loss(o, y, {"optimizer.learning_rate": lr})))
            return jnp.stack(out)

        self.init = jax.jit(init)
        self.shuffle = jax.jit(shuffle)

        def solo(state, lr, perms, first, t):
            return step(state, lr, gather(perms, first, t), t)

        self.solo = jax.jit(solo, donate_argnums=0)
        self.solo_eval = jax.jit(evaluate)

        def vchunk(state, lrs, start, norm=False):
            perms, first = shuffle(start)

            def body(s, t):
                b = gather(perms, first, t)
                return jax.vmap(lambda si, lr: step(si, lr, b, t, norm))(s, lrs)

            ts = start + jnp.arange(chunk, dtype=jnp.int32)
            state, losses = jax.lax.scan(body, state, ts)
            return state, losses, jax.vmap(evaluate)(state, lrs)

        #: ``vchunk(state, lrs, start, norm)``: a chunk and its evaluation (``norm``: each
        #: step also records the global gradient norm, as the engine does).
        self.vchunk = jax.jit(vchunk, donate_argnums=0, static_argnames="norm")
        self.vinit = jax.jit(jax.vmap(init))

        def steps_only(state, lrs, start, norm):
            perms, first = shuffle(start)

            def body(s, t):
                b = gather(perms, first, t)
                return jax.vmap(lambda si, lr: step(si, lr, b, t, norm))(s, lrs)

            return jax.lax.scan(body, state, start + jnp.arange(chunk, dtype=jnp.int32))

        #: ``steps_only(state, lrs, start, norm)``: the chunk's steps without the evaluation
        #: (``norm``: each step also computes the gradient norm), for benchmarks/quarantine.py.
        self.steps_only = jax.jit(steps_only, donate_argnums=0, static_argnames="norm")

    def compile(self) -> float:
        t0 = time.perf_counter()
        self.run_loop(1, trials=1)
        self.run_scan(1)
        self.run_scan(1, norm=True)
        return time.perf_counter() - t0

    def run_loop(self, chunks: int, trials: int | None = None) -> float:
        """Trial-steps per second of the solo loop over ``chunks`` chunks."""
        lrs = list(self.lrs)[: trials or len(self.lrs)]
        states = [self.init(lr) for lr in lrs]
        jax.block_until_ready(states)
        t0 = time.perf_counter()
        for i, lr in enumerate(lrs):
            s = states[i]
            for c in range(chunks):
                perms, first = self.shuffle(jnp.int32(c * self.chunk))
                for t in range(c * self.chunk, (c + 1) * self.chunk):
                    s, loss = self.solo(s, lr, perms, first, jnp.int32(t))
                np.asarray(self.solo_eval(s, lr))
            states[i] = s
        jax.block_until_ready(states)
        return len(lrs) * chunks * self.chunk / (time.perf_counter() - t0)

    def run_scan(self, chunks: int, norm: bool = False) -> float:
        s = jax.block_until_ready(self.vinit(self.lrs))
        t0 = time.perf_counter()
        for c in range(chunks):
            s, losses, ev = self.vchunk(s, self.lrs, jnp.int32(c * self.chunk), norm=norm)
            jax.tree.map(np.asarray, (losses, ev))
        jax.block_until_ready(s)
        return len(self.lrs) * chunks * self.chunk / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# The engine.


def engine_config(case, lrs, chunk, chunks, form, grad_norm=True):
    w = case["workload"]
    return {
        "task": {"factory": w.factory},
        "optimizer": {
            "name": case["optimizer"],
            "momentum": 0.9 if case["optimizer"] in ("momentum", "nesterov") else None,
        },
        "train": {
            "steps": chunk * chunks,
            "eval_every": chunk,
            "batch_size": case["batch"],
            "execution": form,
            "grad_norm": grad_norm,
        },
        "select": {"metric": w.metric, "mode": w.mode},
        "log": {"tensorboard": False, "plots": False},
        "sweep": {"grid": {"optimizer.learning_rate": lrs}},
    }


def decide_auto(case, task, lrs, chunk, grad_norm=True) -> dict:
    """What ``auto`` chooses for a full-length sweep of this workload (N trials x its step
    budget): the choice is measured once and cached in the process, so the short timed runs
    below run it."""
    from jaxtune.engine.bind import Binder
    from jaxtune.engine.prepare import Preparer

    w = case["workload"]
    cfg = jaxtune.SweepConfig.from_dict(engine_config(case, lrs, chunk, 1, "auto", grad_norm))
    t0 = time.perf_counter()
    prep = Preparer(cfg, Binder(cfg, task=task), planned_trial_steps=len(lrs) * w.steps)
    pop = prep.population(list(enumerate(jaxtune.config.expand_trials(cfg))))
    return {"execution": pop.execution, "decide_s": time.perf_counter() - t0}


def run_engine(case, task, lrs, chunk, chunks, form, grad_norm=True) -> tuple[float, dict]:
    cfg = engine_config(case, lrs, chunk, chunks, form, grad_norm)
    result = jaxtune.run_sweep(cfg, task=task)
    return float(result.timing["trial_steps_per_s"]), {
        "execution": result.timing["execution"],
        "trials_per_call": result.timing["trials_per_call"],
        "calls": [g["calls"] for g in result.timing["groups"]],
        "compile_s": result.timing["compile_s"],
    }


# ----------------------------------------------------------------------------------------------
# One cell: a case at one trial count.


def cell(name, case, n, args) -> dict[str, Any]:
    w = case["workload"]
    task = w.task({})
    lrs = learning_rates(case["lr"], n)
    chunk = args.chunk
    base = Baselines(task, case["optimizer"], lrs, case["batch"], chunk)
    log(f"{name} N={n}: compiling baselines")
    compile_base = base.compile()
    log(f"{name} N={n}: what auto chooses for {n} trials x {w.steps} steps")
    norm = args.grad_norm != "off"  # "both": the forms and auto with it, auto also without
    decided = decide_auto(case, task, lrs, chunk, norm)
    log(f"  {decided}")
    variants: dict[str, Any] = {
        "loop": lambda k: base.run_loop(k),
        "scan_vmap": lambda k: base.run_scan(k),
        "scan_vmap_norm": lambda k: base.run_scan(k, norm=True),
    }
    per_device = math.ceil(n / jax.device_count())
    # Pruned: trials unrolled past 16 per device (auto never unrolls more), and a form whose
    # calibration at a smaller N of this workload took longer than --max-time (timed once):
    # its cost grows with N and it is far from the fastest.
    forms = [
        f
        for f in args.forms
        if not ("unroll" in f.split("/")[1] and per_device > 16) and (name, f) not in TOO_SLOW
    ]
    pruned = [f for f in args.forms if f not in forms]
    info: dict[str, Any] = {}
    for form in [*forms, "auto"]:

        def run(k, form=form):
            rate, meta = run_engine(case, task, lrs, chunk, k, form, norm)
            info[form] = meta
            return rate

        variants[f"jaxtune[{form}]"] = run
    if args.grad_norm == "both":

        def run_bare(k):
            rate, meta = run_engine(case, task, lrs, chunk, k, "auto", False)
            info["auto,no_norm"] = meta
            return rate

        variants["jaxtune[auto,no_norm]"] = run_bare
    # Calibrate: one chunk of each variant (compiles the engine's programs too).
    chunks, rates = {}, {v: [] for v in variants}
    for v, fn in variants.items():
        log(f"{name} N={n}: calibrating {v}")
        t0 = time.perf_counter()
        r = fn(1)
        elapsed = n * chunk / r if r > 0 else math.inf
        if v.startswith("jaxtune") and v != "jaxtune[auto]":
            elapsed = n * chunk / r
        chunks[v] = max(1, math.ceil(args.min_time / max(elapsed, 1e-9)))
        if elapsed > args.max_time:
            rates[v].append(r)  # timed once: too slow to repeat
            chunks[v] = 0
            if v.startswith("jaxtune[") and v != "jaxtune[auto]":
                TOO_SLOW.add((name, v[len("jaxtune[") : -1]))
        log(f"  {v}: {r:.1f} trial-steps/s ({time.perf_counter() - t0:.1f} s with compile)")
    # Every variant timed repeatedly runs the same number of chunks: enough for the fastest
    # one's timing to last --min-time. (A count per variant gave a sweep, whose one-chunk
    # calibration carries its fixed per-run cost, a third of the baseline's chunks at N = 1 to
    # amortize that cost over.)
    common = max(chunks.values())
    chunks = {v: common if c else 0 for v, c in chunks.items()}
    order = list(variants)
    for rep in range(args.repeats):
        # Every other round runs the variants in reverse order, so that no variant always
        # follows the same one (a variant's speed depends on what ran just before it).
        for v in order if rep % 2 == 0 else order[::-1]:
            if chunks[v]:
                rates[v].append(variants[v](chunks[v]))
        log(f"{name} N={n}: round {rep + 1}/{args.repeats}")
    med = {v: statistics.median(r) for v, r in rates.items()}
    form_rates = {f: med[f"jaxtune[{f}]"] for f in forms}
    fastest = max(form_rates, key=form_rates.get)
    auto = med["jaxtune[auto]"]
    row = {
        "workload": name,
        "n": n,
        "chunk": chunk,
        "batch": case["batch"],
        "optimizer": case["optimizer"],
        "rates": med,
        "samples": rates,
        "fastest_form": fastest,
        "auto_form": [e["form"] for e in info["auto"]["execution"]],
        "auto_how": [e["how"] for e in info["auto"]["execution"]],
        "auto_measured": [e.get("rates", {}) for e in info["auto"]["execution"]],
        "trials_per_call": info["auto"]["trials_per_call"],
        "auto_decision": decided,
        "auto_vs_fastest": auto / form_rates[fastest],
        "auto_vs_loop": auto / med["loop"],
        "auto_vs_scan_vmap": auto / med["scan_vmap"],
        "auto_vs_scan_vmap_norm": auto / med["scan_vmap_norm"],
        **paired(
            rates,
            "jaxtune[auto]",
            {
                "fastest": f"jaxtune[{fastest}]",
                "loop": "loop",
                "scan_vmap": "scan_vmap",
                "scan_vmap_norm": "scan_vmap_norm",
            },
        ),
        "pruned": pruned,
        "baseline_compile_s": compile_base,
    }
    if "auto,no_norm" in info:
        bare = "jaxtune[auto,no_norm]"
        row["no_norm"] = {
            "form": [e["form"] for e in info["auto,no_norm"]["execution"]],
            **paired(
                rates,
                bare,
                {
                    "scan_vmap": "scan_vmap",
                    "scan_vmap_norm": "scan_vmap_norm",
                    "auto": "jaxtune[auto]",
                },
            ),
        }
        log(
            f"{name} N={n}: auto without the gradient norm ({row['no_norm']['form']}): "
            + ", ".join(
                f"{_paired_text(row['no_norm'], k)} x {k}"
                for k in ("scan_vmap", "scan_vmap_norm", "auto")
            )
        )
    log(
        f"{name} N={n}: auto {auto:.1f} ({row['auto_form']}) = {row['auto_vs_fastest']:.2f}x "
        f"fastest ({fastest} {form_rates[fastest]:.1f}), {row['auto_vs_loop']:.2f}x loop, "
        f"{row['auto_vs_scan_vmap']:.2f}x scan_vmap (paired {_paired_text(row)}), "
        f"{row['auto_vs_scan_vmap_norm']:.2f}x scan_vmap_norm "
        f"(paired {_paired_text(row, 'scan_vmap_norm')})"
    )
    return row


def paired(rates: dict[str, list[float]], a: str, others: dict[str, str]) -> dict[str, Any]:
    """``a``'s rate over each of ``others`` round by round: the median of the per-round ratios
    (``<a>_vs_<label>_paired``) and its 95% confidence interval (``..._ci``), where both were
    timed every round (a variant timed once has neither)."""
    out: dict[str, Any] = {}
    for label, b in others.items():
        x, y = rates[a], rates[b]
        if len(x) != len(y) or len(x) < 2:
            continue
        out[f"auto_vs_{label}_paired"] = statistics.median(u / v for u, v in zip(x, y, strict=True))
        out[f"auto_vs_{label}_ci"] = paired_interval(x, y)
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | N | loop | scan_vmap | fastest form | auto (form) | auto/fastest | "
        "auto/loop | auto/scan_vmap | paired [95% CI] | auto/scan_vmap_norm [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rt = r["rates"]
        f = r["fastest_form"]
        auto = f"{rt['jaxtune[auto]']:.0f} ({', '.join(r['auto_form'])})"
        ratios = [r[k] for k in ("auto_vs_fastest", "auto_vs_loop", "auto_vs_scan_vmap")]
        lines.append(
            f"| {r['workload']} | {r['n']} | {rt['loop']:.0f} | {rt['scan_vmap']:.0f} | "
            f"{f} {rt[f'jaxtune[{f}]']:.0f} | {auto} | "
            + " | ".join(f"{x:.2f}" for x in ratios)
            + f" | {_paired_text(r)} | {_paired_text(r, 'scan_vmap_norm')} |"
        )
    return "\n".join(lines)


def _paired_text(row: dict, label: str = "scan_vmap") -> str:
    if f"auto_vs_{label}_ci" not in row:
        return "-"
    lo, hi = row[f"auto_vs_{label}_ci"]
    return f"{row[f'auto_vs_{label}_paired']:.2f} [{lo:.2f}, {hi:.2f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--workloads",
        default="digits_mlp_b128,digits_mlp,digits_cnn,images32_cnn,diabetes,bytes_lm",
    )
    p.add_argument("--n", default="1,8,32")
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--chunk", type=int, default=20, help="steps per chunk (= train.eval_every)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--max-time", type=float, default=30.0)
    p.add_argument(
        "--grad-norm",
        choices=("on", "off", "both"),
        default="on",
        help="the engine's train.grad_norm: 'off' does the per-step work of scan_vmap; "
        "'both': also auto with it off, jaxtune[auto,no_norm]",
    )
    p.add_argument("--quick", action="store_true", help="digits_mlp and digits_cnn at N=1, 8")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.forms = [f for f in args.forms.split(",") if f]
    names, ns = args.workloads.split(","), [int(v) for v in args.n.split(",")]
    if args.quick:
        names, ns, args.repeats, args.min_time = ["digits_mlp", "digits_cnn"], [1, 8], 1, 0.5
    rows = []
    for name, case in cases(names).items():
        for n in ns:
            rows.append(cell(name, case, n, args))
            if args.out:  # keep what finished
                _write(args.out, rows, args)
    print(table(rows))
    if args.out:
        _write(args.out, rows, args)
    return 0


def _write(path: str, rows: list[dict], args) -> None:
    blob = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items()},
        "rows": rows,
    }
    with open(path, "w") as f:
        json.dump(blob, f, indent=1, default=str)


if __name__ == "__main__":
    raise SystemExit(main())
