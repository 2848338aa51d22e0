"""Successive halving and Hyperband, with survivors repacked into smaller programs.

All trials start together. At each rung (``halving.min_steps``, then ``eta`` times as many steps,
...) the live trials are ranked on the validation metric (``select.metric``) at that step; the
best ``1/eta`` continue **from their current state** (params, optimizer and model state, keys,
histories) in a new, smaller population: the states are gathered and the next rung's program has
fewer trials, so it costs less (masking stopped trials in place would save nothing). Diverged
trials never survive a rung. Ranking spans every structure group. Hyperband runs several
brackets of successive halving, each with its own starting budget.

A checkpoint records the live trials, the rung and the divergences of the trials that left
(stopped at a rung, or finalists of an earlier bracket); a resumed run rebuilds that population,
continues bit-identically and reports what the uninterrupted run reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtune.engine.history import eval_column
from jaxtune.engine.result import SweepResult
from jaxtune.engine.run import Sweep
from jaxtune.engine.selection import Selection

__all__ = [
    "HalvingState",
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
    selection: Selection,
    eta: float,
    diverged: dict[int, int | None],
) -> tuple[list[int], dict[int, tuple[int, str]]]:
    """The best ``ceil(len(live) / eta)`` live trials at ``step`` (diverged ones never survive).

    Returns:
      ``(survivors, stopped)``: survivors in id order, and ``id -> (step, reason)`` for the rest.
    """
    metric = selection.metric
    col = eval_column(history, step)
    values = {i: float(history[metric][i, col]) for i in live}
    healthy = [i for i in live if diverged.get(i) is None and math.isfinite(values[i])]
    ranked = selection.rank({i: values[i] for i in healthy})
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


@dataclasses.dataclass
class HalvingState:
    """Where a halving or Hyperband run stands (saved with every checkpoint).

    Attributes:
      bracket: the bracket being trained; ``live``: its trials still training.
      stopped: ``id -> (step, reason)`` of every trial a rung stopped.
      diverged: ``id -> step`` of every trial known to have diverged: those a rung stopped and
        the finalists of every finished bracket (a run resumed in a later bracket reports
        them from here, since their populations are gone).
      rungs: each rung's ``bracket``, ``step``, ``trials`` and ``survivors``.
    """

    live: list[int]
    bracket: int = 0
    stopped: dict[int, tuple[int, str]] = dataclasses.field(default_factory=dict)
    diverged: dict[int, int] = dataclasses.field(default_factory=dict)
    rungs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "live": list(self.live),
            "bracket": self.bracket,
            "stopped": [[i, s, r] for i, (s, r) in self.stopped.items()],
            "diverged": [[i, s] for i, s in self.diverged.items()],
            "rungs": self.rungs,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HalvingState:
        return cls(
            list(d["live"]),
            int(d["bracket"]),
            {int(i): (int(s), r) for i, s, r in d["stopped"]},
            {int(i): int(s) for i, s in d["diverged"]},
            list(d["rungs"]),
        )


def _bracket(sweep, pop, step, rungs, eta, state: HalvingState) -> tuple[Any, int, bool]:
    """Successive halving of the population ``pop`` (trials ``state.live``, at ``step``) over
    ``rungs``; ``state`` collects what stopped, why, and each rung's survivors."""
    sweep.begin(pop, step)
    while True:
        done = any(r["bracket"] == state.bracket and r["step"] == step for r in state.rungs)
        if step not in rungs[:-1] or done:  # not at a rung (or resumed after its selection)
            if step >= rungs[-1]:
                return pop, step, False
            target = next(b for b in rungs if b > step)
            step, interrupted = sweep.train(pop, step, target, notes=state.to_json())
            if interrupted:
                return pop, step, True
            continue
        diverged = pop.diverged_steps()
        survivors, stopped = select_survivors(
            sweep.history, state.live, step, sweep.selection, eta, diverged
        )
        state.stopped.update(stopped)
        state.diverged.update({i: diverged[i] for i in stopped if diverged[i] is not None})
        state.rungs.append(
            {
                "bracket": state.bracket,
                "step": step,
                "trials": list(state.live),
                "survivors": survivors,
            }
        )
        if not survivors:
            return pop, step, False
        states = pop.states()
        state.live = survivors
        pop = sweep.population(survivors, fresh=False)
        pop.load({i: states[i] for i in survivors})


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
    # The first population compiles before anything is written; a resumed run rebuilds the
    # population its checkpoint names.
    first_ids = list(brackets[0][0])
    first = sweep.population(first_ids)

    def rebuild(notes: dict) -> Any:
        live = HalvingState.from_json(notes).live
        return first if live == first_ids else sweep.population(live, fresh=False)

    pop, step, notes = sweep.start(first, rebuild)
    state = HalvingState(first_ids) if notes is None else HalvingState.from_json(notes)
    populations, interrupted, b0 = [], False, state.bracket
    for b in range(b0, len(brackets)):
        ids, rungs = brackets[b]
        if b > b0:
            state.bracket, state.live, step = b, list(ids), 0
            pop = sweep.population(ids)
            pop.init()
            if sweep.checkpoints is not None:
                sweep.checkpoints.restart(b * sweep.steps)
        pop, step, interrupted = _bracket(sweep, pop, step, rungs, eta, state)
        populations.append(pop)
        if interrupted:
            break
        # The bracket's finalists leave with it: the next bracket's checkpoints keep their
        # divergences in the notes.
        state.diverged.update({i: s for i, s in pop.diverged_steps().items() if s is not None})
    search = {
        "strategy": strategy,
        "eta": eta,
        "brackets": [{"trials": ids, "rungs": rungs} for ids, rungs in brackets],
        "rungs": state.rungs,
    }
    return sweep.finish(
        populations,
        sweep.steps if not interrupted else step,
        interrupted,
        stopped=state.stopped,
        diverged=state.diverged,
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
