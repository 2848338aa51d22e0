"""Population-based training: exploit and explore between chunks, without recompiling.

A population of N trials (the search space) trains together. Every ``pbt.interval`` steps the
trials are ranked on the validation metric; each trial of the bottom ``pbt.quantile`` copies the
state (parameters, optimizer and model state, divergence flags; it keeps its own key and so its
own data order) of a trial drawn from the top quantile (exploit), then perturbs the numeric
hyperparameters that vary in the search space: each is multiplied by 0.8 or 1.25, or, with
probability ``pbt.resample_probability``, drawn again from the search space (explore).
Hyperparameters are arguments of the compiled program, so changing them never recompiles.

Only traced hyperparameters are perturbed: the built-in numeric keys
(:data:`jaxtune.config.NUMERIC_KEYS`, less ``train.seed`` and ``train.batch_size``) and every
``hparams.*`` key. A search space that varies a numeric *structure* key (one that changes the
compiled program: ``task.dropout``) is refused with a :class:`~jaxtune.errors.ConfigError`
before anything compiles, naming it and the keys PBT can perturb: PBT could never move it.

A search space may vary structure keys that are not numeric (``task.widths``, ``task.model``,
``task.activation``, a user task's structure, ``optimizer.momentum`` set or not): a state can only
be copied into a trial of the same structure, so each structure is its own population. Its
trials are ranked among themselves, its bottom quantile copies its top quantile, and it makes
exactly the choices it would make if it were the whole search space (its generator is seeded the
same way): a PBT over ``task.widths`` x learning rates equals one PBT per width. A structure with
a single trial trains without exploit.

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
from jaxtune.config.schema import KEYS, NUMERIC_KEYS, check_value, is_hparam, numeric_keys
from jaxtune.engine.history import eval_column
from jaxtune.engine.population import Population
from jaxtune.engine.result import SweepResult
from jaxtune.engine.run import Sweep
from jaxtune.engine.selection import Selection
from jaxtune.engine.trials import structure_of
from jaxtune.errors import ConfigError

__all__ = [
    "PBTState",
    "copy_states",
    "exploit_explore",
    "run_pbt",
    "structure_groups",
    "winning_schedule",
]

#: Numeric keys PBT never perturbs: they fix the data order and the compiled batch shape.
_FIXED = ("train.seed", "train.batch_size")

#: What PBT can perturb, as the error messages list it.
_PERTURBABLE = ", ".join([*(k for k in NUMERIC_KEYS if k not in _FIXED), "hparams.*"])


def _traced(sweep: Sweep) -> tuple[str, ...]:
    """The keys whose values are arguments of the compiled program (numeric, per trial)."""
    base = sweep.cfg.base
    extra = sorted({k for o in sweep.overrides for k in o if is_hparam(k)} - set(base))
    return (*numeric_keys(base), *extra)


def _explorable(sweep: Sweep) -> list[str]:
    """The keys PBT perturbs: the traced ones the search space sets (seed and batch size
    excepted). A numeric structure key that takes several values is refused."""
    traced = set(_traced(sweep))
    base = sweep.cfg.base
    space = list(dict.fromkeys(k for o in sweep.overrides for k in o))
    structural = [
        k
        for k in space
        if k not in traced
        and k in KEYS
        and KEYS[k].kind in ("float", "int")
        and len({repr({**base, **o}[k]) for o in sweep.overrides}) > 1
    ]
    if structural:
        names = ", ".join(structural)
        verb = "varies" if len(structural) == 1 else "vary"
        raise ConfigError(
            f"sweep.strategy = 'pbt' perturbs traced hyperparameters only ({_PERTURBABLE}); "
            f"{names} {verb} in the search space but "
            f"{'is a structure key' if len(structural) == 1 else 'are structure keys'} (a new "
            "value needs a new compiled program): fix it in the base configuration, or sweep "
            "it with another sweep.strategy"
        )
    explorable = [k for k in space if k in traced and k not in _FIXED]
    if not explorable:
        raise ConfigError(
            "sweep.strategy = 'pbt' needs numeric hyperparameters that vary in the search space "
            f"(one of {_PERTURBABLE}): PBT perturbs those"
        )
    return explorable


def structure_groups(sweep: Sweep) -> list[list[int]]:
    """The trials (ids) of each structure of the search space, in order of first appearance.

    Trials share a structure when their configurations differ in traced hyperparameters only
    (and set the same ones): their states have the same shapes, so one can copy another's.
    """
    traced = _traced(sweep)
    base = sweep.cfg.base
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(sweep.overrides):
        full = {**base, **o}
        unset = tuple(k for k in traced if full.get(k) is None)
        groups.setdefault((structure_of(full, traced), unset), []).append(i)
    return list(groups.values())


def _perturbed(key: str, like: Any, factor: float) -> Any:
    """``like`` times ``factor``, within the key's bounds. An integer moves by at least one
    in the factor's direction (``round(2 * 1.25)`` is 2: small integers would never move)."""
    value = like * factor
    if isinstance(like, int) and not isinstance(like, bool):
        value = round(value)
        if value == like:
            value = like + (1 if factor > 1 else -1)
    return _clamp(key, value, like)


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


def _resample(sweep: Sweep, key: str, rng: np.random.Generator, like: Any) -> Any:
    """A value of ``key`` drawn from the search space (``like``, the current value, when the
    draw would unset the key: that is a structure change)."""
    cfg = sweep.cfg
    if key in cfg.space:
        value = space_lib.sample_one(cfg.space[key], float(rng.random()))
        return like if value is None else value
    values = sorted({o[key] for o in sweep.overrides if o.get(key) is not None})
    return values[int(rng.integers(len(values)))]


def _set(hp: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """The values to write into the compiled calls (an unset key is no argument)."""
    return {i: {k: v for k, v in h.items() if v is not None} for i, h in hp.items()}


def exploit_explore(
    sweep: Sweep,
    values: Mapping[int, float],
    hp: Mapping[int, dict[str, Any]],
    step: int,
    mode: str,
    groups: Sequence[Sequence[int]] | None = None,
) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
    """One PBT round: who copies whom and each copier's new hyperparameters.

    Args:
      values: each trial's validation metric at ``step`` (NaN for a diverged trial).
      hp: each trial's current values of the explored keys (None: unset, never perturbed).
      groups: trials that may copy one another (:func:`structure_groups`; default: all of
        ``values``). Each group is ranked on its own and draws from a generator seeded with
        ``(sweep.seed, step)``, as if it were the whole population.

    Returns:
      ``(copies, new_hp)``: ``copies[dst] = src`` and the explored values of each ``dst``.
    """
    base = sweep.cfg.base
    q, p_resample = base["pbt.quantile"], base["pbt.resample_probability"]
    copies, new_hp = {}, {}
    for group in [list(values)] if groups is None else groups:
        rng = np.random.default_rng([sweep.cfg.seed, step])
        order = Selection("", mode).rank({i: values[i] for i in group})
        k = max(1, math.floor(q * len(order))) if len(order) >= 2 else 0
        top, bottom = order[:k], order[len(order) - k :]
        for dst in bottom:
            src = top[int(rng.integers(len(top)))]
            copies[dst] = src
            new = {}
            for key, v in hp[src].items():
                if v is None:
                    new[key] = None
                elif rng.random() < p_resample:
                    new[key] = _resample(sweep, key, rng, v)
                else:
                    new[key] = _perturbed(key, v, 0.8 if rng.random() < 0.5 else 1.25)
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
    """``sweep.strategy = "pbt"``: population-based training of the search space's trials
    (each structure of the search space its own population; see the module docstring)."""
    base = sweep.cfg.base
    every, steps = base["train.eval_every"], sweep.steps
    interval = base["pbt.interval"] or 2 * every
    keys = _explorable(sweep)  # before anything compiles
    groups = structure_groups(sweep)
    n = len(sweep.overrides)
    initial = {i: {k: {**base, **sweep.overrides[i]}[k] for k in keys} for i in range(n)}
    pop, start, notes = sweep.start(sweep.population())
    state = PBTState({i: dict(v) for i, v in initial.items()})
    if notes is not None:
        state = PBTState.from_json(notes)
        pop.set_hp(_set(state.hp))
    sweep.begin(pop, start)

    def exploit(at: int) -> None:
        col = eval_column(sweep.history, at)
        diverged = pop.diverged_steps()
        values = {
            i: math.nan if diverged[i] is not None else float(sweep.history[sel.metric][i, col])
            for i in range(n)
        }
        copies, new_hp = exploit_explore(sweep, values, state.hp, at, sel.mode, groups)
        copy_states(pop, copies)
        pop.set_hp(_set(new_hp))
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
