"""How a call's trials get their batches: the per-trial pieces every execution form runs.

A call trains several trials of one group. This module turns the per-trial functions of
:func:`jaxtune.engine.step.make_train_step` into the pieces the execution forms
(:mod:`jaxtune.engine.execution`) loop and batch:

* :func:`make_shuffle`: the epoch shuffles a chunk of steps touches, computed once per chunk
  (not once per step) from the shared data key or each trial's own;
* :func:`make_step`: one training step of one trial, which gathers its batch by index from the
  on-device training split. Trials with different batch sizes share one program: batches are
  gathered at the group's largest batch size and masked. Trials that share their data seed and
  batch size see the same batch at every step: :func:`make_step` then gathers it once per step
  for every trial of the call (so XLA runs one wide matrix product instead of one per trial);
* :func:`make_evaluate`: one trial's exact means over each evaluated split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune import data as data_lib
from jaxtune.engine.step import TrainStep, trial_keys

__all__ = ["BatchLayout", "make_evaluate", "make_shuffle", "make_step", "num_epochs"]


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How a group's batches are laid out (hashable; part of every compiled program's key).

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


def num_epochs(layout: BatchLayout, n_train: int, length: int) -> int:
    """How many epochs a chunk of ``length`` steps can touch (at the smallest steps/epoch)."""
    return min(math.ceil(length / (n_train // layout.max_batch)) + 1, length)


def make_shuffle(layout: BatchLayout, n_train: int, length: int) -> Callable:
    """``shuffle(data_key, keys, hp, start) -> (perms, first)`` for a chunk of ``length``.

    With a shared batch, ``perms`` is ``[epochs, n_train]`` and ``first`` a scalar (the shared
    ``data_key`` decides); otherwise both have a leading trial axis (each trial's own key).
    """
    num = num_epochs(layout, n_train, length)

    def one(data_key, batch, start):
        first = start // (n_train // batch)
        return data_lib.epoch_permutations(data_key, first, num, n_train), first

    def shuffle(data_key, keys, hp, start):
        if layout.shared_batch:
            return one(data_key, layout.max_batch, start)

        def trial(key, h):
            return one(trial_keys(key)[1], layout.batch_size or h["train.batch_size"], start)

        return jax.vmap(trial)(keys, hp)

    return shuffle


def _gather(train: Any, perms: Any, first: Any, step: Any, batch: Any, size: int) -> Any:
    idx = data_lib.batch_from_permutations(perms, first, step, batch, size)
    return jax.tree.map(lambda a: a[idx], train)


def make_step(layout: BatchLayout, fns: TrainStep, *, fed: bool = False) -> Callable:
    """``step(data, batches, t, i) -> (trial_step, per_trial)``: step ``t``, the ``i``-th of
    its dispatch.

    ``trial_step(state, hp, *per_trial_i, keep="finite") -> (state, metrics)`` trains one trial
    (``keep``: which updates it keeps, see :mod:`jaxtune.engine.step`); the caller batches it
    over ``(state, hp, *per_trial)``, whose leaves all have a leading trial axis.
    On the device (``fed=False``) ``batches`` is the chunk's ``(perms, first)`` and each batch
    is gathered from ``data["train"]``; fed from the host, ``batches`` is ``(feed, which,
    offset)``: ``feed`` holds the chunk's batches ``[distinct, steps, batch, ...]`` (one per
    distinct data seed and batch size), ``which`` each trial's row of it and ``offset`` the
    dispatch's first step within the chunk. For a shared batch the batch is taken once for
    every trial of the call and ``per_trial`` is empty.
    """

    def mask_of(hp):
        if layout.batch_size is not None:
            return None
        return jnp.arange(layout.max_batch) < hp["train.batch_size"]

    def step(data, batches, t, i):
        if fed:
            feed, which, offset = batches

            def row(r):
                return jax.tree.map(lambda a: a[r, offset + i], feed)

        if layout.shared_batch:
            if fed:
                batch = row(0)
            else:
                perms, first = batches
                batch = _gather(data["train"], perms, first, t, layout.max_batch, layout.max_batch)

            def shared(state, hp, *, keep="finite"):
                return fns.train_step(state, hp, batch, t, keep=keep)

            return shared, ()

        if fed:

            def streamed(state, hp, which_i, *, keep="finite"):
                return fns.train_step(state, hp, row(which_i), t, mask_of(hp), keep=keep)

            return streamed, (which,)

        def own(state, hp, perms_i, first_i, *, keep="finite"):
            size = layout.batch_size or hp["train.batch_size"]
            batch = _gather(data["train"], perms_i, first_i, t, size, layout.max_batch)
            return fns.train_step(state, hp, batch, t, mask_of(hp), keep=keep)

        return own, tuple(batches)

    return step


def make_evaluate(layout: BatchLayout, fns: TrainStep) -> Callable:
    """``evaluate(data) -> trial_eval`` where ``trial_eval(state, hp) -> {"<split>.<m>": v}``
    over the evaluated splits that ``data`` holds on the device."""

    def evaluate(data):
        def trial_eval(state, hp):
            out = {}
            for split in (s for s in layout.splits if s in data):
                ev = fns.evaluate(state, hp, data[split], batch_size=layout.eval_batch)
                out.update({f"{split}.{k}": v for k, v in ev.items()})
            return out

        return trial_eval

    return evaluate
