"""Tests for jaxtune.schedules against Optax's schedules and closed-form numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import spec
from jaxtune.schedules import (
    SCHEDULES,
    constant,
    cosine_decay,
    exponential_decay,
    get_schedule,
    step_decay,
    warmup,
    warmup_cosine_decay,
)

COUNTS = np.arange(201)
RTOL = 1e-6
ATOL = 1e-7


def _step_decay_numpy(init_value, decay_rate, every, min_value):
    def schedule(count):
        count = np.asarray(count, dtype=np.float64)
        return np.maximum(init_value * decay_rate ** np.floor(count / every), min_value)

    return schedule


def _warmup_step(init_value, decay_rate, every, steps, warmup_init):
    return warmup(step_decay(init_value, decay_rate, every), steps, init_value=warmup_init)


def _warmup_step_reference(init_value, decay_rate, every, steps, warmup_init):
    decay = optax.exponential_decay(init_value, every, decay_rate, staircase=True)
    ramp = optax.linear_schedule(warmup_init, init_value, steps)
    return optax.join_schedules([ramp, decay], [steps])


def _warmup_cosine_reference(init_value, decay_steps, warmup_steps, alpha, warmup_init_value):
    return optax.warmup_cosine_decay_schedule(
        init_value=warmup_init_value,
        peak_value=init_value,
        warmup_steps=warmup_steps,
        decay_steps=warmup_steps + decay_steps,
        end_value=alpha * init_value,
    )


# (id, our constructor, Python-number kwargs, independent reference constructor,
#  {argument: values to vmap over}).
CASES = [
    (
        "constant",
        lambda value: constant(value),
        {"value": 0.3},
        lambda value: optax.constant_schedule(value),
        {"value": [0.0, 0.3, 2.0]},
    ),
    (
        "step_decay",
        lambda init_value, decay_rate, every: step_decay(init_value, decay_rate, every),
        {"init_value": 0.5, "decay_rate": 0.7, "every": 13},
        lambda init_value, decay_rate, every: optax.exponential_decay(
            init_value, every, decay_rate, staircase=True
        ),
        {"init_value": [0.1, 0.5, 1.0], "decay_rate": [0.1, 0.7, 0.95], "every": [1, 13, 50]},
    ),
    (
        "step_decay_min_value",
        lambda init_value, decay_rate, every, min_value: step_decay(
            init_value, decay_rate, every, min_value=min_value
        ),
        {"init_value": 0.5, "decay_rate": 0.5, "every": 10, "min_value": 0.01},
        _step_decay_numpy,
        {
            "init_value": [0.1, 0.5, 1.0],
            "decay_rate": [0.2, 0.5, 0.9],
            "every": [3, 10, 40],
            "min_value": [0.0, 0.01, 0.2],
        },
    ),
    (
        "exponential",
        lambda init_value, decay_rate, every: exponential_decay(init_value, decay_rate, every),
        {"init_value": 0.5, "decay_rate": 0.3, "every": 17},
        lambda init_value, decay_rate, every: optax.exponential_decay(
            init_value, every, decay_rate
        ),
        {"init_value": [0.1, 0.5, 1.0], "decay_rate": [0.1, 0.3, 0.99], "every": [1, 17, 100]},
    ),
    (
        "exponential_staircase_min_value",
        lambda init_value, decay_rate, every, min_value: exponential_decay(
            init_value, decay_rate, every, staircase=True, min_value=min_value
        ),
        {"init_value": 1.0, "decay_rate": 0.6, "every": 7, "min_value": 0.05},
        lambda init_value, decay_rate, every, min_value: optax.exponential_decay(
            init_value, every, decay_rate, staircase=True, end_value=min_value
        ),
        {
            "init_value": [0.3, 1.0, 3.0],
            "decay_rate": [0.2, 0.6, 0.9],
            "every": [2, 7, 30],
            "min_value": [0.0, 0.05, 0.1],
        },
    ),
    (
        "cosine",
        lambda init_value, decay_steps, alpha, exponent: cosine_decay(
            init_value, decay_steps, alpha=alpha, exponent=exponent
        ),
        {"init_value": 0.4, "decay_steps": 150, "alpha": 0.1, "exponent": 2.0},
        lambda init_value, decay_steps, alpha, exponent: optax.cosine_decay_schedule(
            init_value, decay_steps, alpha=alpha, exponent=exponent
        ),
        {
            "init_value": [0.1, 0.4, 1.0],
            "decay_steps": [1, 150, 300],
            "alpha": [0.0, 0.1, 0.5],
            "exponent": [0.5, 1.0, 2.0],
        },
    ),
    (
        "warmup",
        _warmup_step,
        {"init_value": 0.5, "decay_rate": 0.7, "every": 13, "steps": 20, "warmup_init": 0.05},
        _warmup_step_reference,
        {
            "init_value": [0.1, 0.5, 1.0],
            "decay_rate": [0.3, 0.7, 0.9],
            "every": [1, 13, 40],
            "steps": [0, 1, 20],
            "warmup_init": [0.0, 0.05, 0.3],
        },
    ),
    (
        "warmup_cosine",
        lambda init_value, decay_steps, warmup_steps, alpha, warmup_init_value: warmup_cosine_decay(
            init_value,
            decay_steps,
            warmup_steps,
            alpha=alpha,
            warmup_init_value=warmup_init_value,
        ),
        {
            "init_value": 0.4,
            "decay_steps": 150,
            "warmup_steps": 25,
            "alpha": 0.1,
            "warmup_init_value": 0.01,
        },
        _warmup_cosine_reference,
        {
            "init_value": [0.1, 0.4, 1.0],
            "decay_steps": [10, 150, 400],
            "warmup_steps": [1, 25, 60],
            "alpha": [0.0, 0.1, 0.5],
            "warmup_init_value": [0.0, 0.01, 0.2],
        },
    ),
]
CASE_IDS = [case[0] for case in CASES]


def _python_number(value, like):
    return int(value) if isinstance(like, int) else float(value)


def _reference_values(reference, kwargs):
    values = np.asarray(reference(**kwargs)(COUNTS), dtype=np.float64)
    return np.broadcast_to(values, COUNTS.shape)


@pytest.mark.parametrize(("case_id", "make", "kwargs", "reference", "sweep"), CASES, ids=CASE_IDS)
def test_matches_reference_for_python_numbers(case_id, make, kwargs, reference, sweep):
    del case_id, sweep
    schedule = make(**kwargs)
    expected = _reference_values(reference, kwargs)
    np.testing.assert_allclose(schedule(jnp.asarray(COUNTS)), expected, rtol=RTOL, atol=ATOL)
    for count in (37,):  # A Python int count.
        value = schedule(count)
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, expected[count], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("case_id", "make", "kwargs", "reference", "sweep"), CASES, ids=CASE_IDS)
def test_vmap_over_each_argument_matches_per_value(case_id, make, kwargs, reference, sweep):
    del case_id
    counts = jnp.asarray(COUNTS)

    def sweep_each(trials):
        # One vmap per argument, with all other arguments held at their Python-number values.
        return {
            arg: jax.vmap(lambda v, arg=arg: make(**{**kwargs, arg: v})(counts))(values)
            for arg, values in trials.items()
        }

    got = jax.jit(sweep_each)({arg: jnp.asarray(values) for arg, values in sweep.items()})
    for arg, values in sweep.items():
        expected = np.stack(
            [
                _reference_values(reference, {**kwargs, arg: _python_number(v, kwargs[arg])})
                for v in values
            ]
        )
        assert got[arg].shape == (len(values), len(COUNTS))
        np.testing.assert_allclose(got[arg], expected, rtol=RTOL, atol=ATOL, err_msg=arg)


@pytest.mark.parametrize(("case_id", "make", "kwargs", "reference", "sweep"), CASES, ids=CASE_IDS)
def test_jit_vmap_over_all_arguments_matches_per_value(case_id, make, kwargs, reference, sweep):
    del case_id
    counts = jnp.asarray(COUNTS)
    trials = {arg: jnp.asarray(values) for arg, values in sweep.items()}
    got = jax.jit(jax.vmap(lambda hparams: make(**{**kwargs, **hparams})(counts)))(trials)
    n_trials = len(next(iter(sweep.values())))
    expected = np.stack(
        [
            _reference_values(
                reference,
                {
                    **kwargs,
                    **{arg: _python_number(sweep[arg][i], kwargs[arg]) for arg in sweep},
                },
            )
            for i in range(n_trials)
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("case_id", "make", "kwargs", "reference", "sweep"), CASES, ids=CASE_IDS)
def test_jit_with_traced_count(case_id, make, kwargs, reference, sweep):
    del case_id, sweep
    schedule = make(**kwargs)
    expected = _reference_values(reference, kwargs)
    # A training loop carries the (traced) step count through lax.scan under jit.
    scanned = jax.jit(
        lambda c0: jax.lax.scan(lambda c, _: (c + 1, schedule(c)), c0, length=len(COUNTS))
    )(jnp.int32(0))
    np.testing.assert_allclose(scanned[1], expected, rtol=RTOL, atol=ATOL)


def test_step_decay_known_values():
    schedule = step_decay(1.0, 0.5, 10, min_value=0.1)
    got = [float(schedule(c)) for c in (0, 9, 10, 19, 20, 35, 1000)]
    np.testing.assert_allclose(got, [1.0, 1.0, 0.5, 0.5, 0.25, 0.125, 0.1], rtol=RTOL)


def test_warmup_zero_steps_is_identity_even_when_traced():
    base = cosine_decay(1.0, 50)
    counts = jnp.asarray(COUNTS)
    expected = np.asarray(optax.cosine_decay_schedule(1.0, 50)(COUNTS))
    np.testing.assert_allclose(warmup(base, 0)(counts), expected, rtol=RTOL, atol=ATOL)
    got = jax.jit(lambda s: warmup(base, s)(counts))(jnp.int32(0))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    grad = jax.jit(jax.grad(lambda s: warmup(base, s, init_value=0.1)(3)))(0.0)
    assert np.isfinite(grad)


def test_step_decay_does_not_raise_when_optax_does_under_vmap():
    rates = jnp.array([0.5, 0.9])
    got = jax.vmap(lambda r: step_decay(1.0, r, jnp.float32(10))(25))(rates)
    np.testing.assert_allclose(got, [0.25, 0.81], rtol=RTOL)


def test_schedules_mapping_and_get_schedule():
    assert set(SCHEDULES) == {"constant", "step_decay", "exponential", "cosine", "warmup_cosine"}
    kwargs = {
        "constant": {"value": 0.2},
        "step_decay": {"init_value": 0.5, "decay_rate": 0.7, "every": 13},
        "exponential": {"init_value": 0.5, "decay_rate": 0.3, "every": 17},
        "cosine": {"init_value": 0.4, "decay_steps": 150, "alpha": 0.1},
        "warmup_cosine": {"init_value": 0.4, "decay_steps": 150, "warmup_steps": 25},
    }
    references = {
        "constant": optax.constant_schedule(0.2),
        "step_decay": optax.exponential_decay(0.5, 13, 0.7, staircase=True),
        "exponential": optax.exponential_decay(0.5, 17, 0.3),
        "cosine": optax.cosine_decay_schedule(0.4, 150, alpha=0.1),
        "warmup_cosine": optax.warmup_cosine_decay_schedule(0.0, 0.4, 25, 175),
    }
    for name, reference in references.items():
        got = get_schedule(name, **kwargs[name])(jnp.asarray(COUNTS))
        np.testing.assert_allclose(got, reference(COUNTS), rtol=RTOL, atol=ATOL, err_msg=name)


def test_get_schedule_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match=r"'linear'.*constant.*warmup_cosine"):
        get_schedule("linear", init_value=1.0)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: constant(-0.1), "value"),
        (lambda: step_decay(0.1, 0.5, 0), "every"),
        (lambda: step_decay(0.1, 0.5, -3), "every"),
        (lambda: step_decay(0.1, 0.0, 10), "decay_rate"),
        (lambda: step_decay(-0.1, 0.5, 10), "init_value"),
        (lambda: exponential_decay(0.1, -0.5, 10), "decay_rate"),
        (lambda: exponential_decay(0.1, 0.5, float("nan")), "every"),
        (lambda: exponential_decay(jnp.float32(-1.0), 0.5, 10), "init_value"),
        (lambda: cosine_decay(0.1, 0), "decay_steps"),
        (lambda: cosine_decay(-1.0, 10), "init_value"),
        (lambda: warmup(constant(0.1), -1), "steps"),
        (lambda: warmup(0.1, 10), "schedule"),
        (lambda: warmup_cosine_decay(0.1, 100, -5), "warmup_steps"),
        (lambda: warmup_cosine_decay(0.1, 0, 5), "decay_steps"),
        (lambda: get_schedule("cosine", init_value=0.1, decay_steps=-1), "decay_steps"),
        (lambda: step_decay(0.1, 0.5, "ten"), "every"),
    ],
)
def test_invalid_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_traced_arguments_skip_validation():
    # Validation cannot inspect traced values; construction must still succeed.
    got = jax.vmap(lambda every: step_decay(1.0, 0.5, every)(10))(jnp.array([5, 10]))
    np.testing.assert_allclose(got, [0.25, 0.5], rtol=RTOL)
    assert spec.concrete(jnp.float32(2.0)) == 2.0
    jax.jit(lambda x: assert_is_none(spec.concrete(x)))(1.0)
    jax.vmap(lambda x: assert_is_none(spec.concrete(x)))(jnp.ones(2))


def assert_is_none(value):
    assert value is None
    return 0.0
