"""Execution forms: how a call loops over steps and batches its trials.

A form is ``LOOP/TRIALS`` (``train.execution``; ``"auto"`` measures, see
:mod:`jaxtune.engine.form_choice`):

* the loop over the steps of a chunk: ``scan`` (one ``lax.scan`` over the chunk per dispatch),
  ``scan:M`` (a scan of ``M`` steps per dispatch, the host looping over dispatches), either
  with ``(unroll=U)`` appended (``scan(unroll=4)``: ``lax.scan``'s ``unroll``, ``U`` steps per
  loop iteration, so XLA runs a fraction of the loop iterations and can fuse across steps),
  ``unroll``
  / ``unroll:M`` (the chunk, or ``M`` steps, unrolled in one program), or ``host`` (one step
  per dispatch, state buffers donated from step to step);
* the trial axis of a call: ``vmap`` (one program over stacked trials), ``unroll`` (every
  trial of a device traced separately into one program), ``map`` (``lax.map``, a loop over the
  trials) or ``map:K`` (``lax.map`` over vmapped groups of ``K`` trials).

Every form trains each trial exactly as its solo run does: the batch of step ``t``, its keys,
the divergence quarantine and the evaluation are the per-trial functions of
:mod:`jaxtune.engine.batching`. The forms differ in what XLA sees. ``scan(vmap)`` suits dense
models on any backend and every model on GPUs and TPUs (a loop costs nothing there). On a CPU,
XLA runs convolutions slowly inside a loop body (their backward pass above all) and turns vmapped
per-trial kernels into one grouped convolution; host-driven steps with the trials unrolled avoid
both. The form changes float rounding only, so a resumed run reuses the recorded choice.

The trial axis is sharded over the devices of the mesh with ``jax.shard_map``: each device runs
the form over its own trials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxtune.engine.batching import BatchLayout, make_evaluate, make_shuffle, make_step
from jaxtune.engine.quarantine import (
    flag_nonfinite,
    mark_diverged,
    put_back_diverged,
    reset_flags,
)
from jaxtune.engine.step import TrainStep
from jaxtune.errors import ConfigError

__all__ = ["CallFunctions", "Form", "call_functions", "parse_form"]

_P = jax.sharding.PartitionSpec
LOOPS = ("scan", "unroll", "host")
TRIAL_AXES = ("vmap", "unroll", "map")


@dataclasses.dataclass(frozen=True)
class Form:
    """One execution form (see the module docstring); ``str(form)`` is its configuration value.

    Attributes:
      loop: ``scan``, ``unroll`` or ``host``.
      steps: steps per dispatch of ``scan`` / ``unroll`` (None: the whole chunk).
      trials: ``vmap``, ``unroll`` or ``map``.
      batch: trials vmapped together per ``map`` iteration (None: one).
      unroll: steps per loop iteration of a ``scan`` (``lax.scan``'s ``unroll``; None: one).
    """

    loop: str = "scan"
    steps: int | None = None
    trials: str = "vmap"
    batch: int | None = None
    unroll: int | None = None

    def __str__(self) -> str:
        loop = (
            self.loop if self.steps is None or self.loop == "host" else f"{self.loop}:{self.steps}"
        )
        if self.unroll is not None:
            loop += f"(unroll={self.unroll})"
        trials = self.trials if self.batch is None else f"{self.trials}:{self.batch}"
        return f"{loop}/{trials}"

    def defers_quarantine(self, per_device: int) -> bool:
        """Whether a one-program chunk of this form, ``per_device`` trials on each device,
        defers the divergence quarantine to its end (:mod:`jaxtune.engine.quarantine`): for
        batched trials and for one unrolled trial. For several unrolled trials XLA fuses the
        per-step selects without a second pass: deferring measured 1.03x the per-step time for
        four digits-MLP trials, and 0.95x for one (benchmarks/results/
        quarantine_cpu_unroll_split.json)."""
        return self.trials != "unroll" or per_device == 1

    def steps_per_call(self, length: int) -> int:
        """Steps each dispatch runs for a chunk of ``length`` steps."""
        if self.loop == "host":
            return 1
        return min(self.steps or length, length)


def parse_form(text: str, key: str = "train.execution") -> Form:
    """The :class:`Form` of a configuration value such as ``"host/unroll"``.

    Example:
      >>> parse_form("scan:16/map:4")
      Form(loop='scan', steps=16, trials='map', batch=4, unroll=None)
      >>> str(parse_form("host/vmap"))
      'host/vmap'
      >>> parse_form("scan(unroll=4)/unroll").unroll
      4
    """
    from jaxtune.config.schema import EXECUTION_TEXT

    bad = ConfigError(f"{key} = {text!r} is invalid: expected {EXECUTION_TEXT}")
    if not isinstance(text, str) or text.count("/") != 1:
        raise bad
    loop_text, trials_text = text.split("/")
    unroll = None
    if loop_text.endswith(")") and "(unroll=" in loop_text:
        loop_text, _, num = loop_text[:-1].partition("(unroll=")
        if not _positive(num):
            raise bad
        unroll = int(num)

    def split(part: str, names: Sequence[str]) -> tuple[str, int | None]:
        name, _, num = part.partition(":")
        if name not in names or (num and not _positive(num)):
            raise bad
        return name, int(num) if num else None

    loop, steps = split(loop_text, LOOPS)
    trials, batch = split(trials_text, TRIAL_AXES)
    if (loop == "host" and steps is not None) or (trials != "map" and batch is not None):
        raise bad
    if unroll is not None and loop != "scan":
        raise bad
    return Form(loop, steps, trials, batch, unroll)


def _positive(text: str) -> bool:
    """Whether ``text`` spells a positive integer in ASCII digits."""
    return text.isascii() and text.isdigit() and int(text) >= 1


# ----------------------------------------------------------------------------------------------
# Building a call's functions for a form.


def _stacked(trees: Sequence[Any]) -> Any:
    """Trees of the same structure stacked leaf by leaf on a new leading (trial) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _num_trials(tree: Any) -> int:
    """The length of the leading (trial) axis of a tree's leaves."""
    return jax.tree.leaves(tree)[0].shape[0]


def _trial(tree: Any, i: int) -> Any:
    """Trial ``i`` of a tree whose leaves have a leading trial axis."""
    return jax.tree.map(lambda a: a[i], tree)


def _over_trials(form: Form, fn: Callable, args: tuple) -> Any:
    """``fn`` applied to every trial of ``args`` (leaves with a leading trial axis), stacked."""
    if form.trials == "vmap":
        return jax.vmap(fn)(*args)
    if form.trials == "map":
        return jax.lax.map(lambda a: fn(*a), args, batch_size=form.batch)
    return _stacked([fn(*_trial(args, i)) for i in range(_num_trials(args))])


def _evaluated(form: Form, state: Any) -> Form:
    """The form a device evaluates its trials (``state``: their states) in: one unrolled trial
    is evaluated vmapped, the same computation, which XLA:CPU ran 1.5x faster for the bytes_lm
    transformer's evaluation (453 against 673 ms) and as fast for the dense and conv nets."""
    if form.trials == "unroll" and _num_trials(state) == 1:
        return dataclasses.replace(form, trials="vmap")
    return form


def _local_steps(form, step_at, state, hp, data, batches, start, length, keep, *until, last):
    """``length`` steps of one device's trials in ``form``: ``(state, metrics [length, n])``.
    ``keep`` is passed to every trial's step, or with ``until`` (per trial) a trial steps with
    the per-step quarantine where ``t < until`` and is left as it is elsewhere.
    ``last``: None, or the ``keep`` of the last step, which a ``scan`` then runs after its
    loop, so that what the caller does with the final state (the deferred quarantine's
    put-back) fuses into that step's update instead of making a pass of its own.

    Unrolled trials in a ``scan`` carry their states apart, a tuple of one state per trial,
    stacked again after the loop: slicing and restacking a stacked carry at every step made
    XLA copy each trial's whole state twice per step (for the digits MLP 2.5x the floats a
    hand-written loop copies; the chunk took 1.05x its time for one trial, 1.15x for four)."""
    split = form.trials == "unroll" and form.loop == "scan"

    def body(s, ti, keep=keep):
        t, i = ti
        trial_step, per_trial = step_at(data, batches, t, i)

        def fn(si, hi, *rest):
            if until:
                ui, *rest = rest
                return trial_step(si, hi, *rest, keep=t < ui)
            return trial_step(si, hi, *rest, keep=keep)

        args = (hp, *until, *per_trial)
        if not split:
            return _over_trials(form, fn, (s, *args))
        outs = [fn(sj, *_trial(args, j)) for j, sj in enumerate(s)]
        return tuple(o[0] for o in outs), _stacked([o[1] for o in outs])

    local = jnp.arange(length, dtype=jnp.int32)
    last_keep = keep if last is None else last
    if form.loop != "scan":
        outs = []
        for i in range(length):
            state, metrics = body(state, (start + i, i), last_keep if i == length - 1 else keep)
            outs.append(metrics)
        return state, _stacked(outs)
    carry = tuple(_trial(state, j) for j in range(_num_trials(state))) if split else state
    head = length - 1 if last is not None and length > 1 else length
    carry, metrics = jax.lax.scan(
        body, carry, (start + local[:head], local[:head]), unroll=form.unroll or 1
    )
    if head < length:
        carry, last = body(carry, (start + head, local[head]), last_keep)
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), metrics, last)
    return (_stacked(carry) if split else carry), metrics


class CallFunctions(NamedTuple):
    """A call's functions (not yet jitted); ``length`` is static, leaves have a trial axis.

    * ``init(hp, keys) -> state``
    * ``shuffle(data_key, keys, hp, start, *, length) -> (perms, first)``
    * ``steps(state, hp, data, batches, start, *, length, keep="finite") -> (state, metrics
      [length, n])``: ``batches`` is the chunk's ``(perms, first)`` on the device, or ``(feed,
      which, offset)`` fed from the host (:func:`jaxtune.engine.batching.make_step`);
      ``keep``: which updates the steps keep (:mod:`jaxtune.engine.step`); ``last_apart``:
      a ``scan`` leaves the last step out of its loop (see ``chunk``)
    * ``chunk(state, hp, data, data_key, keys, start, *, length) -> (state, metrics)``: a
      whole chunk in one program, its shuffle included, for a chunk run in one dispatch from
      the on-device split (then there is no separate shuffle program and no hand-over between
      two). The evaluation stays a program of its own: folding it in was neutral on the
      digits MLP and cost each chunk program's compile the evaluation's again
      (benchmarks/results/folded_eval_cpu.json). For batched trials (``vmap``, ``map``)
      and one unrolled trial per device its quarantine is deferred: the steps keep every
      update (no per-step selects, which cost XLA a second pass over the optimizer state)
      and at the chunk's end every diverged trial gets its state of the chunk's start
      back; a ``scan`` runs the last step after its loop, so that those selects fuse into
      its update.
      ``metrics`` then also holds each trial's ``diverged_step``: a trial that diverged
      within the chunk must be replayed. When the steps record no gradient norm
      (``train.grad_norm = false``) they compute none there, and the chunk also flags the
      trials its steps left non-finite (:func:`jaxtune.engine.quarantine.flag_nonfinite`)
    * ``replay(state, hp, data, data_key, keys, start, until, *, length) -> (state,
      metrics)``: the chunk again for the trials with ``until >= 0`` (per trial: the step the
      chunk flagged), their flags cleared, with the quarantine per step for steps ``< until``
      and marked diverged at ``until`` unless caught before; the others (``until = -1``) left
      as they are. A trial flagged within a deferred chunk gets exactly its quarantined state
      and divergence step; ``metrics`` also hold ``diverged_step``
    * ``evaluate(state, hp, data) -> {"<split>.<metric>": [n]}`` over the splits in ``data``
    * ``evaluate_batch(state, hp, batch, mask) -> {"<metric>": [n]}``: sums over one batch of
      a split streamed from the host
    """

    init: Callable
    shuffle: Callable
    steps: Callable
    chunk: Callable
    replay: Callable
    evaluate: Callable
    evaluate_batch: Callable


def call_functions(
    form: Form,
    layout: BatchLayout,
    fns: TrainStep,
    n_train: int,
    mesh: jax.sharding.Mesh,
    *,
    fed: bool = False,
) -> CallFunctions:
    """The functions of one call of a group in ``form``, sharded over ``mesh``'s trial axis;
    ``fed``: the training batches come from the host."""
    step_at = make_step(layout, fns, fed=fed)
    evaluate_on = make_evaluate(layout, fns)
    own = _P() if layout.shared_batch else _P("trials")
    trials = _P("trials")
    batch_specs = (_P(), trials, _P()) if fed else (own, own)

    def init(hp, keys):
        # lax.map, not vmap: vmapped key-dependent initializers compile far more slowly.
        return jax.lax.map(lambda a: fns.init(a[1], a[0]), (hp, keys))

    def shuffle(data_key, keys, hp, start, *, length):
        return make_shuffle(layout, n_train, length)(data_key, keys, hp, start)

    def sharded_steps(state, hp, data, batches, start, length, keep="finite", *until, last=None):
        fn = jax.shard_map(
            lambda s, h, d, b, t0, *u: _local_steps(
                form, step_at, s, h, d, b, t0, length, keep, *u, last=last
            ),
            mesh=mesh,
            in_specs=(trials, trials, _P(), batch_specs, _P(), *(trials for _ in until)),
            out_specs=(trials, _P(None, "trials")),
            check_vma=False,
        )
        return fn(state, hp, data, tuple(batches), start, *until)

    def steps(state, hp, data, batches, start, *, length, keep="finite", last_apart=False):
        last = keep if last_apart else None
        return sharded_steps(state, hp, data, batches, start, length, keep, last=last)

    def chunk(state, hp, data, data_key, keys, start, *, length):
        batches = shuffle(data_key, keys, hp, start, length=length)
        if form.defers_quarantine(_num_trials(state) // mesh.size):
            # The last step flags by the norm, also unrecorded (no later step would show it).
            new, metrics = sharded_steps(
                state, hp, data, batches, start, length, "all", last="flag"
            )
            if not fns.grad_norm:
                new = flag_nonfinite(new, start + length - 1)  # the replay finds the step
            return put_back_diverged(state, new), {**metrics, "diverged_step": new.diverged_step}
        return sharded_steps(state, hp, data, batches, start, length)

    def replay(state, hp, data, data_key, keys, start, until, *, length):
        batches = shuffle(data_key, keys, hp, start, length=length)
        state = reset_flags(state, until >= 0)
        state, metrics = sharded_steps(state, hp, data, batches, start, length, "finite", until)
        state = mark_diverged(state, until >= 0, until)  # where the check did not catch it
        return state, {**metrics, "diverged_step": state.diverged_step}

    def sharded_eval(local, *replicated):
        # An evaluation of (state, hp, *replicated arguments) per trial, sharded over the trials.
        return jax.shard_map(
            lambda s, h, *r: _over_trials(_evaluated(form, s), local(*r), (s, h)),
            mesh=mesh,
            in_specs=(trials, trials, *(_P() for _ in replicated)),
            out_specs=trials,
            check_vma=False,
        )

    def evaluate(state, hp, data):
        return sharded_eval(evaluate_on, data)(state, hp, data)

    def evaluate_batch(state, hp, batch, mask):
        per_trial = lambda b, m: lambda si, hi: fns.evaluate_batch(si, hi, b, m)
        return sharded_eval(per_trial, batch, mask)(state, hp, batch, mask)

    return CallFunctions(init, shuffle, steps, chunk, replay, evaluate, evaluate_batch)
