"""Population-based training: exploit and explore between chunks, without recompiling.

A population of N trials (the search space) trains together. Every ``pbt.interval`` steps the
trials are ranked on the validation metric; each trial of the bottom ``pbt.quantile`` copies the
state (parameters, optimizer and model state, divergence flags; it keeps its own key and so its
own data order) of a trial drawn from the top quantile (exploit), then perturbs the numeric
hyperparameters that vary in the search space: each is multiplied by 0.8 or 1.25, or, with
probability ``pbt.resample_probability``, drawn again from the search space (explore).
Hyperparameters are arguments of the compiled program, so changing them never recompiles.

Every random choice comes from a generator seeded with ``(sweep.seed, step)``: a run resumed from
a checkpoint makes the same choices. The lineage (who copied whom, when, and the new values) is
recorded, and the winning trial's hyperparameter schedule is rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.config import space as space_lib
from jaxtune.config.schema import KEYS, check_value, is_hparam
from jaxtune.engine.history import eval_column
from jaxtune.engine.population import Population
from jaxtune.engine.result import SweepResult
from jaxtune.engine.run import Sweep
from jaxtune.engine.selection import Selection
from jaxtune.errors import ConfigError

__all__ = ["PBTState", "copy_states", "exploit_explore", "run_pbt", "winning_schedule"]

#: Numeric keys PBT never perturbs: they fix the data order and the compiled batch shape.
_FIXED = ("train.seed", "train.batch_size")


def _explorable(sweep: Sweep) -> list[str]:
    numeric = [
        k
        for k in dict.fromkeys(k for o in sweep.overrides for k in o)
        if k not in _FIXED and (is_hparam(k) or (k in KEYS and KEYS[k].kind in ("float", "int")))
    ]
    if not numeric:
        raise ConfigError(
            "sweep.strategy = 'pbt' needs numeric hyperparameters that vary in the search space "
            "(e.g. optimizer.learning_rate): PBT perturbs those"
        )
    return numeric


def _clamp(key: str, value: float, like: Any) -> Any:
    if isinstance(like, int) and not isinstance(like, bool):
        value = max(1, round(value)) if key in KEYS else round(value)
    spec = KEYS.get(key)
    if spec is not None:
        eps = 1e-6 * max(1.0, abs(value))
        if spec.low is not None:
            value = max(value, spec.low + (eps if spec.low_open else 0.0))
        if spec.high is not None:
            value = min(value, spec.high - (eps if spec.high_open else 0.0))
        value = check_value(key, int(value) if spec.kind == "int" else float(value))
    return value


def _resample(sweep: Sweep, key: str, rng: np.random.Generator) -> Any:
    cfg = sweep.cfg
    if key in cfg.space:
        return space_lib.sample_one(cfg.space[key], float(rng.random()))
    values = sorted({o[key] for o in sweep.overrides if key in o})
    return values[int(rng.integers(len(values)))]


def exploit_explore(
    sweep: Sweep,
    values: Mapping[int, float],
    hp: Mapping[int, dict[str, Any]],
    step: int,
    mode: str,
) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
    """One PBT round: who copies whom and each copier's new hyperparameters.

    Args:
      values: each trial's validation metric at ``step`` (NaN for a diverged trial).
      hp: each trial's current values of the explored keys.

    Returns:
      ``(copies, new_hp)``: ``copies[dst] = src`` and the explored values of each ``dst``.
    """
    base = sweep.cfg.base
    q, p_resample = base["pbt.quantile"], base["pbt.resample_probability"]
    rng = np.random.default_rng([sweep.cfg.seed, step])
    order = Selection("", mode).rank(values)
    k = max(1, math.floor(q * len(order))) if len(order) >= 2 else 0
    top, bottom = order[:k], order[len(order) - k :]
    copies, new_hp = {}, {}
    for dst in bottom:
        src = top[int(rng.integers(len(top)))]
        copies[dst] = src
        new = {}
        for key, v in hp[src].items():
            if rng.random() < p_resample:
                new[key] = _resample(sweep, key, rng)
            else:
                new[key] = _clamp(key, v * (0.8 if rng.random() < 0.5 else 1.25), v)
        new_hp[dst] = new
    return copies, new_hp


def copy_states(pop: Population, copies: Mapping[int, int]) -> None:
    """Exploit: trial ``dst`` takes the whole state of ``copies[dst]`` except its own key.

    Parameters, optimizer and model state and divergence flags are copied bit for bit (on the
    device when both trials are in one compiled call); the key stays, so the copier keeps its
    own data order and dropout masks.
    """
    pop.copy(copies, keep=("key",))


def winning_schedule(
    winner: int, lineage: Sequence[Mapping[str, Any]], initial: Mapping[int, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The hyperparameters the winning state trained with: ``[{"from_step", "trial", ...}]``.

    Walks the lineage backwards: before each copy into the current trial, the state was its
    source's.
    """
    events = sorted(lineage, key=lambda e: e["step"])
    segments, current, until = [], winner, None
    for e in reversed(events):
        if e["trial"] != current or (until is not None and e["step"] >= until):
            continue
        segments.append({"from_step": e["step"], "trial": current, **e["hp"]})
        current, until = e["copied"], e["step"]
    segments.append({"from_step": 0, "trial": current, **dict(initial[current])})
    return list(reversed(segments))


@dataclasses.dataclass
class PBTState:
    """Where a PBT run stands (saved with every checkpoint): each trial's explored values and
    the lineage so far (who copied whom, when, and the new values)."""

    hp: dict[int, dict[str, Any]]
    lineage: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"hp": [[i, v] for i, v in self.hp.items()], "lineage": self.lineage}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PBTState:
        return cls({int(i): dict(v) for i, v in d["hp"]}, list(d["lineage"]))


def run_pbt(sweep: Sweep) -> SweepResult:
    """``sweep.strategy = "pbt"``: population-based training of the search space's trials."""
    base = sweep.cfg.base
    every, steps = base["train.eval_every"], sweep.steps
    interval = base["pbt.interval"] or 2 * every
    keys = _explorable(sweep)
    n = len(sweep.overrides)
    initial = {i: {k: {**base, **sweep.overrides[i]}[k] for k in keys} for i in range(n)}
    pop, start, notes = sweep.start(sweep.population())
    state = PBTState({i: dict(v) for i, v in initial.items()})
    if notes is not None:
        state = PBTState.from_json(notes)
        pop.set_hp(state.hp)
    sweep.begin(pop, start)

    def exploit(at: int) -> None:
        col = eval_column(sweep.history, at)
        diverged = pop.diverged_steps()
        values = {
            i: math.nan if diverged[i] is not None else float(sweep.history[sel.metric][i, col])
            for i in range(n)
        }
        copies, new_hp = exploit_explore(sweep, values, state.hp, at, sel.mode)
        copy_states(pop, copies)
        pop.set_hp(new_hp)
        for dst, src in copies.items():
            state.hp[dst] = new_hp[dst]
            state.lineage.append({"step": at, "trial": dst, "copied": src, "hp": new_hp[dst]})

    sel = sweep.selection
    step, interrupted = start, False
    while step < steps:
        if step > 0 and step % interval == 0:
            exploit(step)  # a checkpoint at a boundary holds the state before this round
        stop = min((step // interval + 1) * interval, steps)
        step, interrupted = sweep.train(pop, step, stop, notes=state.to_json())
        if interrupted:
            break

    def record(result: SweepResult) -> dict[str, Any]:
        finished = [t for t in result.trials if not t.diverged]
        winner = result.best().id if finished else 0
        return {
            "strategy": "pbt",
            "interval": interval,
            "quantile": base["pbt.quantile"],
            "explored": keys,
            "lineage": state.lineage,
            "final_hparams": {str(i): v for i, v in state.hp.items()},
            "winner": winner,
            "winning_schedule": winning_schedule(winner, state.lineage, initial),
        }

    return sweep.finish([pop], step, interrupted, search=record)
