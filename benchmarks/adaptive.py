#!/usr/bin/env python
"""Adaptive search against the full grid, side by side in one run.

Two comparisons, each over interleaved rounds (every round runs each variant once, at that round's
``train.seed``, so a round is a paired comparison on the same data order and initialization, and
a machine that slows down for a while slows both sides of it):

1. ``halving``: successive halving (``sweep.strategy = "halving"``, ``halving.eta = 3``) against
   the full grid (``sweep.strategy = "all"``) on the digits MLP 64-256-256-10 of the bundled
   default sweep (momentum SGD, clipping at 1, step decay x0.5 every 200 steps, 600 steps, an
   evaluation every 50), 81 trials = 9 learning rates x 3 batch sizes x 3 momentum values; plus
   Hyperband (``"hyperband"``) as a row in the first ``--hyperband-rounds`` rounds. Every run
   starts from a cold compile cache (the engine's and JAX's), so its wall time includes
   compilation, as a user's first call would (not with ``--quick``, which keeps the cache).
   Reported: the best validation accuracy among the trials trained to the end (the grid's best
   vs the strategy's), trial-steps spent (``timing["trial_steps"]`` /
   ``timing["grid_trial_steps"]``), wall time of the whole ``run_sweep`` call and of its
   training alone, and where the time went (each population's compile and each rung's
   training, recorded by wrapping ``Sweep.population`` and ``Sweep.train``).
2. ``pbt``: population-based training (``sweep.strategy = "pbt"``) of 16 learning rates with a
   constant schedule against the same population trained with those constant learning rates
   (``"all"``, the same trial-steps), on two tasks where decaying the learning rate helps (shown
   by a third row, the same learning rates with step decay): the digits MLP 64-64-10 at batch
   size 8 (ranked on ``valid.loss``), and the noisy ill-conditioned linear regression of
   ``tests/test_search.py`` (a user ``jaxtune.Task``). PBT changes hyperparameters without
   recompiling, so it shares the constant sweep's program: this section compiles each program
   once before the rounds and times warm runs.

Run::

    python benchmarks/adaptive.py                         # full: ~13 minutes on 2 CPU cores
    python benchmarks/adaptive.py --quick --out /tmp/x.json   # a smoke run
    python benchmarks/adaptive.py --out benchmarks/results/adaptive_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    import jaxtune
except ImportError:  # run from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jaxtune
from jaxtune.data import Splits
from jaxtune.engine import compile as compile_lib
from jaxtune.engine import run as run_lib

#: The issue's targets for successive halving against the grid.
TARGETS = {"accuracy_points": 0.5, "trial_steps": 0.30, "wall": 0.40}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Instrumentation: what each population compiled and how long each span of training took.


@contextlib.contextmanager
def recording() -> Iterator[dict[str, list]]:
    """Wrap ``Sweep.population`` and ``Sweep.train`` for the duration of one ``run_sweep``."""
    rec: dict[str, list] = {"populations": [], "spans": []}
    population, train = run_lib.Sweep.population, run_lib.Sweep.train

    def wrapped_population(self, ids=None, **kw):
        c0, t0 = self.compile_s, time.perf_counter()
        pop = population(self, ids, **kw)
        rec["populations"].append(
            {
                "trials": len(pop.ids),
                "compile_s": self.compile_s - c0,
                "wall_s": time.perf_counter() - t0,
                "unit_sizes": [u.size for u in pop.plan.units],
                "groups": len(pop.plan.groups),
                "trials_per_call": pop.prep.choice,
            }
        )
        return pop

    def wrapped_train(self, pop, start, stop, **kw):
        t0 = time.perf_counter()
        out = train(self, pop, start, stop, **kw)
        rec["spans"].append(
            {
                "trials": len(pop.ids),
                "start": start,
                "stop": out[0],
                "seconds": time.perf_counter() - t0,
            }
        )
        return out

    run_lib.Sweep.population, run_lib.Sweep.train = wrapped_population, wrapped_train
    try:
        yield rec
    finally:
        run_lib.Sweep.population, run_lib.Sweep.train = population, train


def cold_caches() -> None:
    """Forget every compiled program (the engine caches them by shape across calls)."""
    compile_lib._COMPILED.clear()
    jax.clear_caches()


def timed_run(cfg: dict[str, Any], *, cold: bool, task: Any = None) -> tuple[Any, dict[str, Any]]:
    if cold:
        cold_caches()
    with recording() as rec:
        t0 = time.perf_counter()
        result = jaxtune.run_sweep(cfg, task=task)
        wall = time.perf_counter() - t0
    t = result.timing
    pops = rec["populations"]
    train_s = sum(s["seconds"] for s in rec["spans"])
    first_compile = pops[0]["compile_s"] if pops else 0.0
    numbers = {
        "wall_s": wall,
        "compile_s": float(t["compile_s"]),
        "run_s": float(t["run_s"]),
        "train_s": train_s,
        "first_compile_s": first_compile,
        "later_compile_s": float(t["compile_s"]) - first_compile,
        "other_s": wall - float(t["compile_s"]) - train_s,
        "trial_steps": int(t["trial_steps"]),
        "grid_trial_steps": int(t["grid_trial_steps"]),
        "populations": pops,
        "spans": rec["spans"],
    }
    return result, numbers


def finished(result) -> list:
    """Trials trained to the end (not stopped by a rung, not diverged)."""
    return [t for t in result.trials if t.stopped_step is None and not t.diverged]


def pick(result, metric: str, mode: str):
    """The best finished trial on ``metric`` (what a user would take from the sweep)."""
    cands = [t for t in finished(result) if math.isfinite(t.final.get(metric, math.nan))]
    sign = 1.0 if mode == "max" else -1.0
    return max(cands, key=lambda t: (sign * t.final[metric], -t.id))


def paired(num: list[float], den: list[float]) -> dict[str, float]:
    """Median and quartiles over rounds of ``num / den``."""
    ratios = np.asarray(num, float) / np.asarray(den, float)
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "per_round": ratios.tolist()}


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


# ----------------------------------------------------------------------------------------------
# 1. Successive halving (and Hyperband) against the full grid.


def halving_config(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "task": {"dataset": "digits", "widths": [32]},
            "optimizer": {"name": "momentum", "momentum": 0.9, "clip_norm": 1.0},
            "train": {"steps": 90, "eval_every": 10, "batch_size": 32},
            "halving": {"eta": 3.0},
            "sweep": {
                "grid": {
                    "optimizer.learning_rate": [0.01, 0.1, 1.0],
                    "optimizer.momentum": [0.5, 0.9, 0.99],
                }
            },
        }
    # The bundled default sweep (examples/default.toml), its learning-rate grid extended one
    # half-decade down to 9 values, times 3 batch sizes (the default's) times 3 momentum values.
    return {
        "task": {"dataset": "digits", "model": "mlp", "widths": [256, 256]},
        "optimizer": {"name": "momentum", "momentum": 0.9, "clip_norm": 1.0},
        "schedule": {"name": "step_decay", "decay_rate": 0.5, "every": 200},
        "train": {"steps": 600, "eval_every": 50},
        "halving": {"eta": 3.0},
        "sweep": {
            "grid": {
                "optimizer.learning_rate": [3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
                "train.batch_size": [32, 64, 128],
                "optimizer.momentum": [0.5, 0.9, 0.99],
            }
        },
    }


def with_(cfg: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in cfg.items()}
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values}
    return out


def summarize_halving_run(result, numbers: dict[str, Any], grid=None) -> dict[str, Any]:
    best = pick(result, "valid.accuracy", "max")
    engine_best = result.best()
    row = {
        **numbers,
        "best_valid_accuracy": best.final["valid.accuracy"],
        "best_test_accuracy": best.final.get("test.accuracy"),
        "best_trial": best.id,
        "best_hparams": best.hparams,
        "finished_trials": len(finished(result)),
        "diverged_trials": sum(t.diverged for t in result.trials),
        "engine_best_trial": engine_best.id,
        "engine_best_stopped_step": engine_best.stopped_step,
        "rungs": [
            {k: r[k] for k in ("bracket", "step") if k in r}
            | {"trials": len(r["trials"]), "survivors": len(r["survivors"])}
            for r in result.search.get("rungs", [])
        ],
    }
    if grid is not None:
        # Each trial trained to the end by the strategy, against the same trial in the grid
        # (the same seed): the repacked populations should reproduce it.
        ga = {t.id: t.final["valid.accuracy"] for t in grid.trials}
        diffs = [abs(t.final["valid.accuracy"] - ga[t.id]) for t in finished(result)]
        row["max_abs_diff_vs_grid_same_trial"] = max(diffs) if diffs else None
        ranked = sorted(ga.values(), reverse=True)
        row["grid_rank_of_pick"] = 1 + sum(v > ga[best.id] for v in ranked)
        row["grid_trials_at_grid_best"] = sum(v == ranked[0] for v in ranked)
        # What the strategy did with the grid's best trial (e.g. stopped at the first rung).
        gbest = pick(grid, "valid.accuracy", "max").id
        t = result.trials[gbest]
        row["grid_best_trial"] = gbest
        row["grid_best_trial_stopped"] = [t.stopped_step, t.stop_reason]
    else:
        accs = sorted((t.final["valid.accuracy"] for t in result.trials), reverse=True)
        row["top_valid_accuracies"] = accs[:10]
    return row


def bench_halving(seeds: list[int], hyperband_rounds: int, quick: bool) -> dict[str, Any]:
    cfg = halving_config(quick)
    variants = {
        "grid": cfg,
        "halving": with_(cfg, sweep={"strategy": "halving"}),
        "hyperband": with_(cfg, sweep={"strategy": "hyperband"}),
    }
    rounds: list[dict[str, Any]] = []
    for r, seed in enumerate(seeds):
        row: dict[str, Any] = {"seed": seed}
        names = ["grid", "halving"] + (["hyperband"] if r < hyperband_rounds else [])
        grid_result = None
        for name in names:
            c = with_(variants[name], train={"seed": seed})
            log(f"halving round {r + 1}/{len(seeds)} (seed {seed}): {name}")
            result, numbers = timed_run(c, cold=not quick)
            row[name] = summarize_halving_run(result, numbers, grid_result)
            if name == "grid":
                grid_result = result
            v = row[name]
            log(
                f"  wall {v['wall_s']:.1f}s compile {v['compile_s']:.1f}s train {v['train_s']:.1f}s"
                f" trial-steps {v['trial_steps']}/{v['grid_trial_steps']}"
                f" best valid acc {v['best_valid_accuracy']:.4f}"
            )
        rounds.append(row)
    return {"config": cfg, "rounds": rounds, "summary": summarize_halving(rounds)}


def summarize_halving(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("halving", "hyperband"):
        rs = [r for r in rounds if name in r]
        if not rs:
            continue
        g = [r["grid"] for r in rs]
        s = [r[name] for r in rs]
        acc_diff = [
            100 * (x["best_valid_accuracy"] - y["best_valid_accuracy"])
            for x, y in zip(s, g, strict=True)
        ]
        ts = [x["trial_steps"] / x["grid_trial_steps"] for x in s]
        wall = paired([x["wall_s"] for x in s], [y["wall_s"] for y in g])
        train = paired([x["train_s"] for x in s], [y["train_s"] for y in g])
        no_later = paired([x["wall_s"] - x["later_compile_s"] for x in s], [y["wall_s"] for y in g])
        out[name] = {
            "rounds": len(rs),
            "grid_best_valid_accuracy": [y["best_valid_accuracy"] for y in g],
            "best_valid_accuracy": [x["best_valid_accuracy"] for x in s],
            "accuracy_diff_points": acc_diff,
            "accuracy_diff_points_median": median(acc_diff),
            "trial_steps_fraction": median(ts),
            "wall_ratio": wall,
            "train_ratio": train,
            "wall_ratio_without_later_compiles": no_later,
            "median_s": {
                k: {"grid": median([y[k] for y in g]), name: median([x[k] for x in s])}
                for k in ("wall_s", "compile_s", "train_s", "later_compile_s", "other_s")
            },
            "targets": {
                "accuracy_within_0.5_points": bool(median(acc_diff) >= -TARGETS["accuracy_points"]),
                "accuracy_within_0.5_points_every_round": bool(
                    min(acc_diff) >= -TARGETS["accuracy_points"]
                ),
                "trial_steps_le_30pct": bool(median(ts) <= TARGETS["trial_steps"]),
                "wall_le_40pct": bool(wall["median"] <= TARGETS["wall"]),
            },
        }
    return out


# ----------------------------------------------------------------------------------------------
# 2. PBT against the same population with constant learning rates.


def noisy_regression(n_train: int = 2000, seed: int = 0) -> jaxtune.Task:
    """Noisy, ill-conditioned linear regression (as in tests/test_search.py): SGD's best
    constant step is beaten by a decaying one."""
    rng = np.random.default_rng(seed)
    d = 20
    scales = np.logspace(-1, 0.5, d)
    w = rng.normal(size=d) / scales

    def make(n):
        x = (rng.normal(size=(n, d)) * scales).astype(np.float32)
        return x, (x @ w + 2.0 * rng.normal(size=n)).astype(np.float32)

    return jaxtune.Task(
        init=lambda key, hp: ({"w": jnp.zeros(d)}, {}),
        apply=lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s),
        loss=lambda out, y, hp: (out - y) ** 2,
        metrics=lambda out, y: {"mae": jnp.abs(out - y)},
        data=Splits(make(n_train), make(1000), make(1000)),
    )


def pbt_tasks(quick: bool) -> dict[str, dict[str, Any]]:
    n = 4 if quick else 16
    digits_steps = 100 if quick else 600
    regression_steps = 200 if quick else 1000
    digits = {
        "task": {"dataset": "digits", "widths": [64]},
        "optimizer": {"name": "momentum", "momentum": 0.9},
        "schedule": {"name": "constant"},
        "train": {"steps": digits_steps, "eval_every": 25, "batch_size": 8},
        "select": {"metric": "valid.loss"},
        "pbt": {"interval": 50, "quantile": 0.25, "resample_probability": 0.25},
        "sweep": {
            "grid": {"optimizer.learning_rate": [float(v) for v in np.geomspace(3e-3, 3.0, n)]}
        },
    }
    regression = {
        "optimizer": {"name": "sgd"},
        "schedule": {"name": "constant"},
        "train": {"steps": regression_steps, "eval_every": 20, "batch_size": 4},
        "pbt": {"interval": 100, "quantile": 0.25, "resample_probability": 0.25},
        "sweep": {
            "grid": {"optimizer.learning_rate": [float(v) for v in np.geomspace(1e-3, 0.1, n)]}
        },
    }
    return {
        "digits": {
            "cfg": digits,
            "task": None,
            "metrics": ["valid.loss", "valid.accuracy", "test.loss", "test.accuracy"],
            "model": "MLP 64-64-10 on digits, momentum 0.9, batch 8, no clipping",
        },
        "regression": {
            "cfg": regression,
            "task": noisy_regression(),
            "metrics": ["valid.loss", "valid.mae", "test.loss", "test.mae"],
            "model": "linear regression, 20 features, condition 10^1.5, noise sd 2; SGD batch 4",
        },
    }


def pbt_variants(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps = cfg["train"]["steps"]
    return {
        "constant": cfg,
        "pbt": with_(cfg, sweep={"strategy": "pbt"}),
        # The reference: the same learning rates, decayed x0.3 at 1/3 and 2/3 of the steps.
        "step_decay": with_(
            cfg, schedule={"name": "step_decay", "decay_rate": 0.3, "every": steps // 3}
        ),
    }


def bench_pbt(seeds: list[int], quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in pbt_tasks(quick).items():
        variants = pbt_variants(spec["cfg"])
        metric = spec["cfg"].get("select", {}).get("metric", "valid.loss")
        log(f"pbt {name}: compiling (cold) each variant once")
        cold = {}
        for v, c in variants.items():
            if v == "constant":
                cold_caches()
            _, numbers = timed_run(c, cold=False, task=spec["task"])
            cold[v] = {k: numbers[k] for k in ("wall_s", "compile_s", "train_s")}
        rounds = []
        for r, seed in enumerate(seeds):
            row: dict[str, Any] = {"seed": seed}
            for v, c in variants.items():
                log(f"pbt {name} round {r + 1}/{len(seeds)} (seed {seed}): {v}")
                result, numbers = timed_run(
                    with_(c, train={"seed": seed}), cold=False, task=spec["task"]
                )
                best = pick(result, metric, "min")
                row[v] = {
                    **{k: numbers[k] for k in ("wall_s", "compile_s", "run_s", "train_s")},
                    "trial_steps": numbers["trial_steps"],
                    "best_trial": best.id,
                    "best_initial_lr": best.hparams["optimizer.learning_rate"],
                    **{f"best_{m}": best.final.get(m) for m in spec["metrics"]},
                    "diverged_trials": sum(t.diverged for t in result.trials),
                }
                if v == "pbt":
                    row[v]["winning_schedule"] = result.search["winning_schedule"]
                    row[v]["exploit_events"] = len(result.search["lineage"])
                log(f"  {metric} {row[v]['best_' + metric]:.4f} wall {numbers['wall_s']:.2f}s")
            rounds.append(row)
        const = [r["constant"]["best_" + metric] for r in rounds]
        pbt = [r["pbt"]["best_" + metric] for r in rounds]
        decay = [r["step_decay"]["best_" + metric] for r in rounds]
        wins = sum(p < c for p, c in zip(pbt, const, strict=True))
        # The same comparison on the test split: PBT chooses on the validation split at every
        # exploit step, so a validation gain can be partly selection.
        test = f"best_test.{metric.split('.', 1)[1]}"
        test_wins = sum(r["pbt"][test] < r["constant"][test] for r in rounds)
        out[name] = {
            "model": spec["model"],
            "config": spec["cfg"] if spec["task"] is None else {**spec["cfg"], "task": "user Task"},
            "metric": metric,
            "cold": cold,
            "rounds": rounds,
            "summary": {
                f"constant_best_{metric}": median(const),
                f"pbt_best_{metric}": median(pbt),
                f"step_decay_best_{metric}": median(decay),
                "pbt_wins": f"{wins}/{len(rounds)}",
                f"constant_{test}": median([r["constant"][test] for r in rounds]),
                f"pbt_{test}": median([r["pbt"][test] for r in rounds]),
                "pbt_wins_on_test": f"{test_wins}/{len(rounds)}",
                "decay_beats_constant": f"{sum(d < c for d, c in zip(decay, const, strict=True))}"
                f"/{len(rounds)}",
                "same_trial_steps": all(
                    r["pbt"]["trial_steps"] == r["constant"]["trial_steps"] for r in rounds
                ),
                "wall_ratio_pbt_vs_constant": paired(
                    [r["pbt"]["wall_s"] for r in rounds], [r["constant"]["wall_s"] for r in rounds]
                ),
                "train_ratio_pbt_vs_constant": paired(
                    [r["pbt"]["train_s"] for r in rounds],
                    [r["constant"]["train_s"] for r in rounds],
                ),
                "target_pbt_beats_constant": wins * 2 > len(rounds),
            },
        }
    return out


# ----------------------------------------------------------------------------------------------
# Report.


def table(results: dict[str, Any]) -> list[str]:
    lines = []
    if "halving" in results:
        lines += halving_table(results["halving"])
    if "pbt" in results:
        lines += pbt_table(results["pbt"])
    return lines


def halving_table(h: dict[str, Any]) -> list[str]:
    lines = []
    s = h["summary"]
    rounds = h["rounds"]
    g = [r["grid"] for r in rounds]
    lines.append(
        f"halving vs grid ({len(rounds)} interleaved rounds, seeds {[r['seed'] for r in rounds]};"
        " medians; every run from a cold compile cache)"
    )
    hdr = (
        f"{'variant':<10} {'best valid acc':>15} {'d vs grid':>10} {'trial-steps':>12}"
        f" {'wall s':>7} {'wall %':>7} {'compile s':>10} {'train s':>8} {'train %':>8}"
    )
    lines.append(hdr)
    lines.append(
        f"{'grid':<10} {median([x['best_valid_accuracy'] for x in g]):>15.4f} {'':>10}"
        f" {'100.0%':>12} {median([x['wall_s'] for x in g]):>7.1f} {'100%':>7}"
        f" {median([x['compile_s'] for x in g]):>10.1f} {median([x['train_s'] for x in g]):>8.1f}"
        f" {'100%':>8}"
    )
    for name, v in s.items():
        ms = v["median_s"]
        lines.append(
            f"{name:<10} {median(v['best_valid_accuracy']):>15.4f}"
            f" {v['accuracy_diff_points_median']:>+9.2f}p {100 * v['trial_steps_fraction']:>11.1f}%"
            f" {ms['wall_s'][name]:>7.1f} {100 * v['wall_ratio']['median']:>6.0f}%"
            f" {ms['compile_s'][name]:>10.1f} {ms['train_s'][name]:>8.1f}"
            f" {100 * v['train_ratio']['median']:>7.0f}%"
        )
    for name, v in s.items():
        t = v["targets"]
        later = 100 * v["wall_ratio_without_later_compiles"]["median"]
        met = {k: "MET" if ok else "MISSED" for k, ok in t.items()}
        lines.append(
            f"{name}: accuracy within 0.5 points {met['accuracy_within_0.5_points']}"
            f" (per round {', '.join(f'{d:+.2f}' for d in v['accuracy_diff_points'])});"
            f" trial-steps <= 30% {met['trial_steps_le_30pct']};"
            f" wall <= 40% {met['wall_le_40pct']}"
            f" (without the compiles after the first population: {later:.0f}%)"
        )
    first = rounds[0]
    for name in ("halving", "hyperband"):
        if name not in first:
            continue
        pops = first[name]["populations"]
        spans = first[name]["spans"]
        lines.append(
            f"{name} round 1, compile per population: "
            + ", ".join(f"{p['trials']} trials {p['compile_s']:.1f}s" for p in pops)
        )
        lines.append(
            f"{name} round 1, training per span: "
            + ", ".join(
                f"{sp['trials']}x[{sp['start']},{sp['stop']}) {sp['seconds']:.1f}s" for sp in spans
            )
        )
    return lines


def pbt_table(pbt: dict[str, Any]) -> list[str]:
    lines = [""]
    lines.append("PBT vs the same population with constant learning rates (same trial-steps)")
    lines.append(
        f"{'task':<11} {'metric':<11} {'constant':>9} {'pbt':>9} {'step decay':>11} {'pbt wins':>9}"
        f" {'test: const':>12} {'pbt':>9} {'wins':>5}"
        f" {'wall pbt/const':>15} {'train pbt/const':>16}"
    )
    for name, v in pbt.items():
        m, s2 = v["metric"], v["summary"]
        t = f"best_test.{m.split('.', 1)[1]}"
        lines.append(
            f"{name:<11} {m:<11} {s2[f'constant_best_{m}']:>9.4f} {s2[f'pbt_best_{m}']:>9.4f}"
            f" {s2[f'step_decay_best_{m}']:>11.4f} {s2['pbt_wins']:>9}"
            f" {s2[f'constant_{t}']:>12.4f} {s2[f'pbt_{t}']:>9.4f} {s2['pbt_wins_on_test']:>5}"
            f" {s2['wall_ratio_pbt_vs_constant']['median']:>14.2f}x"
            f" {s2['train_ratio_pbt_vs_constant']['median']:>15.2f}x"
        )
    return lines


def git_state() -> dict[str, Any]:
    """The commit measured and whether the working tree had changes (the engine moves fast)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
            return out.stdout.strip()
        except OSError:
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "modified": git("status", "--porcelain", "--untracked-files=no", "jaxtune").splitlines(),
    }


def machine_info() -> dict[str, Any]:
    return {
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke run)")
    p.add_argument("--seeds", default="0,1,2", help="one interleaved round per train.seed")
    p.add_argument("--pbt-seeds", default=None, help="PBT rounds (default: --seeds)")
    p.add_argument("--hyperband-rounds", type=int, default=1, help="rounds that also run Hyperband")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: halving,pbt")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    pbt_seeds = [int(s) for s in (args.pbt_seeds or args.seeds).split(",")]
    if args.quick:
        seeds, pbt_seeds = seeds[:1], pbt_seeds[:1]
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(), "git": git_state(), "quick": args.quick}
    log(f"machine: {results['machine']}")
    if "halving" not in skip:
        results["halving"] = bench_halving(seeds, args.hyperband_rounds, args.quick)
    if "pbt" not in skip:
        results["pbt"] = bench_pbt(pbt_seeds, args.quick)
    results["total_wall_s"] = time.perf_counter() - t0
    results["machine"]["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["table"] = table(results)
    print("\n".join(results["table"]))
    print(f"total {results['total_wall_s']:.0f}s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=_json_default))
        print(f"wrote {args.out}")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray | tuple):
        return list(x)
    return str(x)


if __name__ == "__main__":
    main()
