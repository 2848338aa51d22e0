"""A partly unrolled scan (``scan(unroll=U)``) against the plain scan, side by side.

For each case (a workload at N trials with a trial axis) the engine's one-chunk program (the
epoch shuffle, the steps and the evaluation after them) is built in the forms ``scan/T`` and
``scan(unroll=U)/T`` for every ``U`` of ``--unrolls``, and timed in rounds that alternate their
order. Ratios are medians over rounds of the wall and process CPU time against the plain scan
(lower is faster). ``auto`` measures ``scan(unroll=4)/unroll`` for one dense trial per CPU
device (:data:`jaxtune.engine.form_choice.SCAN_UNROLL`).

    python benchmarks/scan_unroll.py --out benchmarks/results/scan_unroll_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from execution import cases, engine_config, learning_rates

import jaxtune
from jaxtune.engine.bind import Binder
from jaxtune.engine.prepare import Preparer


def chunk_call(case, task, lrs, chunk, form):
    cfg = jaxtune.SweepConfig.from_dict(engine_config(case, lrs, chunk, 1, form))
    prep = Preparer(cfg, Binder(cfg, task=task), planned_trial_steps=len(lrs) * chunk)
    pop = prep.population(list(enumerate(jaxtune.config.expand_trials(cfg))))
    if len(pop.calls) != 1:
        raise SystemExit(f"{form}: {len(pop.calls)} calls; measure one call")
    call = pop.calls[0]
    call.state = call.program.init()(call.hp, call.keys)
    return call


def measure(name, n, trials, unrolls, chunk, rounds, chunks) -> dict:
    case = cases([name])[name]
    task = case["workload"].task({})
    lrs = learning_rates(case["lr"], n)
    forms = [f"scan/{trials}"] + [f"scan(unroll={u})/{trials}" for u in unrolls]
    calls = {f: chunk_call(case, task, lrs, chunk, f) for f in forms}

    def run(form, c):
        call = calls[form]
        args = (call.hp, call.data, call.data_key, call.keys, np.int32(c * chunk))
        call.state, out, ev = call.program.chunk(chunk)(call.state, *args)
        jax.block_until_ready((out, ev))

    for f in forms:  # compile and warm up
        run(f, 0)
        run(f, 1)
    wall = {f: [] for f in forms}
    cpu = {f: [] for f in forms}
    for r in range(rounds):
        for f in forms if r % 2 == 0 else forms[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            for c in range(2, 2 + chunks):
                run(f, c)
            wall[f].append(time.perf_counter() - t0)
            cpu[f].append(time.process_time() - c0)

    def ratio(times, f):
        return statistics.median([a / b for a, b in zip(times[f], times[forms[0]], strict=True)])

    row = {
        "workload": name,
        "n": n,
        "trials": trials,
        "chunk": chunk,
        "batch": case["batch"],
        "optimizer": case["optimizer"],
        "ms_per_chunk": {f: 1e3 * statistics.median(wall[f]) / chunks for f in forms},
        "wall_ratio": {f: ratio(wall, f) for f in forms[1:]},
        "cpu_ratio": {f: ratio(cpu, f) for f in forms[1:]},
    }
    text = ", ".join(
        f"{f}: wall {row['wall_ratio'][f]:.3f} cpu {row['cpu_ratio'][f]:.3f}" for f in forms[1:]
    )
    print(f"{name} N={n} (vs {forms[0]}): {text}", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cases",
        default="digits_mlp_b128:1:unroll,digits_mlp:1:unroll,diabetes:1:unroll,"
        "digits_mlp_b128:8:vmap,digits_mlp:8:vmap",
        help="comma-separated WORKLOAD:N:TRIALS",
    )
    ap.add_argument("--unrolls", default="2,4", help="comma-separated unroll factors")
    ap.add_argument("--chunk", type=int, default=20, help="steps per chunk")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=3, help="chunks per form and round")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    unrolls = [int(u) for u in args.unrolls.split(",")]
    rows = []
    for text in args.cases.split(","):
        name, n, trials = text.split(":")
        rows.append(measure(name, int(n), trials, unrolls, args.chunk, args.rounds, args.chunks))
    if args.out:
        doc = {
            "machine": {
                "backend": jax.default_backend(),
                "processor": platform.processor() or platform.machine(),
                "jax": jax.__version__,
            },
            "settings": vars(args),
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
