"""A population: the live trials of a sweep, as compiled calls that hold stacked states.

:func:`jaxtune.run_sweep` trains one population of every trial from step 0 to ``train.steps``.
Adaptive strategies (:mod:`jaxtune.search`) train a population for a while, look at the
validation metric, then continue with another population built from some of the trials' states:
the survivors of a rung, repacked into a smaller program, or a population whose weakest members
copied the state of its best. Trials keep their sweep-wide id (their row in the histories)
whichever population they are in; a trial that leaves a population keeps its histories up to its
last step. A population is built by :class:`jaxtune.engine.prepare.Preparer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import parallel
from jaxtune.data import Prefetcher
from jaxtune.engine.compile import CompiledCall, dispatches
from jaxtune.engine.plan import CallSpec, Plan, trial_sharding
from jaxtune.engine.quarantine import Replays
from jaxtune.engine.result import TrainedUnit
from jaxtune.engine.step import TrainState, split_mean
from jaxtune.engine.trials import pad_trials

__all__ = ["Call", "Population"]


@dataclasses.dataclass
class Call:
    """One compiled call at run time: its trials' arrays on the devices and their state."""

    spec: CallSpec
    hp: dict[str, jax.Array]
    keys: jax.Array  # root PRNG keys [size, 2]
    data_key: jax.Array  # the shared data key (read when the batch is shared)
    data: dict[str, Any]  # the group's splits on the devices
    program: CompiledCall
    state: TrainState | None = None
    which: jax.Array | None = None  # each trial's row of a host feed (streamed calls)

    def run(self, start: int, length: int, feed: Any = None) -> tuple[list[dict], dict]:
        """Dispatch one chunk of steps ``[start, start + length)``; returns at once (JAX runs
        it asynchronously) with the per-dispatch metrics and the evaluation after it. A call
        fed from the host gets the chunk's ``feed`` (its batches, on the devices)."""
        p = self.program
        if p.one_program(length):
            self.state, out = p.chunk(length)(
                self.state, self.hp, self.data, self.data_key, self.keys, np.int32(start)
            )
            return [out], self.evaluate()
        if p.feed is None:
            batches = p.shuffle(length)(self.data_key, self.keys, self.hp, np.int32(start))
        metrics, t = [], start
        for m in dispatches(p.form, length):
            if p.feed is not None:
                batches = (feed, self.which, np.int32(t - start))
            self.state, out = p.steps(m, length)(
                self.state, self.hp, self.data, batches, np.int32(t)
            )
            metrics.append(out)
            t += m
        if len(metrics) > 1:  # one transfer per metric when the host records the chunk
            metrics = [jax.tree.map(lambda *xs: jnp.concatenate(xs), *metrics)]
        return metrics, self.evaluate()

    def replay(self, start: int, length: int, until: np.ndarray) -> dict[str, jax.Array]:
        """Replay the one-program chunk ``[start, start + length)`` for the trials flagged at
        ``until`` (-1: not replayed) with the per-step quarantine; returns its per-step
        metrics and ``diverged_step`` (:mod:`jaxtune.engine.quarantine`)."""
        until = parallel.put(np.asarray(until, np.int32), trial_sharding(self.program.mesh))
        self.state, metrics = self.program.replay(length)(
            self.state, self.hp, self.data, self.data_key, self.keys, np.int32(start), until
        )
        return metrics

    def evaluate(self) -> dict[str, jax.Array]:
        """Every trial's means on each evaluated split (those on the host batch by batch, their
        sums added in the device path's order)."""
        p = self.program
        out = dict(p.evaluate()(self.state, self.hp, self.data))
        for split, host in p.host_evals.items():
            program, total = p.evaluate_batch(split), None
            for batch, mask in host.batches():
                sums = program(self.state, self.hp, batch, mask)
                if total is None:
                    total = jax.tree.map(jnp.zeros_like, sums)
                total = jax.tree.map(jnp.add, total, sums)
            out.update({f"{split}.{k}": split_mean(v, host.n) for k, v in total.items()})
        return out


class Population:
    """The trials of a :class:`~jaxtune.engine.plan.Plan`, compiled into calls.

    Attributes:
      plan: the trials, groups and calls.
      calls: the calls at run time, in plan order.
      execution: per group, the execution form and how it was chosen.
      per_call: the trials per call the plan was cut with (None: one call per group).
      compile_s: seconds spent compiling (and measuring forms) for this population.
      data: where each dataset lives (on the devices, or streamed from the host).
    """

    def __init__(
        self,
        plan: Plan,
        mesh: jax.sharding.Mesh,
        calls: list[Call],
        *,
        execution: list[dict[str, Any]],
        per_call: int | None,
        call_choice: str,
        compile_s: float,
        data: list[dict[str, Any]] | None = None,
    ) -> None:
        self.plan, self.mesh, self.calls = plan, mesh, calls
        self.execution, self.per_call, self.call_choice = execution, per_call, call_choice
        self.compile_s = compile_s
        #: Where each dataset lives (:meth:`jaxtune.engine.placement.Placed.info`).
        self.data = data or []
        self._prefetcher: Prefetcher | None = None
        self._planned: list[tuple[int, int]] = []
        self.replays = Replays()

    @property
    def ids(self) -> list[int]:
        return list(self.plan.ids)

    @property
    def members(self) -> list[list[int]]:
        """Each group's trials as positions in the population (what a checkpoint records)."""
        return [list(g.members) for g in self.plan.groups]

    def call_sizes(self) -> dict[str, list[int]]:
        """The call sizes of this population's programs, by group signature."""
        out: dict[str, list[int]] = {}
        for call in self.calls:
            sizes = out.setdefault(self.plan.groups[call.spec.group].signature, [])
            if call.spec.size not in sizes:
                sizes.append(call.spec.size)
        return out

    def forms(self) -> dict[str, str]:
        """The execution form of each call size, by ``"<signature>@<size>"`` (recorded with
        checkpoints, so a resumed run runs the forms it ran)."""
        return {
            f"{self.plan.groups[c.spec.group].signature}@{c.spec.size}": str(c.program.form)
            for c in self.calls
        }

    def init(self) -> None:
        """Fresh states: every trial initialized from its own seed."""
        for call in self.calls:
            call.state = call.program.init()(call.hp, call.keys)

    def dispatch(self, start: int, length: int) -> list[tuple[list[dict], dict]]:
        """Run one chunk on every call (asynchronously); see :meth:`Call.run`."""
        feeds = self._feeds(start, length)
        self.replays.dispatched(start)
        return [call.run(start, length, f) for call, f in zip(self.calls, feeds, strict=True)]

    def settle(self, start: int, length: int, outs: list) -> list:
        """The recorded (host) outputs of a dispatched chunk, once every trial that diverged
        within it is replayed (:class:`jaxtune.engine.quarantine.Replays`)."""
        return self.replays.settle(self.calls, start, length, outs)

    @property
    def streamed(self) -> bool:
        """Whether some call reads its training batches from the host."""
        return any(c.program.feed is not None for c in self.calls)

    def _build_feeds(self, chunk: tuple[int, int]) -> list[Any]:
        """Each call's feed of ``chunk``; calls reading the same rows (same source, distinct
        (seed, batch size) pairs and devices) share one."""
        built: dict[tuple, Any] = {}
        out = []
        for c in self.calls:
            feed = c.program.feed
            if feed is None:
                out.append(None)
                continue
            key = (id(feed.source), repr(feed.pairs), feed.layout.max_batch, id(feed.mesh))
            if key not in built:
                built[key] = feed.build(*chunk)
            out.append(built[key])
        return out

    def prefetch(self, chunks: Sequence[tuple[int, int]]) -> None:
        """The chunks ``(start, length)`` about to be dispatched, in order: their host feeds are
        built in a background thread, one chunk ahead (nothing to do without streamed calls)."""
        self.close_feeds()
        if self.streamed and chunks:
            self._planned = list(chunks)
            self._prefetcher = Prefetcher(self._build_feeds, list(chunks))

    def close_feeds(self) -> None:
        """Stop building feeds ahead (the chunks left unrun are dropped)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
        self._prefetcher, self._planned = None, []

    def _feeds(self, start: int, length: int) -> list[Any]:
        if not self.streamed:
            return [None] * len(self.calls)
        planned = self._planned
        if planned and planned[0] == (start, length):
            planned.pop(0)
            return self._prefetcher.get()
        return self._build_feeds((start, length))

    def describe(self) -> str:
        """What the engine chose: devices, groups, calls, batch utilization, forms."""
        lines = [f"devices: {self.mesh.size} x {jax.default_backend()}; {self.call_choice}"]
        for g, ex in zip(self.plan.group_info, self.execution, strict=True):
            rates = ex.get("rates")
            measured = ""
            if rates:
                measured = (
                    " [" + ", ".join(f"{f} {r:.4g}" for f, r in rates.items()) + " trial-steps/s]"
                )
            lines.append(
                f"group: {g['trials']} trials, {g['calls']} call(s) of {g['trials_per_call']}, "
                f"batch sizes {g['batch_sizes']} gathered at {g['gathered_batch']} "
                f"(utilization {g['batch_utilization']:.0%}"
                f"{', shared batch' if g['shared_batch'] else ''}) {g['structure'] or ''}"
                f"; execution {ex['form']} ({ex['how']}){measured}"
            )
        return "\n".join(lines)

    # --- states -------------------------------------------------------------------------------

    def templates(self) -> list[Any]:
        """Abstract per-group states (stacked over each group's real trials), for restoring."""
        out = []
        for g, group in enumerate(self.plan.groups):
            shape = next(c for c in self.calls if c.spec.group == g).program.state_shape
            n = len(group.members)
            out.append(
                jax.tree.map(lambda a, n=n: jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype), shape)
            )
        return out

    def group_states(self) -> list[Any]:
        """Host copies of each group's state, stacked over its real trials in member order."""
        out = []
        for g in range(len(self.plan.groups)):
            parts = [
                jax.tree.map(
                    lambda a, c=c: np.asarray(a)[: len(c.spec.positions)], parallel.gather(c.state)
                )
                for c in self.calls
                if c.spec.group == g
            ]
            out.append(jax.tree.map(lambda *xs: np.concatenate(xs), *parts))
        return out

    def scatter(self, states: Sequence[Any]) -> None:
        """Give every call its slice of the groups' states (padded, sharded over the mesh)."""
        sharding = trial_sharding(self.mesh)
        for call in self.calls:
            lo, n = call.spec.offset, len(call.spec.positions)
            part = jax.tree.map(
                lambda a, lo=lo, n=n: np.asarray(a)[lo : lo + n], states[call.spec.group]
            )
            call.state = parallel.put(pad_trials(part, call.spec.size), sharding)

    def states(self) -> dict[int, TrainState]:
        """Each trial's state as host arrays, by sweep-wide id."""
        out = {}
        for group, stacked in zip(self.plan.groups, self.group_states(), strict=True):
            for j, pos in enumerate(group.members):
                out[self.plan.ids[pos]] = jax.tree.map(lambda a, j=j: a[j], stacked)
        return out

    def load(self, states: Mapping[int, TrainState]) -> None:
        """Give every trial the state ``states[id]`` (e.g. the state it reached elsewhere)."""
        stacked = []
        for group in self.plan.groups:
            parts = [states[self.plan.ids[pos]] for pos in group.members]
            stacked.append(jax.tree.map(lambda *xs: np.stack(xs), *parts))
        self.scatter(stacked)

    def copy(self, copies: Mapping[int, int], *, keep: tuple[str, ...] = ("key",)) -> None:
        """Trial ``dst`` takes the state of trial ``copies[dst]`` (by id), bit for bit, except
        the fields ``keep``. Within one compiled call the copy is a gather on the device; a
        copy between calls or groups goes through the host."""
        pos = {i: p for p, i in enumerate(self.plan.ids)}
        where = {p: (c, j) for c in self.calls for j, p in enumerate(c.spec.positions)}
        if not all(where[pos[d]][0] is where[pos[s]][0] for d, s in copies.items()):
            states = self.states()
            self.load(
                {
                    i: states[copies.get(i, i)]._replace(**{f: getattr(states[i], f) for f in keep})
                    for i in self.ids
                }
            )
            return
        take = jax.jit(_take, out_shardings=trial_sharding(self.mesh))
        for call in self.calls:
            index = np.arange(call.spec.size)
            for j, p in enumerate(call.spec.positions):
                src = copies.get(self.plan.ids[p])
                if src is not None:
                    index[j] = where[pos[src]][1]
            if (index == np.arange(call.spec.size)).all():
                continue
            moved = take(call.state, index)
            call.state = moved._replace(**{f: getattr(call.state, f) for f in keep})

    def set_hp(self, values: Mapping[int, Mapping[str, float]]) -> None:
        """Change numeric hyperparameters of some trials (by id); nothing recompiles."""
        pos = {i: p for p, i in enumerate(self.plan.ids)}
        sharding = trial_sharding(self.mesh)
        for call in self.calls:
            hp = {k: np.array(v) for k, v in parallel.gather(call.hp).items()}
            changed = False
            for j, p in enumerate(call.spec.positions):
                for key, v in values.get(self.plan.ids[p], {}).items():
                    hp[key][j] = v
                    changed = True
            if changed:
                n = len(call.spec.positions)
                hp = pad_trials({k: a[:n] for k, a in hp.items()}, call.spec.size)
                call.hp = parallel.put(hp, sharding)
        for i, new in values.items():
            self.plan.trials[pos[i]].update(new)

    def diverged_steps(self) -> dict[int, int | None]:
        out = {}
        for call in self.calls:
            steps = np.asarray(parallel.gather(call.state.diverged_step))
            for j, p in enumerate(call.spec.positions):
                out[self.plan.ids[p]] = int(steps[j]) if steps[j] >= 0 else None
        return out

    def trained_units(self) -> list[TrainedUnit]:
        """The trained states, for :attr:`jaxtune.SweepResult.units` (sweep-wide ids)."""
        multi = jax.process_count() > 1
        return [
            TrainedUnit(
                [self.plan.ids[p] for p in c.spec.positions],
                parallel.gather(c.state) if multi else c.state,
                parallel.gather(c.hp),
                self.plan.groups[c.spec.group].binding.task,
            )
            for c in self.calls
        ]


def _take(state: Any, index: Any) -> Any:
    """Rows ``index`` of every leaf of a stacked state."""
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0), state)
