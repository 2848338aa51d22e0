#!/usr/bin/env python
"""Trial-steps per second of one fixed sweep against the number of devices its trials span.

The same sweep (the digits MLP 64-256-256-10, SGD momentum 0.9, step decay, clip 1.0, batch 128,
a learning-rate grid) runs with ``parallel.devices`` = 1, 2, 4, ... in one process, repeats
interleaved, and the median of each is reported with its ratio to one device.

On a GPU or TPU host the real devices are used. On a CPU-only machine the script re-runs itself
with ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` so that K CPU devices exist; they
share the machine's cores, so expect little gain there: the CPU numbers show that the sharded
program is correct and what splitting costs, not accelerator scaling.

Usage::

    python benchmarks/scaling.py [--devices 1,2,4] [--trials 32] [--steps 200]
        [--out benchmarks/results/scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--devices", default=None, help="device counts, e.g. 1,2,4 (default: powers of 2)"
    )
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/scaling.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _config(trials: int, steps: int, devices: int):
    lrs = [0.001 * (1000 ** (i / max(trials - 1, 1))) for i in range(trials)]
    return {
        "task": {"dataset": "digits", "model": "mlp", "widths": [256, 256]},
        "optimizer": {"name": "momentum", "momentum": 0.9, "clip_norm": 1.0},
        "schedule": {"name": "step_decay", "decay_rate": 0.5, "every": 200},
        "train": {"steps": steps, "eval_every": 50, "batch_size": 128},
        "parallel": {"devices": devices},
        "sweep": {"grid": {"optimizer.learning_rate": lrs}},
    }


def _measure(args) -> dict:
    import jax

    import jaxtune

    available = len(jax.devices())
    counts = (
        [int(c) for c in args.devices.split(",")]
        if args.devices
        else [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= available]
    )
    counts = [k for k in counts if k <= available]
    compile_s, runs = {}, {k: [] for k in counts}
    for k in counts:  # compile every program first, then time with repeats interleaved
        r = jaxtune.run_sweep(_config(args.trials, args.steps, k))
        compile_s[k] = r.timing["compile_s"]
    for _ in range(args.repeats):
        for k in counts:
            t0 = time.perf_counter()
            r = jaxtune.run_sweep(_config(args.trials, args.steps, k))
            runs[k].append(r.timing["run_s"])
            print(f"devices={k}: run {runs[k][-1]:.2f} s ({time.perf_counter() - t0:.2f} s)")
    rows = []
    for k in counts:
        run_s = statistics.median(runs[k])
        rows.append(
            {
                "devices": k,
                "run_s": run_s,
                "runs_s": runs[k],
                "compile_s": compile_s[k],
                "trial_steps_per_s": args.trials * args.steps / run_s,
            }
        )
    base = rows[0]["trial_steps_per_s"]
    for row in rows:
        row["speedup_vs_1"] = row["trial_steps_per_s"] / base
    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices_available": available,
        "forced_cpu_devices": "xla_force_host_platform_device_count"
        in os.environ.get("XLA_FLAGS", ""),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax_version": jax.__version__,
        "trials": args.trials,
        "steps": args.steps,
        "rows": rows,
    }


def main(argv=None) -> int:
    args = _parse(argv)
    wanted = max(int(c) for c in args.devices.split(",")) if args.devices else 4
    if not args.child:
        import jax

        if jax.default_backend() == "cpu" and len(jax.devices()) < wanted:
            env = dict(os.environ)
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={wanted}"
            ).strip()
            env["JAX_PLATFORMS"] = "cpu"  # the forced devices are CPU devices
            cmd = [sys.executable, __file__, "--child", *(argv or sys.argv[1:])]
            return subprocess.run(cmd, env=env, check=False).returncode
    result = _measure(args)
    print(
        f"\n{result['backend']} x {result['devices_available']}, {args.trials} trials x "
        f"{args.steps} steps"
    )
    print(f"{'devices':>7} {'trial-steps/s':>14} {'x 1 device':>10} {'compile s':>10}")
    for row in result["rows"]:
        print(
            f"{row['devices']:>7} {row['trial_steps_per_s']:>14.0f} {row['speedup_vs_1']:>10.2f} "
            f"{row['compile_s']:>10.1f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
