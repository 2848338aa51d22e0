"""A chunk's evaluation folded into its program, against the separate evaluation program.

For each case (a workload at N trials in a one-program form) three variants of one chunk,
training steps then the evaluation of every trial on the validation and test splits, with the
host reading the metrics back, are timed side by side:

* ``baseline``: benchmarks/execution.py's hand-written ``jit(scan(vmap))`` (evaluation in the
  same program);
* ``separate``: the engine's chunk program, then its evaluation program (two dispatches: how
  the engine runs a chunk);
* ``folded``: the engine's chunk and evaluation functions jitted as one program (one
  dispatch; measured, not adopted: neutral on the digits MLP, and every chunk program would
  compile the evaluation again).

Rounds alternate their order; ratios are medians over rounds of the wall and process CPU time
(lower is faster).

    python benchmarks/folded_eval.py --out benchmarks/results/folded_eval_cpu.json
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from execution import Baselines, cases, learning_rates
from scan_unroll import chunk_call
from side_by_side import median_ratio, parser, run_cases, time_rounds


def measure(name, n, form, chunk, rounds, chunks) -> dict:
    case = cases([name])[name]
    task = case["workload"].task({})
    lrs = learning_rates(case["lr"], n)
    base = Baselines(task, case["optimizer"], lrs, case["batch"], chunk)
    call = chunk_call(case, task, lrs, chunk, form)
    p, fns = call.program, call.program.fns
    if not p.one_program(chunk):
        raise SystemExit(f"{form} does not run a chunk of {chunk} steps as one program")

    def chunk_and_evaluate(state, hp, data, data_key, keys, start):
        state, metrics = fns.chunk(state, hp, data, data_key, keys, start, length=chunk)
        return state, metrics, fns.evaluate(state, hp, data)

    folded = jax.jit(chunk_and_evaluate, donate_argnums=0)
    states = {
        "baseline": base.vinit(base.lrs),
        "separate": call.state,
        "folded": p.init()(call.hp, call.keys),
    }

    def run(v, c):
        start = np.int32(c * chunk)
        args = (call.hp, call.data, call.data_key, call.keys, start)
        if v == "baseline":
            states[v], losses, ev = base.vchunk(states[v], base.lrs, start)
            out = (losses, ev)
        elif v == "separate":
            states[v], metrics = p.chunk(chunk)(states[v], *args)
            out = (metrics, p.evaluate()(states[v], call.hp, call.data))
        else:
            states[v], metrics, ev = folded(states[v], *args)
            out = (metrics, ev)
        jax.device_get(out)

    names = list(states)
    wall, cpu = time_rounds(names, run, rounds, chunks)
    ratio = median_ratio

    pairs = [("separate", "baseline"), ("folded", "baseline"), ("folded", "separate")]
    row = {
        "workload": name,
        "n": n,
        "form": form,
        "chunk": chunk,
        "batch": case["batch"],
        "optimizer": case["optimizer"],
        "ms_per_chunk": {v: 1e3 * statistics.median(wall[v]) / chunks for v in names},
        "wall_ratio": {f"{a}/{b}": ratio(wall, a, b) for a, b in pairs},
        "cpu_ratio": {f"{a}/{b}": ratio(cpu, a, b) for a, b in pairs},
    }
    text = ", ".join(
        f"{k}: wall {row['wall_ratio'][k]:.3f} cpu {row['cpu_ratio'][k]:.3f}"
        for k in row["wall_ratio"]
    )
    print(f"{name} N={n} {form}: {text}", flush=True)
    return row


def main(argv=None) -> int:
    ap = parser(
        __doc__.splitlines()[0],
        "digits_mlp_b128:1:scan/unroll,digits_mlp:1:scan/unroll,"
        "digits_mlp_b128:8:scan/vmap,digits_mlp:8:scan/vmap,diabetes:8:scan/vmap",
        "comma-separated WORKLOAD:N:FORM",
        rounds=20,
        chunk=10,
    )
    return run_cases(ap.parse_args(argv), measure)


if __name__ == "__main__":
    raise SystemExit(main())
