"""Composable optimizers built from Optax primitives.

:func:`make_optimizer` assembles a standard chain::

    clip(clip_norm) -> weight decay -> scale_by_optimizer(name) -> scale_by_lr(learning_rate)

from the parts exposed here, so the same parts can be reused in a custom :func:`optax.chain`.
Numerics equal the corresponding Optax aliases (:func:`optax.sgd`, :func:`optax.adagrad`,
:func:`optax.rmsprop`, :func:`optax.adam`, :func:`optax.adamw`).

Every numeric hyperparameter may be a JAX scalar array traced under :func:`jax.jit` or
:func:`jax.vmap`, so a sweep can build one optimizer per trial inside a vmapped function.
Arguments are validated (raising :class:`ValueError`) only when their values are concrete.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxtune.spec import FRACTION, NON_NEGATIVE, POSITIVE, SCHEDULE, KeySpec, check_arg

__all__ = [
    "OPTIMIZERS",
    "clip",
    "l2_weight_decay",
    "learning_rate_at",
    "make_optimizer",
    "scale_by_lr",
    "scale_by_optimizer",
]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
"""Names accepted by :func:`make_optimizer` and :func:`scale_by_optimizer`."""

# Per-optimizer defaults, matching the Optax aliases.
_DEFAULT_MOMENTUM = {"momentum": 0.9, "nesterov": 0.9, "adam": 0.9, "adamw": 0.9}
_DEFAULT_EPS = {"adagrad": 1e-7, "rmsprop": 1e-8, "adam": 1e-8, "adamw": 1e-8}
_RMSPROP_DECAY = 0.9
_ADAGRAD_INITIAL_ACCUMULATOR = 0.1


_NAME = KeySpec("choice", choices=OPTIMIZERS)


def _is_python_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _resolve_momentum(name: str, momentum: ArrayLike | None) -> ArrayLike | None:
    if name == "adagrad" and momentum is not None:
        raise ValueError(
            f"momentum is not supported by adagrad; it must be None, got {momentum!r}."
        )
    if momentum is not None:
        check_arg("momentum", momentum, FRACTION)
    return _DEFAULT_MOMENTUM.get(name) if momentum is None else momentum


def clip(clip_norm: ArrayLike) -> optax.GradientTransformation:
    """Clips updates so that their global norm is at most ``clip_norm``.

    Updates whose global norm is below ``clip_norm`` pass through unchanged.

    Args:
      clip_norm: The maximum global norm; must be > 0.

    Returns:
      The :func:`optax.clip_by_global_norm` transformation.

    Example:
      >>> tx = optax.chain(clip(1.0), scale_by_lr(0.1))
    """
    check_arg("clip_norm", clip_norm, POSITIVE)
    return optax.clip_by_global_norm(clip_norm)


def l2_weight_decay(
    weight_decay: optax.ScalarOrSchedule, *, mask: Any = None
) -> optax.GradientTransformation:
    """Adds ``weight_decay * params`` to the updates.

    Placed before an optimizer's scaling this is classic L2 regularisation; placed after it
    (as in AdamW) it is decoupled weight decay.

    Args:
      weight_decay: The decay strength, a number, a (possibly traced) array or a schedule;
        must be >= 0.
      mask: Optional pytree (or callable returning one) of booleans selecting the parameters
        to decay, as in :func:`optax.add_decayed_weights`.

    Returns:
      The :func:`optax.add_decayed_weights` transformation.

    Example:
      >>> tx = optax.chain(l2_weight_decay(1e-4), scale_by_lr(0.1))
    """
    if not callable(weight_decay):
        check_arg("weight_decay", weight_decay, NON_NEGATIVE)
    return optax.add_decayed_weights(weight_decay, mask)


def scale_by_optimizer(
    name: str,
    *,
    momentum: ArrayLike | None = None,
    b2: ArrayLike = 0.999,
    eps: ArrayLike | None = None,
) -> optax.GradientTransformation:
    """Returns an optimizer's update scaling, without the learning rate.

    Args:
      name: One of :data:`OPTIMIZERS`.
      momentum: For ``sgd``, heavy-ball momentum (``None``: none); for ``momentum`` and
        ``nesterov``, the momentum (default 0.9); for ``rmsprop``, the momentum applied to the
        scaled updates (``None``: none); for ``adam``/``adamw``, ``b1`` (default 0.9).
        ``adagrad`` requires ``None``. Must be in [0, 1).
      b2: The second-moment decay of ``adam``/``adamw``; ignored otherwise. Must be in [0, 1).
      eps: The numerical-stability constant of ``adagrad`` (default 1e-7), ``rmsprop`` and
        ``adam``/``adamw`` (default 1e-8); ignored otherwise. Must be > 0.

    Returns:
      The scaling transformation (``adamw`` gives :func:`optax.scale_by_adam`; its decoupled
      weight decay is added by :func:`make_optimizer`).

    Raises:
      ValueError: If ``name`` is unknown or a concrete argument is out of range.

    Example:
      >>> tx = optax.chain(scale_by_optimizer("adam", momentum=0.8), scale_by_lr(1e-3))
    """
    check_arg("name", name, _NAME)
    momentum = _resolve_momentum(name, momentum)
    if eps is not None:
        check_arg("eps", eps, POSITIVE)
    eps = _DEFAULT_EPS.get(name) if eps is None else eps

    if name in ("sgd", "momentum", "nesterov"):
        if momentum is None:
            return optax.identity()
        return optax.trace(decay=momentum, nesterov=name == "nesterov")
    if name == "adagrad":
        return optax.scale_by_rss(initial_accumulator_value=_ADAGRAD_INITIAL_ACCUMULATOR, eps=eps)
    if name == "rmsprop":
        rms = optax.scale_by_rms(decay=_RMSPROP_DECAY, eps=eps)
        if momentum is None:
            return rms
        return optax.chain(rms, optax.trace(decay=momentum))
    check_arg("b2", b2, FRACTION)
    return optax.scale_by_adam(b1=momentum, b2=b2, eps=eps)


def scale_by_lr(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """Scales updates by ``-learning_rate``.

    Args:
      learning_rate: A number, a (possibly traced) scalar array, or a schedule mapping the
        step count to the learning rate; a concrete number must be > 0.

    Returns:
      The :func:`optax.scale_by_learning_rate` transformation.

    Example:
      >>> tx = scale_by_lr(optax.constant_schedule(0.1))
    """
    if not callable(learning_rate):
        check_arg("learning_rate", learning_rate, POSITIVE)
    return optax.scale_by_learning_rate(learning_rate)


def _one_learning_rate(
    learning_rate: optax.ScalarOrSchedule | None, schedule: optax.Schedule | None
) -> optax.ScalarOrSchedule:
    """The learning rate given either as ``learning_rate`` or as ``schedule``."""
    if schedule is not None:
        if learning_rate is not None:
            raise ValueError(
                "Pass either learning_rate or schedule, not both; learning_rate must be None "
                "when schedule is given."
            )
        return check_arg("schedule", schedule, SCHEDULE)
    if learning_rate is None:
        raise ValueError("learning_rate must be a number > 0 or a schedule, got None.")
    return learning_rate


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule | None = None,
    *,
    momentum: ArrayLike | None = None,
    clip_norm: ArrayLike | None = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    schedule: optax.Schedule | None = None,
    b2: ArrayLike = 0.999,
    eps: ArrayLike | None = None,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
    """Builds an optimizer as an :func:`optax.chain` of this module's parts.

    The chain is ``clip(clip_norm)`` (only if ``clip_norm`` is not ``None``), weight decay,
    ``scale_by_optimizer(name, ...)`` and ``scale_by_lr(learning_rate)``. For ``adamw`` the
    weight decay is decoupled (applied after the Adam scaling, exactly as in
    :func:`optax.adamw`); for every other optimizer it is L2 regularisation applied to the
    gradient before the scaling. A weight decay equal to the Python number ``0`` is omitted;
    an array (traced or not) is always included.

    For ``rmsprop`` with momentum the trace follows the learning-rate scaling, as in
    :func:`optax.rmsprop`; this only differs from ``scale_by_optimizer("rmsprop",
    momentum=...)`` followed by ``scale_by_lr`` when the learning rate is a schedule.

    Args:
      name: One of :data:`OPTIMIZERS`.
      learning_rate: A number (> 0), a (possibly traced) scalar array, or a schedule.
      momentum: See :func:`scale_by_optimizer`.
      clip_norm: Maximum global gradient norm (> 0), or ``None`` for no clipping.
      weight_decay: Weight decay strength (>= 0), a number, array or schedule.
      schedule: Convenience alternative to passing a schedule as ``learning_rate``; if given,
        ``learning_rate`` must be ``None``.
      b2: See :func:`scale_by_optimizer`.
      eps: See :func:`scale_by_optimizer`.
      weight_decay_mask: Optional mask selecting the parameters to decay, as in
        :func:`optax.add_decayed_weights`.

    Returns:
      The optimizer.

    Raises:
      ValueError: If ``name`` is unknown, the learning rate is missing or given twice, or a
        concrete argument is out of range.

    Example:
      >>> opt = make_optimizer("momentum", 0.1, momentum=0.9, clip_norm=1.0)
      >>> params = {"w": jnp.ones(3)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.full(3, 2.0)}, state, params)
    """
    check_arg("name", name, _NAME)
    learning_rate = _one_learning_rate(learning_rate, schedule)
    parts = []
    if clip_norm is not None:
        parts.append(clip(clip_norm))
    decay = None
    if not _is_python_zero(weight_decay):
        decay = l2_weight_decay(weight_decay, mask=weight_decay_mask)
    if decay is not None and name != "adamw":
        parts.append(decay)

    if name == "rmsprop":
        _resolve_momentum(name, momentum)
        parts.append(scale_by_optimizer(name, eps=eps))
        parts.append(scale_by_lr(learning_rate))
        if momentum is not None:
            parts.append(optax.trace(decay=momentum))
        return optax.chain(*parts)

    parts.append(scale_by_optimizer(name, momentum=momentum, b2=b2, eps=eps))
    if decay is not None and name == "adamw":
        parts.append(decay)
    parts.append(scale_by_lr(learning_rate))
    return optax.chain(*parts)


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: ArrayLike) -> jax.Array:
    """Returns the learning rate in effect at step ``count``.

    Args:
      learning_rate: A number, a (possibly traced) scalar array, or a schedule.
      count: The step count (number of updates applied so far).

    Returns:
      The learning rate as a float32 scalar array.

    Example:
      >>> float(learning_rate_at(lambda c: 0.5**c, 3))
      0.125
    """
    value = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(value, dtype=jnp.float32)
