"""The deferred divergence quarantine of one-program chunks, and the replays it needs.

The quarantine (:mod:`jaxtune.engine.step`) keeps a trial's last finite state: per step, every
leaf of the state is selected between its new and its old value. On a small dense model that
select costs XLA a second pass over the optimizer state each step (it recomputes the update
rather than read it back). Deferring it made the digits MLP's chunk program of vmapped trials
up to 16% faster on a 2-core CPU (0.84-1.00x the time in two runs of benchmarks/quarantine.py,
N = 1 and 8). A chunk of batched trials, or of one unrolled trial per device, that runs as
one program (:meth:`jaxtune.engine.compile.CompiledCall.chunk`) therefore defers it
(:meth:`jaxtune.engine.execution.Form.defers_quarantine`):

* its steps keep every update and only track each trial's divergence flag and step (scalars);
* at the chunk's end, every diverged trial gets its state of the chunk's start back (one select
  per chunk, :func:`put_back_diverged`): a trial that had diverged before is left as it was;
* a trial that the chunk flagged at step ``d`` is replayed when the host records the chunk
  (:meth:`Replays.settle`): the chunk again from its start, with the quarantine per step (the
  gradient norm included) for that trial up to step ``d``, every other trial left as it is;
  if the per-step check has not caught it before ``d``, it is marked diverged at ``d`` (so
  the replay always agrees with what later chunks, already dispatched, took it to be). Its
  state, its divergence step and its per-step metrics then are exactly the quarantined ones,
  and its evaluations are computed again.

With ``train.grad_norm = false`` the chunk's steps compute no gradient norm (unless a trial
clips): their divergence flags follow the loss, and at the chunk's end every live trial whose
state is not finite is flagged too, at the chunk's last step (:func:`flag_nonfinite`; a
non-finite gradient with a finite loss leaves the parameters non-finite). The chunk's last step
computes the gradient norm for its flag (``keep="flag"``, not recorded): a norm that overflows
there with a finite loss and update would otherwise show only in the next chunk, the update
kept. The replay's per-step check then finds the exact step, so the results are those of the
per-step quarantine.
Two differences: a non-finite gradient that leaves no trace in the state (an optimizer that
skips such updates, a masked parameter) does not count as a divergence; and a trial whose
update overflows from a finite gradient at a chunk's last step (possible only for absurd
learning rates) is marked diverged at that step with its finite state of before it, where the
per-step check catches it one step later with its state already non-finite.

Until it is replayed the trial stays at the chunk's start (it is diverged, so later chunks put
it back too), so the replay may run after the next chunk has been dispatched; the evaluation
that chunk made of it is corrected when that chunk is recorded. A sweep in which nothing
diverges never compiles the replay program. A replayed trial's per-step metrics of the chunk
are the replay's; later chunks need none: a diverged trial records NaN after its divergence
step in every form.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import parallel
from jaxtune.engine.history import STEP_METRICS
from jaxtune.engine.step import TrainState

__all__ = [
    "Replays",
    "after_divergence",
    "flag_nonfinite",
    "mark_diverged",
    "put_back_diverged",
    "reset_flags",
]


def put_back_diverged(old: TrainState, new: TrainState) -> TrainState:
    """``new`` with the parameters, model state and optimizer state of ``old`` for every trial
    diverged in ``new`` (stacked states, leading trial axis)."""
    div = new.diverged

    def pick(a, b):
        return jnp.where(div.reshape(div.shape + (1,) * (a.ndim - 1)), a, b)

    return new._replace(
        params=jax.tree.map(pick, old.params, new.params),
        model_state=jax.tree.map(pick, old.model_state, new.model_state),
        opt_state=jax.tree.map(pick, old.opt_state, new.opt_state),
    )


def _trial_finite(tree: Any, n: int) -> jax.Array:
    """Per trial of a stacked tree: whether every entry of every leaf is finite. (A sum of
    ``a * 0`` is 0, or NaN when an entry is inf or NaN: a float reduction, which XLA:CPU
    vectorizes, where ``isfinite(a).all()`` reduces booleans.)"""
    ok = jnp.ones((n,), bool)
    for a in jax.tree.leaves(tree):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            ok &= jnp.isfinite(jnp.sum(a.reshape(n, -1) * 0, axis=1))
    return ok


def flag_nonfinite(state: TrainState, step: Any) -> TrainState:
    """``state`` with every live trial whose parameters, model state or optimizer state are
    not all finite marked diverged at ``step``.

    Steps that record no gradient norm flag only non-finite losses; a chunk catches the rest
    at its end (one pass over the state), flagged at its last step, and the replay finds the
    exact one."""
    n = state.diverged.shape[0]
    return mark_diverged(
        state, ~_trial_finite((state.params, state.model_state, state.opt_state), n), step
    )


def mark_diverged(state: TrainState, rows: jax.Array, step: Any) -> TrainState:
    """``state`` with the live trials of ``rows`` marked diverged at ``step`` (per trial, or
    one for all)."""
    newly = rows & ~state.diverged
    return state._replace(
        diverged=state.diverged | newly,
        diverged_step=jnp.where(newly, step, state.diverged_step).astype(jnp.int32),
    )


def after_divergence(metrics: dict, start: int, steps: np.ndarray, rows: np.ndarray) -> dict:
    """The per-step metrics ``[length, n]`` of a chunk from ``start`` with the rule of a
    diverged trial applied to the trials ``rows`` (diverged at ``steps``): the loss NaN from
    the divergence step on, the other metrics NaN (or False) after it."""
    t = start + np.arange(np.asarray(metrics["loss"]).shape[0])[:, None]
    out = dict(metrics)
    for k in STEP_METRICS:
        v = np.asarray(metrics[k])
        gone = rows & ((t >= steps) if k == "loss" else (t > steps))
        out[k] = np.where(gone, False if v.dtype == bool else np.nan, v)
    return out


def reset_flags(state: TrainState, rows: jax.Array) -> TrainState:
    """``state`` with the divergence flags of the trials ``rows`` cleared (a replay starts them
    at the chunk's start, where they were live)."""
    return state._replace(
        diverged=state.diverged & ~rows,
        diverged_step=jnp.where(rows, -1, state.diverged_step).astype(jnp.int32),
    )


def _patched(ev: dict, rows: np.ndarray, values: dict) -> dict:
    return {k: np.where(rows, values[k], np.asarray(v)) for k, v in ev.items()}


class Replays:
    """What a population's deferred quarantine has to settle: the chunks dispatched and not yet
    recorded, and the evaluations of replayed trials that such a chunk made too early."""

    def __init__(self) -> None:
        self.in_flight: list[int] = []  # start steps of dispatched, unrecorded chunks
        self.patches: dict[tuple[int, int], list[tuple[np.ndarray, dict]]] = {}

    def dispatched(self, start: int) -> None:
        self.in_flight.append(start)

    def settle(self, calls: list[Any], start: int, length: int, outs: list) -> list:
        """The host outputs ``outs`` (per call: ``(metrics, evaluation)``) of the chunk
        ``[start, start + length)``, after replaying every trial that diverged within it."""
        self.in_flight = [s for s in self.in_flight if s > start]
        stop, settled = start + length, []
        for c, (call, (metrics, ev)) in enumerate(zip(calls, outs, strict=True)):
            for rows, values in self.patches.pop((c, start), []):
                ev = _patched(ev, rows, values)
            steps = metrics[0].get("diverged_step") if len(metrics) == 1 else None
            if steps is not None:
                steps = np.asarray(steps)
                rows = (steps >= start) & (steps < stop)
                if rows.any():
                    until = np.where(rows, steps, -1).astype(np.int32)
                    again = parallel.gather(call.replay(start, length, until))
                    found = np.asarray(again["diverged_step"])
                    fixed = after_divergence(again, start, found, rows)
                    metrics = [
                        {
                            **metrics[0],
                            **{
                                k: np.where(rows, fixed[k], np.asarray(metrics[0][k]))
                                for k in STEP_METRICS
                            },
                        }
                    ]
                    values = {k: np.asarray(v) for k, v in parallel.gather(call.evaluate()).items()}
                    ev = _patched(ev, rows, values)
                    for later in self.in_flight:
                        self.patches.setdefault((c, later), []).append((rows, values))
            settled.append((metrics, ev))
        return settled
