"""One group's compiled program: every trial of a call, vmapped, over a chunk of steps.

``chunk(state, hp, data, start) = jit(scan(vmap(step)))`` over ``length`` steps, then a vmapped
evaluation of every trial on each evaluated split. The per-trial step is
:func:`jaxtune.engine.step.make_train_step`'s; this module only adds what batching needs:

* each trial gathers its batch by index from the on-device training split, using the epoch
  shuffles of the chunk (computed once per chunk, not once per step);
* trials with different batch sizes share one program: batches are gathered at the group's
  largest batch size and masked;
* trials that share their data seed and batch size see the same batch at every step: it is
  gathered once and broadcast (``in_axes=None``), so XLA runs one wide matrix product instead
  of one per trial.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxtune import data as data_lib
from jaxtune.engine.step import TrainState, TrainStep, trial_keys

__all__ = ["Program", "make_program"]


@dataclasses.dataclass(frozen=True)
class Program:
    """What a group's compiled program depends on besides shapes (hashable).

    Attributes:
      batch_size: the group's one batch size, or None when batch sizes differ (then every
        batch is gathered at ``max_batch`` and masked).
      max_batch: the largest batch size of the group.
      shared_batch: every trial has the same data seed and batch size.
      eval_batch: batch size of the evaluation walk over a split.
      splits: the evaluated splits, e.g. ``("valid", "test")``.
    """

    batch_size: int | None
    max_batch: int
    shared_batch: bool
    eval_batch: int
    splits: tuple[str, ...]


def make_program(prog: Program, fns: TrainStep, n_train: int) -> tuple[Callable, Callable]:
    """``init_all(hp, keys) -> state`` and ``chunk_all(state, hp, data, start, data_key,
    *, length) -> (state, metrics, evals)`` for a call of trials (leading axis)."""

    def init_all(hp, keys):
        # lax.map (a loop inside one program) instead of vmap: vmapped key-dependent
        # initializers take far longer to compile, and init runs once per sweep.
        return jax.lax.map(lambda a: fns.init(a[1], a[0]), (hp, keys))

    def permutations(data_key, batch, start, length):
        # The shuffles of every epoch this chunk touches.
        first = start // (n_train // batch)
        num = min(math.ceil(length / (n_train // prog.max_batch)) + 1, length)
        return data_lib.epoch_permutations(data_key, first, num, n_train), first

    def gather(train, perms, first, step, batch):
        idx = data_lib.batch_from_permutations(perms, first, step, batch, prog.max_batch)
        return jax.tree.map(lambda a: a[idx], train)

    def chunk_all(state: TrainState, hp, data, start, data_key, *, length: int):
        train = data["train"]
        steps = start + jnp.arange(length, dtype=jnp.int32)
        if prog.shared_batch:
            perms, first = permutations(data_key, prog.max_batch, start, length)

            def body(s, step):
                batch = gather(train, perms, first, step, prog.max_batch)
                return jax.vmap(fns.train_step, in_axes=(0, 0, None, None))(s, hp, batch, step)

        else:

            def trial_permutations(key, h):
                batch = prog.batch_size or h["train.batch_size"]
                return permutations(trial_keys(key)[1], batch, start, length)

            perms, first = jax.vmap(trial_permutations)(state.key, hp)

            def one(s, h, p, f, step):
                batch = prog.batch_size or h["train.batch_size"]
                mask = None
                if prog.batch_size is None:
                    mask = jnp.arange(prog.max_batch) < h["train.batch_size"]
                return fns.train_step(s, h, gather(train, p, f, step, batch), step, mask)

            def body(s, step):
                return jax.vmap(one, in_axes=(0, 0, 0, 0, None))(s, hp, perms, first, step)

        state, metrics = jax.lax.scan(body, state, steps)
        evals = {}
        for split in prog.splits:
            out = jax.vmap(
                lambda s, h, sp=split: fns.evaluate(s, h, data[sp], batch_size=prog.eval_batch)
            )(state, hp)
            evals.update({f"{split}.{k}": v for k, v in out.items()})
        return state, metrics, evals

    return init_all, chunk_all
