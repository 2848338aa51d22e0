"""Tests for jaxtune.optimizers against Optax aliases, hand-written chains and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtune.optimizers import (
    OPTIMIZERS,
    clip,
    l2_weight_decay,
    learning_rate_at,
    make_optimizer,
    scale_by_lr,
    scale_by_optimizer,
)
from jaxtune.schedules import step_decay, warmup_cosine_decay

N_STEPS = 6
RTOL = 1e-6
ATOL = 1e-7


def _params():
    return {
        "dense": {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.full((4,), 0.5)},
        "scale": jnp.asarray([2.0, -1.0, 0.5, 3.0]),
    }


def _grads(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(
            lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), jnp.float32), _params()
        )
        for _ in range(N_STEPS)
    ]


GRADS = _grads()
PARAMS = _params()


def _run(opt, grads=GRADS, params=PARAMS):
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _assert_trees_close(got, expected, rtol=RTOL, atol=ATOL):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, expected)


def _reference(
    name, lr, *, momentum=None, clip_norm=None, weight_decay=0.0, b2=0.999, eps=None, mask=None
):
    """Builds the optimizer from Optax's aliases only (independent of jaxtune)."""
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    if name == "adamw":
        b1 = 0.9 if momentum is None else momentum
        eps = 1e-8 if eps is None else eps
        return optax.chain(
            *parts,
            optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask),
        )
    if weight_decay != 0.0:
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    if name == "sgd":
        alias = optax.sgd(lr, momentum=momentum)
    elif name in ("momentum", "nesterov"):
        alias = optax.sgd(
            lr, momentum=0.9 if momentum is None else momentum, nesterov=name == "nesterov"
        )
    elif name == "adagrad":
        alias = optax.adagrad(lr, eps=1e-7 if eps is None else eps)
    elif name == "rmsprop":
        alias = optax.rmsprop(lr, eps=1e-8 if eps is None else eps, momentum=momentum)
    else:
        b1 = 0.9 if momentum is None else momentum
        alias = optax.adam(lr, b1=b1, b2=b2, eps=1e-8 if eps is None else eps)
    return optax.chain(*parts, alias)


def _bias_mask(params):
    return {"dense": {"w": True, "b": False}, "scale": False}


EQUIVALENCE_CASES = [
    ("sgd", 0.1, {}),
    ("sgd", 0.1, {"momentum": 0.8}),
    ("momentum", 0.1, {}),
    ("momentum", 0.05, {"momentum": 0.5, "clip_norm": 1.0}),
    ("nesterov", 0.1, {}),
    ("nesterov", 0.1, {"momentum": 0.3, "clip_norm": 2.0}),
    ("adagrad", 0.1, {}),
    ("adagrad", 0.1, {"eps": 1e-3}),
    ("rmsprop", 0.01, {}),
    ("rmsprop", 0.01, {"momentum": 0.9, "eps": 1e-6}),
    ("adam", 0.01, {}),
    ("adam", 0.01, {"momentum": 0.8, "b2": 0.99, "eps": 1e-6, "clip_norm": 1.5}),
    ("adamw", 0.01, {}),
    ("adamw", 0.01, {"weight_decay": 0.1}),
    ("adamw", 0.01, {"weight_decay": 0.1, "clip_norm": 1.0, "momentum": 0.7}),
    # L2 weight decay on the gradient, before the optimizer's scaling.
    ("sgd", 0.1, {"weight_decay": 0.05}),
    ("momentum", 0.1, {"weight_decay": 0.05, "clip_norm": 1.0}),
    ("nesterov", 0.1, {"weight_decay": 0.05}),
    ("adagrad", 0.1, {"weight_decay": 0.05}),
    ("rmsprop", 0.01, {"weight_decay": 0.05, "momentum": 0.5}),
    ("adam", 0.01, {"weight_decay": 0.05}),
]


@pytest.mark.parametrize(("name", "lr", "kwargs"), EQUIVALENCE_CASES)
def test_matches_optax_aliases(name, lr, kwargs):
    got = _run(make_optimizer(name, lr, **kwargs))
    _assert_trees_close(got, _run(_reference(name, lr, **kwargs)))


def test_every_optimizer_is_covered():
    assert set(OPTIMIZERS) == {case[0] for case in EQUIVALENCE_CASES}


def test_schedule_and_clip_match_hand_written_chain():
    got = make_optimizer("sgd", schedule=step_decay(0.1, 0.5, 2), momentum=0.9, clip_norm=1.0)
    expected = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.sgd(optax.exponential_decay(0.1, 2, 0.5, staircase=True), momentum=0.9),
    )
    _assert_trees_close(_run(got), _run(expected))


def test_rmsprop_momentum_with_schedule_matches_optax():
    schedule = optax.exponential_decay(0.01, 2, 0.5, staircase=True)
    got = make_optimizer("rmsprop", schedule, momentum=0.9)
    _assert_trees_close(_run(got), _run(optax.rmsprop(schedule, momentum=0.9)))


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_masked_weight_decay_matches_hand_written_chain(name):
    got = make_optimizer(name, 0.01, weight_decay=0.1, weight_decay_mask=_bias_mask)
    _assert_trees_close(_run(got), _run(_reference(name, 0.01, weight_decay=0.1, mask=_bias_mask)))


def test_adamw_masked_decoupled_decay_matches_optax():
    got = make_optimizer("adamw", 0.01, weight_decay=0.1, weight_decay_mask=_bias_mask)
    expected = optax.adamw(0.01, weight_decay=0.1, mask=_bias_mask)
    _assert_trees_close(_run(got), _run(expected))


def test_momentum_l2_clip_matches_numpy():
    lr, mu, wd, max_norm = 0.1, 0.9, 0.05, 1.0
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), PARAMS)
    trace = jax.tree.map(np.zeros_like, params)
    for g in GRADS:
        g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
        norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(g)))
        if norm >= max_norm:
            g = jax.tree.map(lambda x: x * max_norm / norm, g)
        g = jax.tree.map(lambda x, p: x + wd * p, g, params)
        trace = jax.tree.map(lambda t, x: x + mu * t, trace, g)
        params = jax.tree.map(lambda p, t: p - lr * t, params, trace)
    got = _run(make_optimizer("momentum", lr, momentum=mu, weight_decay=wd, clip_norm=max_norm))
    _assert_trees_close(got, params, rtol=1e-5, atol=1e-6)


def test_adamw_decay_is_decoupled_from_adam_scaling():
    # With zero gradients Adam's scaled update is 0, so only the decoupled decay moves params.
    zeros = [jax.tree.map(jnp.zeros_like, PARAMS)] * 3
    got = _run(make_optimizer("adamw", 0.1, weight_decay=0.5), grads=zeros)
    _assert_trees_close(got, jax.tree.map(lambda p: p * 0.95**3, PARAMS), rtol=1e-5)
    # L2 decay goes through Adam's normalisation instead, giving a different result.
    l2 = _run(make_optimizer("adam", 0.1, weight_decay=0.5), grads=zeros)
    assert not np.allclose(l2["dense"]["w"], got["dense"]["w"])


def test_parts_compose_into_make_optimizer():
    custom = optax.chain(
        clip(1.0), l2_weight_decay(0.05), scale_by_optimizer("nesterov"), scale_by_lr(0.1)
    )
    expected = _reference("nesterov", 0.1, clip_norm=1.0, weight_decay=0.05)
    _assert_trees_close(_run(custom), _run(expected))
    adamw = optax.chain(scale_by_optimizer("adamw"), l2_weight_decay(0.1), scale_by_lr(0.01))
    _assert_trees_close(_run(adamw), _run(optax.adamw(0.01, weight_decay=0.1)))


def test_zero_weight_decay_array_is_included_and_equal():
    got = _run(make_optimizer("adam", 0.01, weight_decay=jnp.float32(0.0)))
    _assert_trees_close(got, _run(optax.adam(0.01)))


def _global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 3.0, 100.0])
def test_clip_bounds_global_norm_and_keeps_small_gradients(max_norm):
    for make in (lambda: clip(max_norm), lambda: make_optimizer("sgd", 1.0, clip_norm=max_norm)):
        opt = make()
        state = opt.init(PARAMS)
        for g in GRADS:
            updates, state = opt.update(g, state, PARAMS)
            norm = _global_norm(updates)
            assert norm <= max_norm * (1 + 1e-6)
            sign = 1.0 if norm == 0 else np.sign(float(updates["scale"][0] * g["scale"][0]))
            if _global_norm(g) < max_norm:
                _assert_trees_close(updates, jax.tree.map(lambda x, s=sign: s * x, g), rtol=0)
            else:
                np.testing.assert_allclose(norm, max_norm, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    grad_scale=st.floats(1e-3, 1e3),
    max_norm=st.floats(1e-2, 1e2),
)
def test_clip_property(seed, grad_scale, max_norm):
    rng = np.random.default_rng(seed)
    g = {
        "a": jnp.asarray(grad_scale * rng.standard_normal(5), jnp.float32),
        "b": jnp.asarray(grad_scale * rng.standard_normal((2, 3)), jnp.float32),
    }
    tx = clip(max_norm)
    updates, _ = tx.update(g, tx.init(g))
    in_norm, out_norm = _global_norm(g), _global_norm(updates)
    assert out_norm <= max_norm * (1 + 1e-5)
    if in_norm < max_norm:
        _assert_trees_close(updates, g, rtol=0, atol=0)
    else:
        np.testing.assert_allclose(out_norm, max_norm, rtol=1e-5)
        # Clipping rescales without changing direction.
        _assert_trees_close(
            jax.tree.map(lambda u: u / out_norm, updates),
            jax.tree.map(lambda x: x / in_norm, g),
            rtol=1e-5,
            atol=1e-6,
        )


# (name, fixed kwargs, swept argument, values); the swept argument is traced under vmap.
VMAP_CASES = [
    ("sgd", {"learning_rate": 0.1}, "learning_rate", [0.01, 0.1, 0.5]),
    ("adagrad", {"learning_rate": 0.1}, "learning_rate", [0.01, 0.1, 0.5]),
    ("sgd", {"learning_rate": 0.1}, "momentum", [0.0, 0.5, 0.9]),
    ("nesterov", {"learning_rate": 0.1}, "momentum", [0.0, 0.5, 0.9]),
    ("rmsprop", {"learning_rate": 0.01}, "momentum", [0.0, 0.5, 0.9]),
    ("adam", {"learning_rate": 0.01}, "momentum", [0.5, 0.8, 0.9]),
    ("adam", {"learning_rate": 0.01}, "b2", [0.9, 0.99, 0.999]),
    ("adam", {"learning_rate": 0.01}, "eps", [1e-8, 1e-4, 1e-1]),
    ("momentum", {"learning_rate": 0.1}, "clip_norm", [0.1, 1.0, 100.0]),
    ("momentum", {"learning_rate": 0.1}, "weight_decay", [0.0, 0.01, 0.3]),
    ("adamw", {"learning_rate": 0.01}, "weight_decay", [0.0, 0.01, 0.3]),
]


def _reference_kwargs(kwargs):
    kwargs = dict(kwargs)
    lr = kwargs.pop("learning_rate")
    return lr, kwargs


@pytest.mark.parametrize(
    ("name", "fixed", "arg", "values"),
    VMAP_CASES,
    ids=[f"{case[0]}-{case[2]}" for case in VMAP_CASES],
)
def test_vmap_over_hyperparameter_matches_per_value(name, fixed, arg, values):
    def trial(value):
        return _run(make_optimizer(name, **{**fixed, arg: value}))

    got = jax.jit(jax.vmap(trial))(jnp.asarray(values))
    for i, value in enumerate(values):
        lr, kwargs = _reference_kwargs({**fixed, arg: value})
        expected = _run(_reference(name, lr, **kwargs))
        _assert_trees_close(jax.tree.map(lambda x, i=i: x[i], got), expected, rtol=1e-5)


def test_vmap_over_all_hyperparameters_at_once():
    trials = {
        "learning_rate": jnp.array([0.01, 0.1, 0.3]),
        "momentum": jnp.array([0.0, 0.5, 0.9]),
        "clip_norm": jnp.array([0.5, 1.0, 50.0]),
        "weight_decay": jnp.array([0.0, 0.01, 0.1]),
    }
    got = jax.jit(jax.vmap(lambda hp: _run(make_optimizer("momentum", **hp))))(trials)
    for i in range(3):
        lr, kwargs = _reference_kwargs({k: float(v[i]) for k, v in trials.items()})
        expected = _run(_reference("momentum", lr, **kwargs))
        _assert_trees_close(jax.tree.map(lambda x, i=i: x[i], got), expected, rtol=1e-5)


@pytest.mark.parametrize("arg", ["init_value", "decay_rate", "every"])
def test_vmap_over_schedule_parameters_matches_per_value(arg):
    base = {"init_value": 0.1, "decay_rate": 0.5, "every": 2}
    values = {"init_value": [0.01, 0.1, 0.2], "decay_rate": [0.1, 0.5, 0.9], "every": [1, 2, 3]}
    values = values[arg]

    def trial(value):
        hp = {**base, arg: value}
        sched = step_decay(hp["init_value"], hp["decay_rate"], hp["every"])
        return _run(make_optimizer("momentum", schedule=sched, clip_norm=1.0))

    got = jax.jit(jax.vmap(trial))(jnp.asarray(values))
    for i, value in enumerate(values):
        hp = {**base, arg: value}
        sched = optax.exponential_decay(
            hp["init_value"], hp["every"], hp["decay_rate"], staircase=True
        )
        expected = _run(_reference("momentum", sched, clip_norm=1.0))
        _assert_trees_close(jax.tree.map(lambda x, i=i: x[i], got), expected, rtol=1e-5)


def test_vmap_over_warmup_cosine_learning_rate():
    warmups = jnp.array([0, 2, 4])

    def trial(steps):
        return _run(make_optimizer("adam", warmup_cosine_decay(0.01, 10, steps)))

    got = jax.jit(jax.vmap(trial))(warmups)
    for i, steps in enumerate([0, 2, 4]):
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, 0.01, steps), optax.cosine_decay_schedule(0.01, 10)],
            [steps],
        )
        expected = _run(optax.adam(sched))
        _assert_trees_close(jax.tree.map(lambda x, i=i: x[i], got), expected, rtol=1e-5)


def test_learning_rate_at():
    sched = optax.exponential_decay(0.1, 2, 0.5, staircase=True)
    np.testing.assert_allclose(learning_rate_at(0.3, 7), 0.3, rtol=RTOL)
    np.testing.assert_allclose(learning_rate_at(jnp.float32(0.3), 7), 0.3, rtol=RTOL)
    np.testing.assert_allclose(learning_rate_at(sched, 5), 0.025, rtol=RTOL)
    assert learning_rate_at(sched, 5).dtype == jnp.float32
    got = jax.jit(jax.vmap(lambda r, c: learning_rate_at(step_decay(0.1, r, 2), c)))(
        jnp.array([0.5, 0.1]), jnp.array([5, 2])
    )
    np.testing.assert_allclose(got, [0.025, 0.01], rtol=RTOL)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: make_optimizer("lion", 0.1), r"name must be one of .*sgd.*adamw"),
        (lambda: make_optimizer("sgd", 0.0), "learning_rate"),
        (lambda: make_optimizer("adam", -1e-3), "learning_rate"),
        (lambda: make_optimizer("adam", jnp.float32(-1e-3)), "learning_rate"),
        (lambda: make_optimizer("sgd", None), "learning_rate"),
        (lambda: make_optimizer("sgd", 0.1, schedule=lambda c: 0.1), "learning_rate"),
        (lambda: make_optimizer("sgd", schedule=0.1), "schedule"),
        (lambda: make_optimizer("sgd", 0.1, clip_norm=0.0), "clip_norm"),
        (lambda: make_optimizer("sgd", 0.1, clip_norm=-1.0), "clip_norm"),
        (lambda: make_optimizer("momentum", 0.1, momentum=1.0), "momentum"),
        (lambda: make_optimizer("nesterov", 0.1, momentum=-0.1), "momentum"),
        (lambda: make_optimizer("rmsprop", 0.1, momentum=1.5), "momentum"),
        (lambda: make_optimizer("adam", 0.1, momentum=1.0), "momentum"),
        (lambda: make_optimizer("adagrad", 0.1, momentum=0.9), "momentum"),
        (lambda: make_optimizer("sgd", 0.1, weight_decay=-0.1), "weight_decay"),
        (lambda: make_optimizer("adamw", 0.1, weight_decay=-0.1), "weight_decay"),
        (lambda: make_optimizer("adam", 0.1, eps=0.0), "eps"),
        (lambda: make_optimizer("adagrad", 0.1, eps=-1e-7), "eps"),
        (lambda: make_optimizer("adam", 0.1, b2=1.0), "b2"),
        (lambda: clip(0.0), "clip_norm"),
        (lambda: l2_weight_decay(-1.0), "weight_decay"),
        (lambda: scale_by_optimizer("adadelta"), "name must be one of"),
        (lambda: scale_by_optimizer("adagrad", momentum=0.5), "momentum"),
        (lambda: scale_by_lr(-0.1), "learning_rate"),
    ],
)
def test_invalid_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
