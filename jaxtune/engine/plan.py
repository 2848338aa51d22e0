"""Trials -> groups -> calls: the frozen plan of a population (host side; nothing compiled).

Trials that share a structure (and batch-size bucket, :func:`batch_buckets`) form a *group*:
one task, one optimizer factory, one compiled program. A group is cut into *calls*, the trials
of one compiled call, padded to a multiple of the device count with copies of the first trial
(dropped from the results). The trials per call are settled before the calls are cut
(:mod:`jaxtune.engine.compile`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxtune import config as config_lib
from jaxtune.config import SweepConfig
from jaxtune.data import num_examples
from jaxtune.engine.batching import BatchLayout
from jaxtune.engine.bind import Binding
from jaxtune.engine.step import trial_keys
from jaxtune.engine.trials import hp_arrays, pad_trials, root_keys, structure_of
from jaxtune.errors import ConfigError

__all__ = ["CallSpec", "Group", "Plan", "batch_buckets", "call_arrays", "cut_calls", "group"]


@dataclasses.dataclass(frozen=True)
class Group:
    """Trials that share one compiled program (same structure and batch bucket)."""

    layout: BatchLayout
    members: tuple[int, ...]  # positions of its trials in the plan, in order
    binding: Binding
    data_index: int  # which entry of Plan.data holds this group's splits
    structure: tuple  # the configuration without numeric keys

    @property
    def signature(self) -> str:
        """Names the group's compiled program within a sweep and across its resumes: the
        layout and the structure without the keys a resume may change (``log.*``,
        ``checkpoint.*``, ...: :func:`jaxtune.config.determines_results`), which are the
        same for every trial of a sweep."""
        kept = tuple((k, v) for k, v in self.structure if config_lib.determines_results(k))
        return repr((self.layout, kept))


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """One compiled call: a contiguous slice of a group's members, padded to ``size``."""

    group: int
    offset: int  # position of the first trial within the group's members
    positions: tuple[int, ...]  # plan positions of its real trials (padding copies follow)
    size: int  # trials per call including padding (a multiple of the device count)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A population's trials, their groups and (once cut) their calls."""

    trials: tuple[dict[str, Any], ...]  # full flat config per trial
    hparams: tuple[dict[str, Any], ...]  # the varying keys of each trial
    ids: tuple[int, ...]  # the sweep-wide id of each trial (its row in the histories)
    groups: tuple[Group, ...]
    data: tuple[Any, ...]  # host splits (jaxtune.Splits), one per distinct dataset
    numeric: tuple[str, ...]
    calls: tuple[CallSpec, ...] = ()

    def group_trials(self, g: int) -> list[dict[str, Any]]:
        return [self.trials[i] for i in self.groups[g].members]

    @property
    def group_info(self) -> list[dict[str, Any]]:
        """What each group is and how it runs (for the summary line and ``result.timing``)."""
        out = []
        for g, group in enumerate(self.groups):
            sizes = [t["train.batch_size"] for t in self.group_trials(g)]
            calls = [c for c in self.calls if c.group == g]
            varying = {
                k: config_lib.space.plain(v)
                for k, v in group.structure
                if len({config_lib.space.freeze(t[k]) for t in self.trials}) > 1
            }
            out.append(
                {
                    "trials": len(group.members),
                    "batch_sizes": sorted(set(sizes)),
                    "gathered_batch": group.layout.max_batch,
                    "batch_utilization": sum(sizes) / (len(sizes) * group.layout.max_batch),
                    "shared_batch": group.layout.shared_batch,
                    "structure": varying,
                    "calls": len(calls),
                    "trials_per_call": max((c.size for c in calls), default=0),
                    "padding_trials": sum(c.size - len(c.positions) for c in calls),
                }
            )
        return out


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


def group(
    cfg: SweepConfig,
    bind: Callable[[dict[str, Any], list[dict[str, Any]]], Binding],
    trials: Sequence[tuple[int, dict[str, Any]]],
    *,
    splits: tuple[str, ...],
) -> Plan:
    """Bind each structure of the trials ``(sweep-wide id, overrides)`` and group them.

    ``bind(structure, trials)`` receives a group's structure (the flat configuration without
    numeric keys) and its trials, and returns the group's :class:`Binding`.
    """
    if not trials:
        raise ConfigError("the search space is empty: the sweep has no trials")
    ids, overrides = [i for i, _ in trials], [dict(o) for _, o in trials]
    full = [{**cfg.base, **o} for o in overrides]
    varying = list(dict.fromkeys(k for o in overrides for k in o))
    numeric = config_lib.numeric_keys(cfg.base)
    by_structure: dict[tuple, list[int]] = {}
    for i, t in enumerate(full):
        absent = (t["optimizer.momentum"] is None, t["optimizer.clip_norm"] is None)
        by_structure.setdefault((structure_of(t, numeric), absent), []).append(i)
    groups: list[Group] = []
    data: list[Any] = []
    for (structure, _), positions in by_structure.items():
        binding = bind(dict(structure), [full[i] for i in positions])
        if not any(d is binding.task.data for d in data):
            data.append(binding.task.data)
        data_index = next(j for j, d in enumerate(data) if d is binding.task.data)
        n_train = num_examples(binding.task.data.train)
        sizes = [full[i]["train.batch_size"] for i in positions]
        if max(sizes) > n_train:
            raise ConfigError(
                f"train.batch_size = {max(sizes)} is larger than the training set "
                f"({n_train} examples): expected an integer in [1, {n_train}]"
            )
        for bucket in batch_buckets(sizes, cfg.base["train.batch_grouping"]):
            members = tuple(i for i in positions if full[i]["train.batch_size"] in bucket)
            seeds = {full[i]["train.seed"] for i in members}
            layout = BatchLayout(
                batch_size=None if len(bucket) > 1 else bucket[0],
                max_batch=bucket[0],
                shared_batch=len(bucket) == 1 and len(seeds) == 1,
                eval_batch=cfg.base["eval.batch_size"],
                splits=splits if binding.task.data.test is not None else splits[:1],
            )
            groups.append(Group(layout, members, binding, data_index, structure))
    hparams = tuple({k: t[k] for k in varying} for t in full)
    return Plan(tuple(full), hparams, tuple(ids), tuple(groups), tuple(data), numeric)


def cut_calls(
    plan: Plan,
    per_call: int | None,
    devices: int,
    *,
    pow2: bool = False,
    compiled: Mapping[str, Sequence[int]] | None = None,
) -> Plan:
    """The plan with each group cut into calls of at most ``per_call`` trials (None: one call).

    Calls are padded to a multiple of ``devices``. ``pow2`` pads each call to a power of two
    trials per device, so that populations of nearby sizes share compiled programs;
    ``compiled`` maps a group's :attr:`Group.signature` to call sizes already compiled in the
    sweep: a call runs in the smallest compiled size that holds it and is at most twice the size
    it would otherwise get.
    """
    calls = []
    for g, grp in enumerate(plan.groups):
        n = len(grp.members)
        n_calls = math.ceil(n / (per_call or n))
        per_device = math.ceil(math.ceil(n / n_calls) / devices)
        exact = per_device * devices
        if pow2:
            per_device = 1 << (per_device - 1).bit_length()
            if per_call:
                per_device = min(per_device, max(1, per_call // devices))
        size = per_device * devices
        fits = [
            c
            for c in (compiled or {}).get(grp.signature, ())
            if exact <= c <= 2 * size and c % devices == 0 and (not per_call or c <= per_call)
        ]
        if fits:
            size = min(fits)  # a program the sweep already compiled, at most twice as wide
        for lo in range(0, n, size):
            calls.append(CallSpec(g, lo, grp.members[lo : lo + size], size))
    return dataclasses.replace(plan, calls=tuple(calls))


def call_arrays(plan: Plan, call: CallSpec) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(hp, keys, data_key)`` of a call as host arrays, padded to the call size.

    The dtypes come from the whole group (an ``hparams.*`` key is int32 only when it is an
    integer in every trial of the group), so every call of a group has the same signature.
    """
    trials = plan.group_trials(call.group)
    hp, keys = hp_arrays(trials, plan.numeric), root_keys(trials)
    part = slice(call.offset, call.offset + len(call.positions))
    hp, keys = pad_trials(jax.tree.map(lambda a: a[part], (hp, keys)), call.size)
    data_key = np.asarray(trial_keys(root_keys(trials[:1])[0])[1])
    return hp, keys, data_key


def trial_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Leading trial axis sharded over the mesh's ``trials`` axis."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("trials"))
