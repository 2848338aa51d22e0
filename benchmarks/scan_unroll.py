"""A partly unrolled scan (``scan(unroll=U)``) against the plain scan, side by side.

For each case (a workload at N trials with a trial axis) the engine's one-chunk program (the
epoch shuffle and the steps) and its evaluation program are built in the forms ``scan/T`` and
``scan(unroll=U)/T`` for every ``U`` of ``--unrolls``, and timed in rounds that alternate their
order. Ratios are medians over rounds of the wall and process CPU time against the plain scan
(lower is faster). ``auto`` measures ``scan(unroll=4)/unroll`` for one dense trial per CPU
device (:data:`jaxtune.engine.form_choice.SCAN_UNROLL`).

    python benchmarks/scan_unroll.py --out benchmarks/results/scan_unroll_cpu.json
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from execution import cases, engine_config, learning_rates
from side_by_side import median_ratio, parser, run_cases, time_rounds

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
        call.state, out = call.program.chunk(chunk)(call.state, *args)
        ev = call.program.evaluate()(call.state, call.hp, call.data)
        jax.block_until_ready((out, ev))

    wall, cpu = time_rounds(forms, run, rounds, chunks)

    def ratio(times, f):
        return median_ratio(times, f, forms[0])

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
    ap = parser(
        __doc__.splitlines()[0],
        "digits_mlp_b128:1:unroll,digits_mlp:1:unroll,diabetes:1:unroll,"
        "digits_mlp_b128:8:vmap,digits_mlp:8:vmap",
        "comma-separated WORKLOAD:N:TRIALS",
        rounds=20,
        chunk=20,
    )
    ap.add_argument("--unrolls", default="2,4", help="comma-separated unroll factors")
    args = ap.parse_args(argv)
    return run_cases(args, measure, [int(u) for u in args.unrolls.split(",")])


if __name__ == "__main__":
    raise SystemExit(main())
