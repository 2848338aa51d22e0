"""Successive halving and Hyperband, with survivors repacked into smaller programs.

All trials start together. At each rung (``halving.min_steps``, then ``eta`` times as many steps,
...) the live trials are ranked on the validation metric (``select.metric``) at that step; the
best ``1/eta`` continue **from their current state** (params, optimizer and model state, keys,
histories) in a new, smaller population: the states are gathered and the next rung's program has
fewer trials, so it costs less (masking stopped trials in place would save nothing). Diverged
trials never survive a rung. Ranking spans every structure group. Hyperband runs several
brackets of successive halving, each with its own starting budget.

A checkpoint records the live trials and the rung; a resumed run rebuilds that population and
continues bit-identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtune.engine.result import SweepResult
from jaxtune.engine.run import Sweep

__all__ = [
    "deal",
    "planned_trial_steps",
    "rung_steps",
    "run_halving",
    "run_hyperband",
    "select_survivors",
]


def rung_steps(n: int, steps: int, eta: float, every: int, first: int | None = None) -> list[int]:
    """The steps at which ``n`` trials are ranked (the last is ``steps``, the full budget).

    Without ``first``, the first rung comes after ``steps / eta**k`` steps (rounded down to a
    multiple of ``every``), ``k`` the number of halvings that leave one trial.

    Example:
      >>> rung_steps(81, 810, 3.0, 10)
      [10, 30, 90, 270, 810]
    """
    k = max(0, math.floor(math.log(max(n, 1)) / math.log(eta) + 1e-9))
    if first is None:
        first = max(every, int(steps / eta**k) // every * every)
    out, b = [], float(first)
    while round(b) < steps:
        step = max(every, int(round(b)) // every * every)
        if not out or step > out[-1]:
            out.append(step)
        b *= eta
    return [*out, steps]


def select_survivors(
    history: dict[str, np.ndarray],
    live: Sequence[int],
    step: int,
    metric: str,
    mode: str,
    eta: float,
    diverged: dict[int, int | None],
) -> tuple[list[int], dict[int, tuple[int, str]]]:
    """The best ``ceil(len(live) / eta)`` live trials at ``step`` (diverged ones never survive).

    Returns:
      ``(survivors, stopped)``: survivors in id order, and ``id -> (step, reason)`` for the rest.
    """
    col = int(np.flatnonzero(history["eval_step"] == step)[-1])
    values = {i: float(history[metric][i, col]) for i in live}
    healthy = [i for i in live if diverged.get(i) is None and math.isfinite(values[i])]
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(healthy, key=lambda i: (sign * values[i], i))
    keep = max(1, math.ceil(len(live) / eta)) if healthy else 0
    survivors = sorted(ranked[:keep])
    stopped = {}
    for i in live:
        if i in survivors:
            continue
        if diverged.get(i) is not None:
            stopped[i] = (step, f"diverged at step {diverged[i]}")
        elif not math.isfinite(values[i]):
            stopped[i] = (step, f"rung at step {step}: {metric} is not finite")
        else:
            rank = ranked.index(i) + 1
            stopped[i] = (
                step,
                f"rung at step {step}: {metric} {values[i]:.4g} ranked {rank} of {len(live)}; "
                f"the best {keep} continue",
            )
    return survivors, stopped


def _bracket(sweep, pop, live, step, rungs, eta, bracket, state) -> tuple[Any, int, bool]:
    """Successive halving of the population ``pop`` (trials ``live``, at ``step``) over
    ``rungs``. ``state`` collects what stopped, why, and each rung's survivors."""
    sweep.begin(pop, step)
    while True:
        done = any(r["bracket"] == bracket and r["step"] == step for r in state["rungs"])
        if step not in rungs[:-1] or done:  # not at a rung (or resumed after its selection)
            if step >= rungs[-1]:
                return pop, step, False
            extra = {
                "bracket": bracket,
                "live": list(live),
                "stopped": {str(i): list(v) for i, v in state["stopped"].items()},
                "diverged": {str(i): v for i, v in state["diverged"].items()},
                "rungs": state["rungs"],
            }
            target = next(b for b in rungs if b > step)
            step, interrupted = sweep.train(pop, step, target, extra=extra)
            if interrupted:
                return pop, step, True
            continue
        sel = pop.prep.selection
        diverged = pop.diverged_steps()
        survivors, stopped = select_survivors(
            sweep.history, live, step, sel.metric, sel.mode, eta, diverged
        )
        state["stopped"].update(stopped)
        state["diverged"].update({i: diverged[i] for i in stopped if diverged[i] is not None})
        state["rungs"].append(
            {"bracket": bracket, "step": step, "trials": list(live), "survivors": survivors}
        )
        if not survivors:
            return pop, step, False
        states = pop.states()
        live = survivors
        pop = sweep.population(live, fresh=False)
        pop.load({i: states[i] for i in live})


def planned_trial_steps(brackets: Sequence[tuple[Sequence[int], Sequence[int]]], eta: float) -> int:
    """Trial-steps the brackets spend when no trial diverges (``ceil(n / eta)`` survive).

    Example:
      >>> planned_trial_steps([(range(9), [10, 30, 90])], 3.0)
      210
    """
    total = 0
    for ids, rungs in brackets:
        live, prev = len(ids), 0
        for step in rungs:
            total += (step - prev) * live
            live, prev = max(1, math.ceil(live / eta)), step
    return total


def _run(sweep: Sweep, brackets: list[tuple[list[int], list[int]]], strategy: str) -> SweepResult:
    eta = sweep.cfg.base["halving.eta"]
    sweep.planned = planned_trial_steps(brackets, eta)
    state: dict[str, Any] = {"stopped": {}, "diverged": {}, "rungs": []}
    # The first population compiles before anything is written; a resumed run rebuilds the
    # population its checkpoint names.
    first = list(brackets[0][0])
    built = {tuple(first): sweep.population(first)}
    sweep.open_checkpoints()

    def expect(extra: dict) -> tuple[Any, Any]:
        live = tuple(extra.get("live", first))
        if live not in built:
            built[live] = sweep.population(list(live), fresh=False)
        return built[live].templates(), built[live].members

    restored = sweep.restore(expect)
    b0, live, step = 0, first, 0
    if restored is None:
        pop = built[tuple(first)]
        pop.init()
    else:
        step, extra = restored
        b0, live = int(extra.get("bracket", 0)), list(extra.get("live", first))
        state["stopped"] = {int(i): (int(s), r) for i, (s, r) in extra.get("stopped", {}).items()}
        state["diverged"] = {int(i): int(v) for i, v in extra.get("diverged", {}).items()}
        state["rungs"] = list(extra.get("rungs", []))
        pop = built[tuple(live)]
        pop.scatter(sweep.restored_states())
    populations, interrupted = [], False
    for b in range(b0, len(brackets)):
        ids, rungs = brackets[b]
        if b > b0:
            live, step = list(ids), 0
            pop = sweep.population(live)
            pop.init()
            if sweep.checkpoints is not None:
                sweep.checkpoints.restart(b * sweep.steps)
        pop, step, interrupted = _bracket(sweep, pop, live, step, rungs, eta, b, state)
        populations.append(pop)
        if interrupted:
            break
    search = {
        "strategy": strategy,
        "eta": eta,
        "brackets": [{"trials": ids, "rungs": rungs} for ids, rungs in brackets],
        "rungs": state["rungs"],
    }
    return sweep.finish(
        populations,
        sweep.steps if not interrupted else step,
        interrupted,
        stopped=state["stopped"],
        diverged=state["diverged"],
        search=search,
    )


def run_halving(sweep: Sweep) -> SweepResult:
    """``sweep.strategy = "halving"``: successive halving of every trial of the search space."""
    base = sweep.cfg.base
    n = len(sweep.overrides)
    rungs = rung_steps(
        n, sweep.steps, base["halving.eta"], base["train.eval_every"], base["halving.min_steps"]
    )
    return _run(sweep, [(list(range(n)), rungs)], "halving")


def deal(n: int, weights: Sequence[float]) -> list[int]:
    """Split ``n`` trials in proportion to ``weights`` (largest remainders; every trial dealt).

    Example:
      >>> deal(8, [9, 5, 3])
      [4, 2, 2]
      >>> deal(81, [81, 34, 15, 8, 5])
      [46, 19, 8, 5, 3]
    """
    total = float(sum(weights))
    exact = [w * n / total for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda j: (counts[j] - exact[j], j))
    for j in order[: n - sum(counts)]:
        counts[j] += 1
    return counts


def run_hyperband(sweep: Sweep) -> SweepResult:
    """``sweep.strategy = "hyperband"``: brackets of successive halving with different starts.

    With ``R = train.steps``, ``eta`` and a smallest budget ``r = halving.min_steps`` (default
    ``train.eval_every``), bracket ``s = s_max .. 0`` (``s_max = floor(log_eta(R / r))``) starts
    ``n_s ~ (s_max + 1) / (s + 1) * eta**s`` trials at ``R / eta**s`` steps. The trials of the
    search space are dealt to the brackets in that proportion, in a random order seeded by
    ``sweep.seed``.
    """
    base = sweep.cfg.base
    eta, every, steps = base["halving.eta"], base["train.eval_every"], sweep.steps
    r = base["halving.min_steps"] or every
    s_max = max(0, math.floor(math.log(steps / r) / math.log(eta) + 1e-9))
    want = [math.ceil((s_max + 1) / (s + 1) * eta**s) for s in range(s_max, -1, -1)]
    n = len(sweep.overrides)
    counts = deal(n, want)
    # Trials are dealt in a seeded random order: a grid listed in order would otherwise give
    # each bracket a slice of one key's values.
    order = np.random.default_rng([sweep.cfg.seed, n]).permutation(n).tolist()
    brackets, start = [], 0
    for s, count in zip(range(s_max, -1, -1), counts, strict=True):
        ids = sorted(order[start : start + count])
        start += count
        if not ids:
            continue
        first = max(every, int(steps / eta**s) // every * every)
        rungs = rung_steps(len(ids), steps, eta, every, first) if first < steps else [steps]
        brackets.append((ids, rungs))
    return _run(sweep, brackets, "hyperband")
