"""The per-trial training step: public, pure and unbatched.

:func:`make_train_step` turns a :class:`jaxtune.Task` and an optimizer factory into three pure
functions of *one* trial. The sweep engine vmaps and scans exactly these; call them in your own
loop to train one trial the same way:

* ``init(key, hp) -> TrainState`` where ``key`` is the trial's root key,
  ``jax.random.PRNGKey(seed)``;
* ``train_step(state, hp, batch, step, mask=None) -> (state, metrics)`` on one gathered batch
  ``(inputs, targets)``; ``mask`` marks the real rows of a padded batch;
* ``evaluate(state, hp, split, *, batch_size=None) -> {"loss": ..., <metric>: ...}``, exact
  means over a whole split, walked in batches of ``batch_size`` (the last one masked);
* ``evaluate_batch(state, hp, batch, mask=None) -> {"loss": ..., <metric>: ...}``, the sums
  over one batch that ``evaluate`` adds up (in batch order, so a split streamed from the host
  a batch at a time gives the same means).

Keys: ``init_key, data_key, dropout_key, augment_key = jax.random.split(root, 4)``. The batch of
step ``t`` is ``jaxtune.data.batch_indices(data_key, t, batch_size, n_train)``; the dropout key of
step ``t`` is ``fold_in(dropout_key, t)`` and the augmentation key ``fold_in(augment_key, t)``.

Divergence quarantine: a step whose loss or gradient norm is not finite leaves the state unchanged
and marks the trial diverged at that step; a diverged trial never updates again. Its loss is
reported as NaN from that step on, its gradient norm and learning rate as NaN after it. The
check comes before the update, so it costs one gradient norm (also recorded). An update can only
overflow from a finite gradient with an absurd learning rate (SGD needs lr > 1e19: any gradient
entry above 1.8e19 already overflows the norm); such a trial is caught at its next step, its
state already non-finite.

``train_step(..., keep=...)`` says which updates the step keeps: ``"finite"`` (the quarantine
above, the default), ``"all"`` (every update; the divergence flags are kept as above, and the
caller puts back the state of the trials that diverged: the sweep engine does that once per
chunk, not once per step, see :mod:`jaxtune.engine.quarantine`), ``"flag"`` (as ``"all"``, its
flag always from the loss and the gradient norm) or a boolean (``True``: the quarantine above;
``False``: the state, flags included, is left as it was: the engine's replay of a chunk for
some of its trials).

With ``make_train_step(..., grad_norm=False)`` the ``grad_norm`` metric is NaN, and a step with
``keep="all"`` and no ``optimizer.clip_norm`` computes no gradient norm: its divergence flag
follows the loss alone, so a non-finite gradient with a finite loss is not flagged there. The
engine then checks the states at the chunk's end and replays the chunk with the norm
(:mod:`jaxtune.engine.quarantine`), which finds the exact step; the chunk's last step, whose
update no later step of the chunk would reveal, runs with ``keep="flag"``.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxtune.tasks import Task, make_regression_data
    >>> task = Task(
    ...     init=lambda key, hp: ({"w": jnp.zeros((3,))}, {}),
    ...     apply=lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s),
    ...     loss=lambda out, y, hp: (out - y) ** 2,
    ...     metrics=lambda out, y: {"mae": jnp.abs(out - y)},
    ...     data=make_regression_data(num_features=3),
    ... )
    >>> fns = make_train_step(task, lambda hp: optax.sgd(hp["optimizer.learning_rate"]))
    >>> hp = {"optimizer.learning_rate": jnp.float32(0.1)}
    >>> state = fns.init(jax.random.PRNGKey(0), hp)
    >>> x, y = task.data.train
    >>> for t in range(100):
    ...     state, m = fns.train_step(state, hp, (x[:32], y[:32]), t)
    >>> ev = fns.evaluate(state, hp, task.data.valid)
    >>> bool(ev["loss"] < 0.05), sorted(ev)
    (True, ['loss', 'mae'])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune.data import num_examples
from jaxtune.optimizers import learning_rate_at
from jaxtune.tasks import Task

__all__ = ["TrainState", "TrainStep", "make_train_step", "split_mean", "trial_keys"]


class TrainState(NamedTuple):
    """One trial's training state; in a sweep every leaf has a leading trial axis."""

    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array  # the raw uint32[2] root key of the trial
    diverged: jax.Array  # bool
    diverged_step: jax.Array  # int32, -1 while finite


class TrainStep(NamedTuple):
    """The pure per-trial functions of :func:`make_train_step`."""

    init: Callable[..., TrainState]
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    evaluate: Callable[..., dict[str, jax.Array]]
    evaluate_batch: Callable[..., dict[str, jax.Array]]
    grad_norm: bool = True  # whether train_step records the gradient norm


def trial_keys(key: jax.Array) -> jax.Array:
    """``init_key, data_key, dropout_key, augment_key`` of a trial with root ``key``."""
    return jax.random.split(key, 4)


def _injected_learning_rate(opt_state: Any) -> jax.Array:
    """The ``learning_rate`` an ``optax.inject_hyperparams`` state holds, else NaN."""
    try:
        value = optax.tree_utils.tree_get(opt_state, "learning_rate")
    except (KeyError, ValueError):
        value = None
    if value is None or jnp.ndim(value) != 0:
        return jnp.float32(jnp.nan)
    return jnp.asarray(value, jnp.float32)


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.mean(values)
    count = jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)
    return jnp.sum(jnp.where(mask, values, 0)) / count


def make_train_step(
    task: Task,
    optimizer: Callable[[Mapping[str, Any]], optax.GradientTransformation],
    *,
    schedule: Callable[[Mapping[str, Any]], Any] | None = None,
    rng: bool = True,
    grad_norm: bool = True,
) -> TrainStep:
    """The pure, unbatched training functions of one trial (see the module docstring).

    Args:
      task: the :class:`jaxtune.Task`.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation``; built inside the step, so
        its hyperparameters may be traced.
      schedule: optional ``schedule(hp)`` giving the learning rate (a number or an
        ``optax.Schedule``) recorded per step; without it the step records the
        ``learning_rate`` of an ``optax.inject_hyperparams`` state, or NaN.
      rng: whether ``apply`` gets a dropout key when training (``False`` for models without
        randomness saves deriving a key per step).
      grad_norm: whether ``train_step`` records the global gradient norm (``False``: its
        ``grad_norm`` metric is NaN, and a step called with ``keep="all"`` and no clip norm
        computes no norm at all: its divergence flag then follows the loss alone, see the
        module docstring).

    Returns:
      A :class:`TrainStep` of ``init``, ``train_step`` and ``evaluate``. ``train_step``'s
      metrics are ``loss`` (NaN from the divergence step on), ``grad_norm``, ``clipped``
      (``grad_norm > hp["optimizer.clip_norm"]`` when the trial has a clip norm) and
      ``learning_rate`` (these three NaN, or False, after the divergence step).
    """

    def init(key: jax.Array, hp: Mapping[str, Any]) -> TrainState:
        params, model_state = task.init(trial_keys(key)[0], hp)
        opt_state = optimizer(hp).init(params)
        false, minus_one = jnp.asarray(False), jnp.asarray(-1, jnp.int32)
        return TrainState(params, model_state, opt_state, key, false, minus_one)

    def train_step(
        state: TrainState,
        hp: Mapping[str, Any],
        batch: tuple[Any, Any],
        step: jax.Array | int,
        mask: jax.Array | None = None,
        *,
        keep: str | jax.Array = "finite",
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        inputs, targets = batch
        keys = trial_keys(state.key) if (rng or task.augment is not None) else None
        if task.augment is not None:
            inputs = task.augment(jax.random.fold_in(keys[3], step), inputs, hp)
        drop_key = jax.random.fold_in(keys[2], step) if rng else None

        def loss_fn(params):
            outputs, new_ms = task.apply(
                params, state.model_state, inputs, train=True, key=drop_key, mask=mask
            )
            return _masked_mean(task.loss(outputs, targets, hp), mask), new_ms

        (loss, new_ms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        clip = hp.get("optimizer.clip_norm")
        # The norm is skipped only where nothing reads it: not recorded, no clip norm, and
        # the caller checks the states itself (keep="all", the engine's deferred quarantine).
        needed = grad_norm or clip is not None or not (isinstance(keep, str) and keep == "all")
        norm = optax.tree.norm(grads) if needed else None  # as clip_by_global_norm computes it
        # Decided before the update, so the selects below fuse into the update itself.
        finite = jnp.isfinite(loss) if norm is None else jnp.isfinite(loss) & jnp.isfinite(norm)
        updates, new_opt = optimizer(hp).update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_state = _quarantined(state, step, finite, new_params, new_ms, new_opt, keep)
        sched = None if schedule is None else schedule(hp)
        lr = _injected_learning_rate(new_opt) if sched is None else learning_rate_at(sched, step)
        return new_state, _metrics(~state.diverged, loss, finite, norm, grad_norm, clip, lr)

    return TrainStep(
        init,
        train_step,
        functools.partial(_evaluate, task),
        functools.partial(_evaluate_batch, task),
        grad_norm,
    )


def _metrics(
    alive: jax.Array,
    loss: jax.Array,
    finite: jax.Array,
    norm: jax.Array | None,
    record_norm: bool,
    clip: Any,
    lr: Any,
) -> dict[str, jax.Array]:
    """A step's metrics: NaN (or False) where the trial had diverged, the loss NaN from its
    divergence step on, the gradient norm NaN unless ``record_norm``."""
    return {
        "loss": jnp.where(finite & alive, loss, jnp.nan),
        "grad_norm": jnp.where(alive, norm, jnp.nan) if record_norm else jnp.float32(jnp.nan),
        "clipped": (norm > clip) & alive if clip is not None else jnp.asarray(False),
        "learning_rate": jnp.where(alive, jnp.asarray(lr, jnp.float32), jnp.nan),
    }


def _quarantined(
    state: TrainState,
    step: Any,
    finite: jax.Array,
    new_params: Any,
    new_ms: Any,
    new_opt: Any,
    keep: str | jax.Array,
) -> TrainState:
    """The state after a step (``keep``: see the module docstring). With ``"finite"``, the new
    parts where the step was finite and the trial had not diverged, else the old ones; a first
    non-finite step marks the trial diverged there."""
    newly = ~finite & ~state.diverged
    diverged = state.diverged | ~finite
    diverged_step = jnp.where(newly, step, state.diverged_step).astype(jnp.int32)
    if isinstance(keep, str):
        if keep not in ("finite", "all", "flag"):
            raise ValueError(
                f"keep = {keep!r} is invalid: expected 'finite', 'all', 'flag' or a bool"
            )
        if keep in ("all", "flag"):
            return TrainState(new_params, new_ms, new_opt, state.key, diverged, diverged_step)
        ok = finite & ~state.diverged
    else:  # a replay: the per-step quarantine where keep, the old state elsewhere
        ok = keep & finite & ~state.diverged
        diverged = jnp.where(keep, diverged, state.diverged)
        diverged_step = jnp.where(keep, diverged_step, state.diverged_step)

    def kept(new, old):
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

    return TrainState(
        kept(new_params, state.params),
        kept(new_ms, state.model_state),
        kept(new_opt, state.opt_state),
        state.key,
        diverged,
        diverged_step,
    )


def _evaluate_batch(
    task: Task, state: TrainState, hp: Mapping[str, Any], batch: tuple[Any, Any], mask: Any = None
) -> dict[str, jax.Array]:
    """Sums (not means) of the loss and every metric over one batch (``mask``: real rows)."""
    x, y = batch
    outputs, _ = task.apply(state.params, state.model_state, x, train=False, key=None, mask=mask)
    values = {"loss": task.loss(outputs, y, hp), **task.metrics(outputs, y)}
    if mask is None:
        return {k: jnp.sum(v.astype(jnp.float32)) for k, v in values.items()}
    return {k: jnp.sum(jnp.where(mask, v.astype(jnp.float32), 0.0)) for k, v in values.items()}


def _evaluate(
    task: Task,
    state: TrainState,
    hp: Mapping[str, Any],
    split: tuple[Any, Any],
    *,
    batch_size: int | None = None,
) -> dict[str, jax.Array]:
    """Means of the loss and every metric over a split, in batches of ``batch_size``."""
    split = jax.tree.map(jnp.asarray, split)
    n = num_examples(split)
    size = n if batch_size is None else max(1, min(int(batch_size), n))
    num_batches = -(-n // size)
    # A mean is the sum times float32(1 / n), written out: XLA turns a division by a constant
    # into that product anyway, and a split evaluated from the host, its batch sums added up
    # outside the program (jaxtune.engine.population), takes the same product (split_mean).
    if num_batches == 1:
        return {k: split_mean(v, n) for k, v in _evaluate_batch(task, state, hp, split).items()}

    def sums(b):
        idx = b * size + jnp.arange(size)
        batch = jax.tree.map(lambda a: a[jnp.minimum(idx, n - 1)], split)
        return _evaluate_batch(task, state, hp, batch, idx < n)

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(sums, 0))

    def body(carry, b):
        return jax.tree.map(jnp.add, carry, sums(b)), None

    totals, _ = jax.lax.scan(body, zeros, jnp.arange(num_batches))
    return {k: split_mean(v, n) for k, v in totals.items()}


def split_mean(total: jax.Array, n: int) -> jax.Array:
    """The mean of ``n`` examples from their float32 sum: ``total * float32(1 / n)``, the same
    bits inside a compiled program and out of one.

    Example:
      >>> float(split_mean(jnp.float32(171.0), 180)) == float(jnp.float32(171.0) * (1 / 180))
      True
    """
    return total * np.float32(1.0 / n)
