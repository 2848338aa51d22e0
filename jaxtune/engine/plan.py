"""Trials -> groups -> call units.

A *trial* is the base configuration with its overrides. Its numeric keys
(:func:`jaxtune.config.numeric_keys`: learning rate, batch size, momentum, ..., every
``hparams.*``) become traced per-trial arrays; every other key is *structure*. Trials that share a
structure (and batch-size bucket) form a *group*: one task, one optimizer factory, one compiled
program. A group is cut into *units*, the trials of one compiled call, padded to a multiple of the
device count with copies of the first trial (dropped from the results).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtune import config as config_lib
from jaxtune import parallel
from jaxtune.config import SweepConfig
from jaxtune.data import num_examples
from jaxtune.engine.program import Program
from jaxtune.engine.step import trial_keys
from jaxtune.errors import ConfigError

__all__ = [
    "Bound",
    "Group",
    "Plan",
    "Unit",
    "group_states",
    "group_templates",
    "make_plan",
    "pad_trials",
    "scatter_states",
]


class Bound(NamedTuple):
    """What a group's structure binds to: the task, its step functions and a cache identity."""

    task: Any  # jaxtune.Task
    fns: Any  # jaxtune.engine.step.TrainStep
    identity: tuple  # what the compiled program depends on besides shapes
    optimizer: Any  # optimizer(hp) -> optax.GradientTransformation
    schedule: Any  # schedule(hp) -> learning rate, or None
    rng: bool  # whether apply gets a dropout key
    metric_names: tuple[str, ...] = ()  # what the task's metrics return


@dataclasses.dataclass
class Group:
    """Trials that share one compiled program (same structure and batch bucket)."""

    program: Program
    members: list[int]  # positions of its trials in the plan, in order
    trials: list[dict[str, Any]]  # their full flat configs
    bound: Bound
    data_index: int  # which entry of Plan.data holds this group's splits
    info: dict[str, Any]
    structure: tuple = ()  # the configuration without numeric keys

    @property
    def signature(self) -> str:
        """Names the group's compiled program within a sweep (program and structure)."""
        return repr((self.program, self.structure))


@dataclasses.dataclass
class Unit:
    """One compiled call: a contiguous slice of a group's trials, padded to the call size."""

    group: int
    offset: int  # position of the first trial within the group's members
    trial_ids: list[int]  # real trials, in order; the call holds padding copies after them
    size: int  # trials per call including padding (a multiple of the device count)
    hp: dict[str, jax.Array]
    keys: jax.Array  # root PRNG keys [size, 2]
    data_key: jax.Array  # the shared data key (only read when the batch is shared)
    init: Any = None
    state_shape: Any = None  # abstract state of the call (set when compiled)
    chunk: dict[int, Any] = dataclasses.field(default_factory=dict)  # length -> compiled
    state: Any = None


class Plan(NamedTuple):
    trials: list[dict[str, Any]]  # full flat config per trial
    hparams: list[dict[str, Any]]  # the varying keys of each trial
    names: list[str]
    groups: list[Group]
    units: list[Unit]
    mesh: jax.sharding.Mesh
    data: list[Any]  # host splits (jaxtune.Splits), one per distinct dataset
    ids: list[int]  # the sweep-wide id of each trial (its row in the histories)

    @property
    def group_info(self) -> list[dict[str, Any]]:
        return [g.info for g in self.groups]


def structure_of(flat: Mapping[str, Any], numeric: Sequence[str]) -> tuple:
    return tuple(sorted((k, v) for k, v in flat.items() if k not in numeric))


def batch_buckets(sizes: Sequence[int], mode: str) -> list[list[int]]:
    """Split distinct batch sizes into sub-groups that share one padded program."""
    distinct = sorted(set(sizes), reverse=True)
    if mode == "pad" or len(distinct) == 1:
        return [distinct]
    if mode == "split":
        return [[b] for b in distinct]
    counts = {b: sizes.count(b) for b in distinct}
    buckets: list[list[int]] = []
    for b in distinct:
        if buckets:
            cur = [*buckets[-1], b]
            used = sum(counts[c] * c for c in cur)
            gathered = sum(counts[c] for c in cur) * cur[0]
            if used / gathered >= 0.5:
                buckets[-1] = cur
                continue
        buckets.append([b])
    return buckets


def hp_arrays(trials: Sequence[Mapping[str, Any]], numeric: Sequence[str]) -> dict[str, np.ndarray]:
    """Every set numeric key as a host array with a leading trial axis (seed excluded)."""
    hp: dict[str, np.ndarray] = {}
    for key in numeric:
        values = [t[key] for t in trials]
        if key == "train.seed" or any(v is None for v in values):
            continue  # the seed becomes the root key; None is structurally absent
        integral = key == "train.batch_size" or (
            config_lib.is_hparam(key) and all(isinstance(v, int) for v in values)
        )
        hp[key] = np.asarray(values, np.int32 if integral else np.float32)
    return hp


def root_keys(trials: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.stack([np.asarray(jax.random.PRNGKey(t["train.seed"])) for t in trials])


def pad_trials(tree: Any, size: int) -> Any:
    """Pad the leading trial axis to ``size`` with copies of the first trial."""

    def pad(a):
        a = np.asarray(a)
        extra = size - a.shape[0]
        return a if extra == 0 else np.concatenate([a, np.repeat(a[:1], extra, axis=0)])

    return jax.tree.map(pad, tree)


def trial_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("trials"))


def make_plan(
    cfg: SweepConfig,
    bind: Callable[[dict[str, Any], list[dict[str, Any]]], Bound],
    max_per_call: int | None,
    mesh: jax.sharding.Mesh,
    *,
    splits: tuple[str, ...],
    trials: Sequence[tuple[int, dict[str, Any]]] | None = None,
    pad_pow2: bool = False,
    prefer: Mapping[str, Sequence[int]] | None = None,
) -> Plan:
    """Expand the trials, bind each structure to its task and cut groups into calls.

    ``bind(structure, trials)`` receives a group's structure (the flat configuration without
    numeric keys) and its trials, and returns the group's :class:`Bound`. ``trials`` plans an
    explicit population instead of the whole search space: ``(sweep-wide id, overrides)``
    pairs (what adaptive strategies train at each stage). ``pad_pow2`` pads each call to a power
    of two trials per device, so that populations of nearby sizes share compiled programs;
    ``prefer`` maps a group's :attr:`Group.signature` to call sizes already compiled in the
    sweep: a call runs in the smallest compiled size that holds it and is at most twice the
    size it would otherwise get.
    """
    if trials is None:
        overrides = config_lib.expand_trials(cfg)
        ids = list(range(len(overrides)))
    else:
        ids, overrides = [i for i, _ in trials], [dict(o) for _, o in trials]
    if not overrides:
        raise ConfigError("the search space is empty: the sweep has no trials")
    trials = [{**cfg.base, **o} for o in overrides]
    varying = list(dict.fromkeys(k for o in overrides for k in o))
    hparams = [{k: t[k] for k in varying} for t in trials]
    names = [f"{i:03d}-{config_lib.trial_name(h)}" for i, h in zip(ids, hparams, strict=True)]
    numeric = config_lib.numeric_keys(cfg.base)
    by_structure: dict[tuple, list[int]] = {}
    for i, t in enumerate(trials):
        absent = (t["optimizer.momentum"] is None, t["optimizer.clip_norm"] is None)
        by_structure.setdefault((structure_of(t, numeric), absent), []).append(i)
    groups: list[Group] = []
    data: list[Any] = []
    for (structure, _), positions in by_structure.items():
        bound = bind(dict(structure), [trials[i] for i in positions])
        if not any(d is bound.task.data for d in data):
            data.append(bound.task.data)
        data_index = next(j for j, d in enumerate(data) if d is bound.task.data)
        n_train = num_examples(bound.task.data.train)
        sizes = [trials[i]["train.batch_size"] for i in positions]
        if max(sizes) > n_train:
            raise ConfigError(
                f"train.batch_size = {max(sizes)} is larger than the training set "
                f"({n_train} examples): expected an integer in [1, {n_train}]"
            )
        for bucket in batch_buckets(sizes, cfg.base["train.batch_grouping"]):
            members = [i for i in positions if trials[i]["train.batch_size"] in bucket]
            seeds = {trials[i]["train.seed"] for i in members}
            prog = Program(
                batch_size=None if len(bucket) > 1 else bucket[0],
                max_batch=bucket[0],
                shared_batch=len(bucket) == 1 and len(seeds) == 1,
                eval_batch=cfg.base["eval.batch_size"],
                splits=splits if bound.task.data.test is not None else splits[:1],
            )
            used = sum(trials[i]["train.batch_size"] for i in members)
            info = {
                "trials": len(members),
                "batch_sizes": sorted(bucket),
                "gathered_batch": bucket[0],
                "batch_utilization": used / (len(members) * bucket[0]),
                "shared_batch": prog.shared_batch,
                "structure": {
                    k: config_lib.space.plain(v) for k, v in structure if _varies(k, trials)
                },
            }
            groups.append(
                Group(
                    prog, members, [trials[i] for i in members], bound, data_index, info, structure
                )
            )
    units = split_units(groups, max_per_call, mesh, numeric, pad_pow2=pad_pow2, prefer=prefer)
    return Plan(trials, hparams, names, groups, units, mesh, data, ids)


def split_units(
    groups: Sequence[Group],
    max_per_call: int | None,
    mesh: jax.sharding.Mesh,
    numeric: Sequence[str],
    *,
    pad_pow2: bool = False,
    prefer: Mapping[str, Sequence[int]] | None = None,
) -> list[Unit]:
    k = mesh.size
    sharding = trial_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    units = []
    for g, group in enumerate(groups):
        n = len(group.members)
        per_call = max_per_call or n
        n_calls = math.ceil(n / per_call)
        per_device = math.ceil(math.ceil(n / n_calls) / k)
        exact = per_device * k
        if pad_pow2:
            per_device = 1 << (per_device - 1).bit_length()
            if max_per_call:
                per_device = min(per_device, max(1, max_per_call // k))
        size = per_device * k
        compiled = (prefer or {}).get(group.signature, ())
        fits = [
            c
            for c in compiled
            if exact <= c <= 2 * size and c % k == 0 and (not max_per_call or c <= max_per_call)
        ]
        if fits:
            size = min(fits)  # a program the sweep already compiled, at most twice as wide
        n_calls = math.ceil(n / size)
        hp_all = hp_arrays(group.trials, numeric)
        keys_all = root_keys(group.trials)
        data_key = np.asarray(trial_keys(keys_all[0])[1])
        for c in range(n_calls):
            lo, hi = c * size, min((c + 1) * size, n)
            hp, keys = pad_trials((jax.tree.map(lambda a: a[lo:hi], hp_all), keys_all[lo:hi]), size)
            hp, keys = parallel.put((hp, keys), sharding)
            units.append(
                Unit(
                    g,
                    lo,
                    group.members[lo:hi],
                    size,
                    hp,
                    keys,
                    parallel.put(data_key, replicated),
                )
            )
        group.info["calls"] = n_calls
        group.info["trials_per_call"] = size
        group.info["padding_trials"] = n_calls * size - n
    return units


def _varies(key: str, trials: Sequence[Mapping[str, Any]]) -> bool:
    return len({config_lib.space.freeze(t[key]) for t in trials}) > 1


def group_templates(plan: Plan) -> list[Any]:
    """Abstract per-group states (stacked over each group's real trials), for restoring."""
    out = []
    for g, group in enumerate(plan.groups):
        unit = next(u for u in plan.units if u.group == g)
        shape = unit.state_shape
        n = len(group.members)
        out.append(
            jax.tree.map(lambda a, n=n: jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype), shape)
        )
    return out


def group_states(plan: Plan) -> list[Any]:
    """Host copies of each group's state, stacked over its real trials in member order."""
    out = []
    for g in range(len(plan.groups)):
        parts = [
            jax.tree.map(lambda a, u=u: np.asarray(a)[: len(u.trial_ids)], parallel.gather(u.state))
            for u in plan.units
            if u.group == g
        ]
        out.append(jax.tree.map(lambda *xs: np.concatenate(xs), *parts))
    return out


def scatter_states(plan: Plan, states: Sequence[Any]) -> None:
    """Give every unit its slice of the groups' states (padded, sharded over the mesh)."""
    sharding = trial_sharding(plan.mesh)
    for unit in plan.units:
        part = jax.tree.map(
            lambda a, u=unit: np.asarray(a)[u.offset : u.offset + len(u.trial_ids)],
            states[unit.group],
        )
        unit.state = parallel.put(pad_trials(part, unit.size), sharding)
