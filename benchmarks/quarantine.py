"""The divergence quarantine's cost: per-step selects vs deferred to the chunk's end.

For each case (a workload at N trials in one form) four programs of one chunk of steps (the
epoch shuffle and the steps, no evaluation) are timed side by side, nothing diverging:

* ``baseline``: a hand-written ``jit(scan(vmap(step)))`` of the task's pieces and optax, with
  no quarantine and no gradient norm (benchmarks/execution.py's baseline, without its
  evaluation); ``baseline_norm``: the same, its steps also computing the gradient norm;
* ``per_step``: the engine's steps with the per-step quarantine (``keep="finite"``);
* ``deferred``: the engine's steps keeping every update, diverged trials put back at the
  chunk's end, the last step run after the loop so that the put-back's selects fuse into its
  update (``keep="all"``, ``last_apart`` and
  :func:`jaxtune.engine.quarantine.put_back_diverged`: the ``chunk`` program of batched
  trials);
* ``deferred_apart``: the same steps with the put-back as a pass of its own after the loop
  (how the ``chunk`` program did it before);
* ``no_norm``: the engine's ``chunk`` program with ``train.grad_norm = false`` (no gradient
  norm, the quarantine deferred in every form, the states checked at the chunk's end): the
  per-step work of ``baseline``.

Rounds alternate their order; each variant runs ``--chunks`` chunks per round. Ratios are
medians over rounds of wall time and of process CPU time (lower is faster), with the 95% paired
t interval of each wall-time ratio (``wall_ci``).

    python benchmarks/quarantine.py --out benchmarks/results/quarantine_cpu.json
"""

from __future__ import annotations

import importlib
import statistics
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from execution import Baselines, cases, engine_config, learning_rates
from side_by_side import median_ratio, paired_interval, parser, run_cases, time_rounds

import jaxtune
from jaxtune.engine.bind import Binder
from jaxtune.engine.prepare import Preparer
from jaxtune.engine.quarantine import put_back_diverged


def measure(name: str, n: int, form: str, chunk: int, rounds: int, chunks: int) -> dict:
    case = cases([name])[name]
    mod, _, attr = case["workload"].factory.partition(":")
    task = getattr(importlib.import_module(mod), attr)({})
    lrs = learning_rates(case["lr"], n)

    def one_call(grad_norm):
        config = engine_config(case, lrs, chunk, 1, form, grad_norm)
        cfg = jaxtune.SweepConfig.from_dict(config)
        prep = Preparer(cfg, Binder(cfg, task=task), planned_trial_steps=n * chunk)
        pop = prep.population(list(enumerate(jaxtune.config.expand_trials(cfg))))
        if len(pop.calls) != 1:
            raise SystemExit(f"{name} N={n}: {len(pop.calls)} calls; measure one call")
        return pop.calls[0]

    call, bare = one_call(True), one_call(False)
    fns = call.program.fns

    def engine(keep, last_apart=False):
        def run(state, hp, data, data_key, keys, start):
            batches = fns.shuffle(data_key, keys, hp, start, length=chunk)
            new, metrics = fns.steps(
                state, hp, data, batches, start, length=chunk, keep=keep, last_apart=last_apart
            )
            return (put_back_diverged(state, new) if keep == "all" else new), metrics

        return jax.jit(run, donate_argnums=0)

    programs = {
        "per_step": engine("finite"),
        "deferred": engine("all", last_apart=True),
        "deferred_apart": engine("all"),
        "no_norm": bare.program.chunk(chunk),
    }
    base = Baselines(task, case["optimizer"], lrs, case["batch"], chunk)
    bases = {"baseline": False, "baseline_norm": True}  # with the gradient norm?
    states = {k: call.program.init()(call.hp, call.keys) for k in programs}
    states.update({k: base.vinit(base.lrs) for k in bases})

    def run(v: str, c: int) -> None:
        start = np.int32(c * chunk)
        if v in bases:
            states[v], out = base.steps_only(states[v], base.lrs, start, norm=bases[v])
        else:
            args = (call.hp, call.data, call.data_key, call.keys, start)
            states[v], out = programs[v](states[v], *args)
        jax.block_until_ready(out)

    names = ["baseline", "baseline_norm", "per_step", "deferred", "deferred_apart", "no_norm"]
    wall, cpu = time_rounds(names, run, rounds, chunks)
    ratio = median_ratio

    pairs = [
        ("baseline_norm", "baseline"),
        ("per_step", "baseline"),
        ("deferred", "baseline"),
        ("deferred", "per_step"),
        ("deferred", "deferred_apart"),
        ("deferred_apart", "baseline"),
        ("no_norm", "baseline"),
        ("no_norm", "deferred"),
        ("no_norm", "per_step"),
    ]
    row = {
        "workload": name,
        "n": n,
        "form": form,
        "batch": case["batch"],
        "optimizer": case["optimizer"],
        "ms_per_chunk": {v: 1e3 * statistics.median(wall[v]) / chunks for v in names},
        "wall_ratio": {f"{a}/{b}": ratio(wall, a, b) for a, b in pairs},
        "cpu_ratio": {f"{a}/{b}": ratio(cpu, a, b) for a, b in pairs},
        "wall_ci": {f"{a}/{b}": paired_interval(wall[a], wall[b]) for a, b in pairs},
    }
    w, c = row["wall_ratio"], row["cpu_ratio"]
    print(
        f"{name} N={n} {form}: time deferred/per_step wall {w['deferred/per_step']:.3f} cpu "
        f"{c['deferred/per_step']:.3f}; per_step/baseline {w['per_step/baseline']:.3f}; "
        f"deferred/baseline {w['deferred/baseline']:.3f}; deferred/deferred_apart "
        f"{w['deferred/deferred_apart']:.3f}; baseline_norm/baseline wall "
        f"{w['baseline_norm/baseline']:.3f} cpu {c['baseline_norm/baseline']:.3f}; no_norm/"
        f"baseline wall {w['no_norm/baseline']:.3f} cpu {c['no_norm/baseline']:.3f}",
        flush=True,
    )
    return row


def main(argv=None) -> int:
    ap = parser(
        __doc__.splitlines()[0],
        "digits_mlp_b128:8:scan/vmap,digits_mlp:8:scan/vmap,"
        "digits_mlp_b128:1:scan/vmap,digits_mlp:1:scan/vmap,"
        "digits_mlp_b128:1:scan/unroll,digits_mlp:1:scan/unroll",
        "comma-separated WORKLOAD:N:FORM",
        rounds=30,
        chunk=10,
    )
    return run_cases(ap.parse_args(argv), measure)


if __name__ == "__main__":
    raise SystemExit(main())
