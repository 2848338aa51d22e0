#!/usr/bin/env python
"""Trials per call: the half-cache rule of ``train.max_trials_per_call = "auto"`` against one call.

On a CPU, ``auto`` keeps a call within half the last-level cache (measured for the vmapped
digits MLP). For the larger models of ``jaxtune.workloads`` (the byte-level transformer LM and
the 32x32 CNN) that rule gives one trial per call, so an N-trial sweep runs N programs one
after another. This times, side by side in interleaved rounds, an 8-trial learning-rate sweep
of each in chunks of 10 steps: ``auto`` (the rule, and the form ``auto`` picks) against one
call of all 8 trials in the host-driven forms (``host/unroll``, ``host/vmap``; for the dense
LM also ``scan/vmap``). Absolute rates depend on the machine's load; compare within a round.

    python benchmarks/trials_per_call.py --out benchmarks/results/trials_per_call_cpu.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from execution import cases, engine_config, learning_rates

import jaxtune


def _config(case, lrs, chunks, form, per_call):
    cfg = engine_config(case, lrs, 10, chunks, form)
    cfg["train"]["max_trials_per_call"] = per_call
    return cfg


def measure(name: str, n: int, rounds: int) -> dict:
    case = cases([name])[name]
    module, _, attr = case["workload"].factory.partition(":")
    task = getattr(importlib.import_module(module), attr)({})
    lrs = learning_rates(case["lr"], n)
    variants = {
        "auto (half-cache rule)": ("auto", "auto"),
        f"{n} per call, host/unroll": ("host/unroll", n),
        f"{n} per call, host/vmap": ("host/vmap", n),
    }
    if name == "bytes_lm":
        variants[f"{n} per call, scan/vmap"] = ("scan/vmap", n)
    info = {}
    for k, (form, per_call) in variants.items():  # compile every variant first
        r = jaxtune.run_sweep(_config(case, lrs, 1, form, per_call), task=task)
        info[k] = {
            "execution": r.timing["execution"],
            "calls": [g["calls"] for g in r.timing["groups"]],
            "trials_per_call": r.timing["trials_per_call"],
        }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, (form, per_call) in variants.items():
            r = jaxtune.run_sweep(_config(case, lrs, 2, form, per_call), task=task)
            rates[k].append(float(r.timing["trial_steps_per_s"]))
            print(name, k, round(rates[k][-1], 1), file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {"rates": rates, "median": median, "info": info}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="bytes_lm,images32_cnn")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = {
        "machine": {"processor": platform.processor(), "backend": jax_backend()},
        "settings": vars(args),
        "workloads": {w: measure(w, args.n, args.rounds) for w in args.workloads.split(",")},
    }
    for name, row in out["workloads"].items():
        print(name, {k: round(v, 1) for k, v in row["median"].items()})
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


def jax_backend() -> str:
    import jax

    return jax.default_backend()


if __name__ == "__main__":
    raise SystemExit(main())
