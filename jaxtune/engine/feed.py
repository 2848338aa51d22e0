"""Batches streamed from the host (``data.placement = "host"``): the same batches, fed.

A split that stays on the host (an array, an ``np.memmap``, a grain source:
:class:`jaxtune.data.HostSource`) is read a chunk at a time. The indices are the device path's
own: ``jaxtune.batch_indices(data_key, step, batch_size, n)``, computed on the device from the
chunk's epoch shuffles (:func:`jaxtune.data.epoch_permutations`), so a streamed sweep trains
exactly the batches of a device-resident one, and a resume needs no loader state. Trials that
share their data seed and batch size read one copy: a call's *feed* is ``[distinct, steps,
batch, ...]`` with one row per distinct (data key, batch size), and each trial knows its row.
A background thread builds chunk ``t + 1`` (indices, gather, stack, ``device_put``) while the
device runs chunk ``t`` (:class:`jaxtune.data.Prefetcher`).

Evaluation splits on the host are read in the batches ``evaluate`` walks on the device
(:func:`jaxtune.data.eval_indices`) and their sums added in the same order, so the means are
the same too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import data as data_lib
from jaxtune import parallel
from jaxtune.engine.batching import BatchLayout, num_epochs
from jaxtune.engine.step import trial_keys

__all__ = ["HostEval", "HostFeed"]


@functools.partial(jax.jit, static_argnames=("n", "batch", "size", "length", "num"))
def _indices(key, start, *, n, batch, size, length, num):
    """``[length, size]`` batch indices of steps ``start ..`` (the device path's own)."""
    first = start // (n // batch)
    perms = data_lib.epoch_permutations(key, first, num, n)
    ts = start + jnp.arange(length, dtype=jnp.int32)
    return jax.vmap(lambda t: data_lib.batch_from_permutations(perms, first, t, batch, size))(ts)


class HostFeed:
    """The training batches of one call, read from a host source.

    Args:
      source: the training split (a :class:`jaxtune.data.HostSource`).
      layout: the group's batch layout; ``trials``: the call's trial configurations (padded
        positions repeat the first trial, as the call's arrays do); ``group_first``: the
        group's first trial (its data key is the shared one).
      mesh: the devices (the feed is replicated on every one).
    """

    def __init__(
        self,
        source: data_lib.HostSource,
        layout: BatchLayout,
        trials: Sequence[Mapping[str, Any]],
        group_first: Mapping[str, Any],
        mesh: jax.sharding.Mesh,
    ) -> None:
        self.source, self.layout, self.mesh = source, layout, mesh
        self.n = len(source)

        def data_key(trial: Mapping[str, Any]) -> tuple:
            return tuple(np.asarray(trial_keys(jax.random.PRNGKey(trial["train.seed"]))[1]))

        if layout.shared_batch:
            pairs = [(data_key(group_first), layout.max_batch)]
            which = [0] * len(trials)
        else:
            pairs, which = [], []
            for t in trials:
                pair = (data_key(t), layout.batch_size or t["train.batch_size"])
                if pair not in pairs:
                    pairs.append(pair)
                which.append(pairs.index(pair))
        self.pairs = pairs
        self.which = np.asarray(which, np.int32)

    def spec(self, length: int) -> Any:
        """The feed's abstract shape for a chunk of ``length`` steps."""
        lead = (len(self.pairs), length, self.layout.max_batch)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(lead + tuple(s.shape), s.dtype),
            self.source.element_spec,
        )

    def indices(self, start: int, length: int) -> np.ndarray:
        """``[distinct, length, max_batch]`` example indices of a chunk."""
        num = num_epochs(self.layout, self.n, length)
        out = [
            _indices(
                np.asarray(key, np.uint32),
                np.int32(start),
                n=self.n,
                batch=batch,
                size=self.layout.max_batch,
                length=length,
                num=num,
            )
            for key, batch in self.pairs
        ]
        return np.stack(jax.device_get(out))

    def build(self, start: int, length: int) -> Any:
        """The chunk's feed on the devices (reads the rows on the host)."""
        rows = data_lib.stack_batches(self.source, self.indices(start, length))
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return parallel.put(rows, replicated)


class HostEval:
    """An evaluation split read from the host in the batches the device path walks."""

    def __init__(self, source: data_lib.HostSource, eval_batch: int, mesh: jax.sharding.Mesh):
        self.source, self.mesh = source, mesh
        self.n = len(source)
        self.indices, mask = data_lib.eval_indices(self.n, eval_batch)
        # One batch: the device path evaluates it unmasked; so does this one.
        self.masks = [None] if len(self.indices) == 1 else list(mask)

    def spec(self) -> tuple[Any, Any]:
        """Abstract ``(batch, mask)`` of one evaluation batch."""
        size = self.indices.shape[1]
        batch = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct((size, *s.shape), s.dtype), self.source.element_spec
        )
        mask = None if self.masks[0] is None else jax.ShapeDtypeStruct((size,), np.bool_)
        return batch, mask

    def batches(self):
        """``(batch, mask)`` on the devices, one evaluation batch at a time."""
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        for idx, mask in zip(self.indices, self.masks, strict=True):
            batch = parallel.put(self.source.gather(idx), replicated)
            yield batch, None if mask is None else parallel.put(mask, replicated)
