"""Learning-rate schedules that accept traced hyperparameters.

Every schedule here returns an :data:`optax.Schedule` (a callable mapping a step count to a
float32 scalar array) and accepts each numeric argument either as a Python number or as a JAX
scalar array, including arrays traced under :func:`jax.jit` and :func:`jax.vmap`. This lets a
sweep build one schedule per trial from a vector of hyperparameters::

    lrs = jax.vmap(lambda r: step_decay(0.1, r, 100)(step))(jnp.array([0.5, 0.7, 0.9]))

Arguments are validated (raising :class:`ValueError`) only when their values are concrete;
traced values are taken as given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxtune.spec import NON_NEGATIVE, POSITIVE, SCHEDULE, KeySpec, check_arg

__all__ = [
    "SCHEDULES",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "get_schedule",
    "step_decay",
    "warmup",
    "warmup_cosine_decay",
]


def _as_float32(value: ArrayLike) -> jax.Array:
    return jnp.asarray(value, dtype=jnp.float32)


def constant(value: ArrayLike) -> optax.Schedule:
    """Returns a schedule that always yields ``value`` (broadcast to the shape of the count).

    Args:
      value: The constant value, a number or a (possibly traced) scalar array; must be >= 0.

    Returns:
      A schedule mapping any step count to ``value`` as a float32 scalar.

    Example:
      >>> round(float(constant(0.1)(1000)), 6)
      0.1
    """
    check_arg("value", value, NON_NEGATIVE)

    def schedule(count: ArrayLike) -> jax.Array:
        return jnp.broadcast_to(_as_float32(value), jnp.shape(count))

    return schedule


def step_decay(
    init_value: ArrayLike,
    decay_rate: ArrayLike,
    every: ArrayLike,
    *,
    min_value: ArrayLike = 0.0,
) -> optax.Schedule:
    """Returns a staircase schedule decaying by ``decay_rate`` once every ``every`` steps.

    The value at step ``count`` is
    ``max(init_value * decay_rate ** floor(count / every), min_value)``.

    Args:
      init_value: The value at step 0; must be >= 0.
      decay_rate: The multiplicative factor applied once per stage; must be > 0.
      every: The number of steps per stage; must be > 0.
      min_value: A lower bound on the returned value.

    Returns:
      A schedule mapping a step count to a float32 scalar.

    Example:
      >>> sched = step_decay(1.0, 0.5, 10)
      >>> [float(sched(c)) for c in (0, 9, 10, 25)]
      [1.0, 1.0, 0.5, 0.25]
    """
    return exponential_decay(init_value, decay_rate, every, staircase=True, min_value=min_value)


def exponential_decay(
    init_value: ArrayLike,
    decay_rate: ArrayLike,
    every: ArrayLike,
    *,
    staircase: bool = False,
    min_value: ArrayLike = 0.0,
) -> optax.Schedule:
    """Returns a schedule decaying by a factor ``decay_rate`` every ``every`` steps.

    The value at step ``count`` is ``max(init_value * decay_rate ** (count / every),
    min_value)``, with the exponent rounded down when ``staircase`` is set. For
    ``decay_rate < 1`` this matches ``optax.exponential_decay(init_value, every, decay_rate,
    staircase=staircase, end_value=min_value)``, but unlike it every numeric argument may be
    traced.

    Args:
      init_value: The value at step 0; must be >= 0.
      decay_rate: The decay factor per ``every`` steps; must be > 0.
      every: The number of steps over which the value is multiplied by ``decay_rate``;
        must be > 0.
      staircase: If ``True``, decay in discrete stages instead of continuously.
      min_value: A lower bound on the returned value.

    Returns:
      A schedule mapping a step count to a float32 scalar.

    Example:
      >>> sched = exponential_decay(1.0, 0.5, 10)
      >>> round(float(sched(5)), 4)
      0.7071
    """
    check_arg("init_value", init_value, NON_NEGATIVE)
    check_arg("decay_rate", decay_rate, POSITIVE)
    check_arg("every", every, POSITIVE)

    def schedule(count: ArrayLike) -> jax.Array:
        exponent = count / every
        if staircase:
            exponent = jnp.floor(exponent)
        value = jnp.where(count <= 0, init_value, init_value * jnp.power(decay_rate, exponent))
        return _as_float32(jnp.maximum(value, min_value))

    return schedule


def cosine_decay(
    init_value: ArrayLike,
    decay_steps: ArrayLike,
    *,
    alpha: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> optax.Schedule:
    """Returns a cosine decay from ``init_value`` to ``alpha * init_value``.

    The value at step ``t <= decay_steps`` is
    ``init_value * ((1 - alpha) * (0.5 * (1 + cos(pi * t / decay_steps))) ** exponent + alpha)``
    and ``alpha * init_value`` afterwards, matching :func:`optax.cosine_decay_schedule`.

    Args:
      init_value: The value at step 0; must be >= 0.
      decay_steps: The number of steps of the decay; must be > 0.
      alpha: The final value as a fraction of ``init_value``.
      exponent: The power applied to the cosine factor.

    Returns:
      A schedule mapping a step count to a float32 scalar.

    Example:
      >>> sched = cosine_decay(1.0, 100, alpha=0.1)
      >>> round(float(sched(50)), 4), round(float(sched(500)), 4)
      (0.55, 0.1)
    """
    check_arg("init_value", init_value, NON_NEGATIVE)
    check_arg("decay_steps", decay_steps, POSITIVE)

    def schedule(count: ArrayLike) -> jax.Array:
        steps = jnp.asarray(decay_steps, dtype=jnp.float32)
        t = jnp.minimum(jnp.asarray(count, dtype=jnp.float32), steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / steps))
        return _as_float32(init_value * ((1 - alpha) * cosine**exponent + alpha))

    return schedule


def warmup(
    schedule: optax.Schedule, steps: ArrayLike, *, init_value: ArrayLike = 0.0
) -> optax.Schedule:
    """Prepends a linear warmup to ``schedule``.

    The value rises linearly from ``init_value`` at step 0 to ``schedule(0)`` at step
    ``steps``; from then on it is ``schedule(count - steps)``. This matches
    ``optax.join_schedules([optax.linear_schedule(init_value, schedule(0), steps), schedule],
    [steps])``. ``steps == 0`` (even when traced) means no warmup.

    Args:
      schedule: The schedule to run after the warmup.
      steps: The number of warmup steps; must be >= 0.
      init_value: The value at step 0.

    Returns:
      A schedule mapping a step count to a float32 scalar.

    Example:
      >>> sched = warmup(constant(1.0), 4)
      >>> [float(sched(c)) for c in (0, 2, 4, 10)]
      [0.0, 0.5, 1.0, 1.0]
    """
    check_arg("steps", steps, NON_NEGATIVE)
    check_arg("schedule", schedule, SCHEDULE)

    def warmed_up(count: ArrayLike) -> jax.Array:
        peak = schedule(0)
        # Guard the division so that steps == 0 stays finite; that branch is then unused.
        safe_steps = jnp.maximum(steps, 1)
        fraction = 1 - jnp.clip(count, 0, steps) / safe_steps
        ramp = (init_value - peak) * fraction + peak
        return _as_float32(jnp.where(count < steps, ramp, schedule(count - steps)))

    return warmed_up


def warmup_cosine_decay(
    init_value: ArrayLike,
    decay_steps: ArrayLike,
    warmup_steps: ArrayLike,
    *,
    alpha: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
    warmup_init_value: ArrayLike = 0.0,
) -> optax.Schedule:
    """Returns a linear warmup to ``init_value`` followed by a cosine decay.

    Equal to ``warmup(cosine_decay(init_value, decay_steps, alpha=alpha, exponent=exponent),
    warmup_steps, init_value=warmup_init_value)``. Note that ``decay_steps`` counts the cosine
    phase only, whereas the ``decay_steps`` of :func:`optax.warmup_cosine_decay_schedule`
    includes the warmup.

    Args:
      init_value: The peak value, reached at the end of the warmup; must be >= 0.
      decay_steps: The number of steps of the cosine phase; must be > 0.
      warmup_steps: The number of warmup steps; must be >= 0.
      alpha: The final value as a fraction of ``init_value``.
      exponent: The power applied to the cosine factor.
      warmup_init_value: The value at step 0.

    Returns:
      A schedule mapping a step count to a float32 scalar.

    Example:
      >>> sched = warmup_cosine_decay(1.0, 100, 10)
      >>> float(sched(5)), float(sched(10)), float(sched(110))
      (0.5, 1.0, 0.0)
    """
    check_arg("warmup_steps", warmup_steps, NON_NEGATIVE)
    decay = cosine_decay(init_value, decay_steps, alpha=alpha, exponent=exponent)
    return warmup(decay, warmup_steps, init_value=warmup_init_value)


SCHEDULES: Mapping[str, Callable[..., optax.Schedule]] = MappingProxyType(
    {
        "constant": constant,
        "step_decay": step_decay,
        "exponential": exponential_decay,
        "cosine": cosine_decay,
        "warmup_cosine": warmup_cosine_decay,
    }
)
"""Schedule constructors by the name a configuration uses to select them."""
_NAME = KeySpec("choice", choices=tuple(SCHEDULES))


def get_schedule(name: str, **kwargs: Any) -> optax.Schedule:
    """Builds the schedule registered in :data:`SCHEDULES` under ``name``.

    Args:
      name: One of the keys of :data:`SCHEDULES`.
      **kwargs: Arguments forwarded to the schedule constructor.

    Returns:
      The constructed schedule.

    Raises:
      ValueError: If ``name`` is not a known schedule.

    Example:
      >>> sched = get_schedule("step_decay", init_value=1.0, decay_rate=0.1, every=10)
      >>> round(float(sched(10)), 6)
      0.1
    """
    check_arg("name", name, _NAME)
    return SCHEDULES[name](**kwargs)
