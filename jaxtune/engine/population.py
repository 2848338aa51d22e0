"""A population: the live trials of a sweep, as compiled units holding stacked states.

:func:`jaxtune.run_sweep` trains one population of every trial from step 0 to ``train.steps``.
Adaptive strategies (:mod:`jaxtune.search`) train a population for a while, look at the
validation metric, then continue with another population built from some of the trials' states:
the survivors of a rung, repacked into a smaller program, or a population whose weakest members
copied the state of its best. Trials keep their sweep-wide id (their row in the histories)
whichever population they are in; a trial that leaves a population keeps its histories up to its
last step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import parallel
from jaxtune.config import SweepConfig
from jaxtune.engine.bind import Binder
from jaxtune.engine.compile import Prepared, prepare
from jaxtune.engine.loop import train
from jaxtune.engine.plan import (
    group_states,
    group_templates,
    pad_trials,
    scatter_states,
    trial_sharding,
)
from jaxtune.engine.result import TrainedUnit
from jaxtune.engine.step import TrainState

__all__ = ["Population"]


class Population:
    """Trials ``(sweep-wide id, overrides)`` of ``cfg``, planned and compiled (nothing runs yet).

    Args:
      cfg: the sweep configuration.
      binder: binds each structure group to its task and optimizer.
      trials: the population; None is the whole search space with ids ``0 .. N-1``.
      like: an earlier population of the sweep whose trials per call this one keeps.
      fresh: compile the init programs now (False: the states will be loaded).
      prefer: call sizes the sweep already compiled, by group signature (see ``make_plan``).
    """

    def __init__(
        self,
        cfg: SweepConfig,
        binder: Binder,
        trials: Sequence[tuple[int, dict[str, Any]]] | None = None,
        *,
        like: Prepared | None = None,
        fresh: bool = True,
        prefer: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.cfg, self.binder = cfg, binder
        self.prep: Prepared = prepare(
            cfg, binder, trials=trials, like=like, init=fresh, prefer=prefer
        )
        self.plan = self.prep.plan

    @property
    def ids(self) -> list[int]:
        return list(self.plan.ids)

    def call_sizes(self) -> dict[str, list[int]]:
        """The call sizes of this population's programs, by group signature."""
        out: dict[str, list[int]] = {}
        for unit in self.plan.units:
            sizes = out.setdefault(self.plan.groups[unit.group].signature, [])
            if unit.size not in sizes:
                sizes.append(unit.size)
        return out

    @property
    def members(self) -> list[list[int]]:
        """Each group's trials as positions in the population (what a checkpoint records)."""
        return [g.members for g in self.plan.groups]

    def init(self) -> None:
        """Fresh states: every trial initialized from its own seed."""
        for unit in self.plan.units:
            unit.state = unit.init(unit.hp, unit.keys)

    def templates(self) -> list[Any]:
        return group_templates(self.plan)

    def group_states(self) -> list[Any]:
        return group_states(self.plan)

    def scatter(self, states: Sequence[Any]) -> None:
        scatter_states(self.plan, states)

    def states(self) -> dict[int, TrainState]:
        """Each trial's state as host arrays, by sweep-wide id."""
        out = {}
        for group, stacked in zip(self.plan.groups, group_states(self.plan), strict=True):
            for j, pos in enumerate(group.members):
                out[self.plan.ids[pos]] = jax.tree.map(lambda a, j=j: a[j], stacked)
        return out

    def load(self, states: Mapping[int, TrainState]) -> None:
        """Give every trial the state ``states[id]`` (e.g. the state it reached elsewhere)."""
        stacked = []
        for group in self.plan.groups:
            parts = [states[self.plan.ids[pos]] for pos in group.members]
            stacked.append(jax.tree.map(lambda *xs: np.stack(xs), *parts))
        scatter_states(self.plan, stacked)

    def copy(self, copies: Mapping[int, int], *, keep: tuple[str, ...] = ("key",)) -> None:
        """Trial ``dst`` takes the state of trial ``copies[dst]`` (by id), bit for bit, except
        the fields ``keep``. Within one compiled call the copy is a gather on the device; a
        copy between calls or groups goes through the host."""
        pos = {i: p for p, i in enumerate(self.plan.ids)}
        where = {p: (u, j) for u in self.plan.units for j, p in enumerate(u.trial_ids)}
        if not all(where[pos[d]][0] is where[pos[s]][0] for d, s in copies.items()):
            states = self.states()
            self.load(
                {
                    i: states[copies.get(i, i)]._replace(**{f: getattr(states[i], f) for f in keep})
                    for i in self.ids
                }
            )
            return
        for unit in self.plan.units:
            index = np.arange(unit.size)
            for j, p in enumerate(unit.trial_ids):
                src = copies.get(self.plan.ids[p])
                if src is not None:
                    index[j] = where[pos[src]][1]
            if (index == np.arange(unit.size)).all():
                continue
            take = jax.jit(_take, out_shardings=trial_sharding(self.plan.mesh))
            moved = take(unit.state, index)
            unit.state = moved._replace(**{f: getattr(unit.state, f) for f in keep})

    def set_hp(self, values: Mapping[int, Mapping[str, float]]) -> None:
        """Change numeric hyperparameters of some trials (by id); nothing recompiles."""
        pos = {i: p for p, i in enumerate(self.plan.ids)}
        sharding = trial_sharding(self.plan.mesh)
        for unit in self.plan.units:
            hp = {k: np.array(v) for k, v in parallel.gather(unit.hp).items()}
            changed = False
            for j, p in enumerate(unit.trial_ids):
                for key, v in values.get(self.plan.ids[p], {}).items():
                    hp[key][j] = v
                    changed = True
            if changed:
                hp = pad_trials({k: a[: len(unit.trial_ids)] for k, a in hp.items()}, unit.size)
                unit.hp = parallel.put(hp, sharding)
        for i, new in values.items():
            self.plan.trials[pos[i]].update(new)

    def run(self, start: int, stop: int, history: dict[str, np.ndarray], **kwargs: Any) -> Any:
        """Train steps ``[start, stop)``; see :func:`jaxtune.engine.loop.train`."""
        return train(self, start, stop, history, **kwargs)

    def diverged_steps(self) -> dict[int, int | None]:
        out = {}
        for unit in self.plan.units:
            steps = np.asarray(parallel.gather(unit.state.diverged_step))
            for j, p in enumerate(unit.trial_ids):
                out[self.plan.ids[p]] = int(steps[j]) if steps[j] >= 0 else None
        return out

    def trained_units(self) -> list[TrainedUnit]:
        """The trained states, for :attr:`jaxtune.SweepResult.units` (sweep-wide ids)."""
        multi = jax.process_count() > 1
        return [
            TrainedUnit(
                [self.plan.ids[p] for p in u.trial_ids],
                parallel.gather(u.state) if multi else u.state,
                parallel.gather(u.hp),
                self.plan.groups[u.group].bound.task,
            )
            for u in self.plan.units
        ]


def _take(state: Any, index: Any) -> Any:
    """Rows ``index`` of every leaf of a stacked state."""
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0), state)
