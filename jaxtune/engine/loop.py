"""The chunk loop: train a population for a span of steps, with host work in between chunks.

Each chunk runs every unit's compiled program once; between chunks the host records the
histories, calls the callbacks (progress bar, TensorBoard) and writes checkpoints. The next chunk
is dispatched before the host records the previous one, so that host work overlaps the device's.
The first Ctrl-C stops at the next chunk boundary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxtune import parallel
from jaxtune.engine.history import STEP_KEYS, STEP_METRICS
from jaxtune.engine.prepare import SPLITS

__all__ = ["Checkpoints", "SweepCallback", "eval_keys", "train"]


class SweepCallback:
    """Hooks called on the host between compiled chunks. Subclass and override what you need."""

    def on_start(self, info: dict[str, Any]) -> None:
        """``info`` has ``names``, ``hparams``, ``steps``, ``num_trials``, ``out_dir``,
        ``start_step``, ``selection``, ``groups``, ``devices``, ``backend``, ``strategy``,
        ``trial_steps`` (planned in all) and ``trial_steps_done``."""

    def on_population(self, ids: list[int], start: int, stop: int) -> None:
        """The trials ``ids`` (sweep-wide) train steps ``[start, stop)`` next (an adaptive
        strategy trains fewer trials as it goes)."""

    def on_chunk(self, start: int, stop: int, history: dict[str, np.ndarray]) -> None:
        """Steps ``[start, stop)`` are done; ``history`` holds all metrics up to ``stop``."""

    def on_end(self, result: Any) -> None:
        """The sweep finished (or stopped); ``result`` is the final :class:`SweepResult`."""


@dataclasses.dataclass
class Checkpoints:
    """When to save (every ``every`` steps and at the end) and what: a population and a note.

    ``extra`` (JSON) is stored with each checkpoint: what a strategy needs to rebuild the
    population it was running (for a plain sweep, nothing), plus the population's ``step`` and
    ``offset``. A checkpoint is numbered ``offset + step``: a strategy whose populations start
    again from step 0 (Hyperband's brackets) raises ``offset`` so the numbers keep growing.
    """

    checkpointer: Any  # jaxtune.checkpoint.SweepCheckpointer
    every: int
    last: int = 0
    offset: int = 0

    def due(self, step: int, end: int) -> bool:
        return step // self.every > self.last // self.every or step == end

    def save(self, step: int, population: Any, history: dict, extra: dict | None = None) -> None:
        extra = dict(extra or {})
        # What the sweep spent up to this checkpoint (a resumed run's timing includes it).
        spent = extra.pop("trial_steps_base", 0) + step * len(population.ids)
        extra.update(step=int(step), offset=int(self.offset), trial_steps=int(spent))
        self.checkpointer.save(
            self.offset + step,
            population.group_states(),
            history,
            population.members,
            extra=extra,
            ids=population.ids,
        )
        self.last = step

    def restart(self, offset: int) -> None:
        """A new population starts from step 0; its checkpoints are numbered from ``offset``."""
        self.offset, self.last = offset, 0


@contextlib.contextmanager
def deferred_interrupt():
    """Turn the first Ctrl-C into a request to stop at the next chunk boundary.

    A chunk's update of every trial's state is then never cut in half, so the final checkpoint
    is consistent. A second Ctrl-C interrupts at once.
    """
    requested = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print("\nstopping after the current chunk (Ctrl-C again to abort now)", flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


def eval_keys(population: Any) -> list[str]:
    """``<split>.<metric>`` of every evaluated split and metric of a population."""
    keys = []
    for g in population.plan.groups:
        for split in g.layout.splits:
            for m in ["loss", *g.binding.metric_names]:
                keys.append(f"{split}.{m}")
    return list(dict.fromkeys(keys))


def record(history, population: Any, outs, start: int, length: int) -> dict[str, np.ndarray]:
    """Write one chunk's per-step metrics and evaluations into the sweep-wide histories."""
    history = dict(history)
    plan, stop = population.plan, start + length
    n = history["train.loss"].shape[0]
    evals = {k: np.full((n,), np.nan, np.float32) for k in history if k.startswith(SPLITS)}
    for call, (metrics, ev) in zip(population.calls, outs, strict=True):
        ids = np.asarray(plan.ids)[list(call.spec.positions)]
        k = len(ids)
        for name, key in zip(STEP_METRICS, STEP_KEYS, strict=True):
            steps = np.concatenate([np.asarray(m[name]) for m in metrics])
            history[key][ids, start:stop] = steps[:, :k].T
        for name, v in ev.items():
            evals[name][ids] = np.asarray(v)[:k]
    # One column per evaluated step: populations that run the same steps (Hyperband's
    # brackets) share it, each writing its own rows.
    steps = history["eval_step"]
    at = np.flatnonzero(steps == stop)
    if at.size:
        j = int(at[0])
        rows = np.asarray(plan.ids)
        for name, v in evals.items():
            history[name] = history[name].copy()
            history[name][rows, j] = v[rows]
        return history
    j = int(np.searchsorted(steps, stop))
    history["eval_step"] = np.insert(steps, j, np.int32(stop))
    for name, v in evals.items():
        history[name] = np.insert(history[name], j, v, axis=1)
    return history


class _Chunk(NamedTuple):
    """A dispatched chunk of steps ``[start, stop)`` and its (possibly pending) outputs."""

    start: int
    stop: int
    outs: list


def _dispatch(population: Any, start: int, length: int) -> _Chunk:
    """Run every call's programs for one chunk; returns at once (JAX dispatches asynchronously)."""
    return _Chunk(start, start + length, population.dispatch(start, length))


def train(
    population: Any,
    start: int,
    stop: int,
    history: dict[str, np.ndarray],
    *,
    callbacks: Sequence[SweepCallback] = (),
    checkpoints: Checkpoints | None = None,
    extra: dict | None = None,
    end: int | None = None,
) -> tuple[int, dict[str, np.ndarray], bool]:
    """Train ``population`` over steps ``[start, stop)``. Returns ``(step, history, interrupted)``.

    Checkpoints are written every ``checkpoint.every`` steps and at step ``end`` (default
    ``stop``); before a checkpoint the loop does not run ahead, so the saved state is the state
    at the recorded step.
    """
    eval_every = population.plan.trials[0]["train.eval_every"]
    end = stop if end is None else end
    done = step = start

    def due(at: int) -> bool:
        return checkpoints is not None and checkpoints.due(at, end)

    # Set while the states are being changed (a dispatch, or a record's replay of diverged
    # trials): a second Ctrl-C there leaves them torn, so no checkpoint is written from them.
    busy: list[str] = []

    def rec(chunk: _Chunk) -> dict[str, np.ndarray]:
        length = chunk.stop - chunk.start
        busy.append("record")
        outs = population.settle(chunk.start, length, parallel.gather(chunk.outs))
        out = record(history, population, outs, chunk.start, length)
        busy.pop()
        return out

    def dispatch(at: int, length: int) -> _Chunk:
        busy.append("dispatch")
        chunk = _dispatch(population, at, length)
        busy.pop()
        return chunk

    pending: _Chunk | None = None
    ahead: _Chunk | None = None
    interrupted = torn = False
    chunks, at = [], start
    while at < stop:
        chunks.append((at, min(eval_every, stop - at)))
        at += chunks[-1][1]
    population.prefetch(chunks)  # streamed batches are built one chunk ahead
    with deferred_interrupt() as stop_requested:
        try:
            while True:
                ahead = None
                if step < stop and not stop_requested() and not (pending and due(pending.stop)):
                    ahead = dispatch(step, min(eval_every, stop - step))
                    step = ahead.stop
                if pending is not None:
                    history, done = rec(pending), pending.stop
                    for cb in callbacks:
                        cb.on_chunk(pending.start, done, history)
                    if due(done):
                        checkpoints.save(done, population, history, extra)
                pending = ahead
                if pending is None and (step >= stop or stop_requested()):
                    break
        except KeyboardInterrupt:  # raised by a callback: record what already ran
            interrupted = True
            torn = bool(busy)  # a second Ctrl-C in the middle of changing the states
            for chunk in () if torn else (pending, ahead):
                if chunk is not None and chunk.stop > done:
                    history, done = rec(chunk), chunk.stop
        finally:
            population.close_feeds()
        interrupted = interrupted or stop_requested()
        if interrupted and not torn and checkpoints is not None and done > checkpoints.last:
            checkpoints.save(done, population, history, extra)
    return done, history, interrupted
