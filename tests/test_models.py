"""Tests for jaxtune.models."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.models import CNN, MLP, Model, cnn, from_linen, from_nnx, group_count, mlp

KEY = jax.random.key(0)
ATOL = 1e-5


def _numeric(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(x)
    return x


def tree_allclose(a, b, atol=ATOL):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(_numeric(x), _numeric(y), atol=atol, rtol=1e-5)


def jitted(model):
    """``model.apply`` compiled once per (model, train, shapes)."""
    return jax.jit(model.apply, static_argnames=("train",))


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def padded(x, b, *, fill=3.0):
    """Rows [:b] of x followed by junk rows, plus the mask marking the real rows."""
    junk = jnp.full((x.shape[0] - b, *x.shape[1:]), fill, x.dtype)
    mask = jnp.arange(x.shape[0]) < b
    return jnp.concatenate([x[:b], junk]), mask


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

MLP_CASES = [
    (act, norm, shape)
    for act in ("relu", "gelu", "tanh", "sigmoid")
    for norm, shape in (("none", (64,)), ("batch", (8, 8, 1)), ("layer", (64,)), ("group", (64,)))
]

CNN_CASES = [
    ("relu", "none", "max", "flatten", (8, 8, 1)),
    ("gelu", "batch", "avg", "flatten", (64,)),
    ("tanh", "layer", "max", "avg", (8, 8, 1)),
    ("sigmoid", "group", "avg", "avg", (8, 8)),
    ("relu", "batch", "max", "avg", (8, 8, 1)),
    ("gelu", "group", "max", "flatten", (8, 8, 1)),
]


@pytest.mark.parametrize("activation,normalization,input_shape", MLP_CASES)
def test_mlp_output_shapes(activation, normalization, input_shape):
    model = mlp(
        num_outputs=10,
        input_shape=input_shape,
        widths=(12, 6),
        activation=activation,
        normalization=normalization,
    )
    assert isinstance(model, Model) and model.num_outputs == 10
    assert model.input_shape == input_shape
    params, state = jax.eval_shape(model.init, KEY)
    assert (state == {}) == (normalization != "batch")
    x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
    for train in (False, True):
        out, new_state = jax.eval_shape(partial(model.apply, train=train), params, state, x)
        assert out.shape == (3, 10)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("activation,normalization,pooling,head,input_shape", CNN_CASES)
def test_cnn_output_shapes(activation, normalization, pooling, head, input_shape):
    model = cnn(
        num_outputs=10,
        input_shape=input_shape,
        channels=(4, 8, 8, 12),
        activation=activation,
        normalization=normalization,
        pooling=pooling,
        head=head,
    )
    params, state = jax.eval_shape(model.init, KEY)
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    out, _ = jax.eval_shape(partial(model.apply, train=True), params, state, x)
    assert out.shape == (2, 10)
    # VGG-style: kernels are 3x3 with growing channels; pooling stops at 1x1 (8->4->2->1).
    assert params["Conv_0"]["kernel"].shape == (3, 3, 1, 4)
    assert params["Conv_3"]["kernel"].shape == (3, 3, 8, 12)
    head_in = 12 if head == "avg" else 12 * 1 * 1
    assert params["Dense_0"]["kernel"].shape == (head_in, 10)


def test_cnn_flat_and_image_inputs_agree():
    flat = cnn(num_outputs=10, input_shape=(64,), channels=(4, 8))
    image = cnn(num_outputs=10, input_shape=(8, 8, 1), channels=(4, 8))
    params, state = flat.init(KEY)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    a, _ = flat.apply(params, state, x.reshape(3, 64), train=False)
    b, _ = image.apply(params, state, x, train=False)
    np.testing.assert_allclose(a, b, atol=ATOL)
    # keeps the spatial layout: flatten head after 8 -> 4 -> 2 pooling sees 2*2*8 features
    assert params["Dense_0"]["kernel"].shape == (2 * 2 * 8, 10)


def test_group_count():
    assert group_count(256) == 32
    assert group_count(48) == 24
    assert group_count(12) == 12
    assert group_count(7) == 7
    assert group_count(34) == 17


def test_linen_modules_direct():
    x = jnp.ones((2, 64))
    variables = MLP(num_outputs=3, widths=(5,)).init(KEY, x, train=False)
    assert MLP(num_outputs=3, widths=(5,)).apply(variables, x, train=False).shape == (2, 3)
    variables = CNN(num_outputs=3, channels=(2,)).init(KEY, x, train=False)
    assert CNN(num_outputs=3, channels=(2,)).apply(variables, x, train=False).shape == (2, 3)


# --------------------------------------------------------------------------------------------
# Linear output, init scale
# --------------------------------------------------------------------------------------------


def test_output_layer_is_linear():
    model = mlp(num_outputs=4, input_shape=(6,), widths=(5,), activation="tanh")
    params, state = model.init(KEY)
    x = jax.random.normal(jax.random.key(1), (7, 6))
    out, _ = model.apply(params, state, x, train=False)
    d0, d1 = params["Dense_0"], params["Dense_1"]
    hidden = jnp.tanh(x @ d0["kernel"] + d0["bias"])
    np.testing.assert_allclose(out, hidden @ d1["kernel"] + d1["bias"], atol=ATOL)
    # negative outputs exist: nothing squashes the logits
    assert float(out.min()) < 0.0 < float(out.max())


def test_init_scale_multiplies_kernels():
    base = mlp(num_outputs=3, input_shape=(8,), widths=(16,)).init(KEY)[0]
    scaled = mlp(num_outputs=3, input_shape=(8,), widths=(16,), init_scale=0.5).init(KEY)[0]
    for layer in ("Dense_0", "Dense_1"):
        np.testing.assert_allclose(scaled[layer]["kernel"], 0.5 * base[layer]["kernel"])


# --------------------------------------------------------------------------------------------
# BatchNorm state, masks, dropout
# --------------------------------------------------------------------------------------------


def _builder(kind, normalization, dropout=0.0):
    if kind == "mlp":
        return mlp(
            num_outputs=5,
            input_shape=(64,),
            widths=(16, 8),
            normalization=normalization,
            dropout=dropout,
        )
    return cnn(
        num_outputs=5,
        input_shape=(8, 8, 1),
        channels=(4, 8),
        normalization=normalization,
        dropout=dropout,
    )


def _inputs(kind, n=8):
    shape = (n, 64) if kind == "mlp" else (n, 8, 8, 1)
    return jax.random.normal(jax.random.key(7), shape)


def assert_eval_returns_state_unchanged(model, params, state, x):
    """Traces (without running) an eval call and checks the state object is passed through."""

    def check(p, s, x):
        _, s_out = model.apply(p, s, x, train=False)
        assert s_out is s
        return s_out

    jax.eval_shape(check, params, state, x)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_batch_stats_change_only_in_training(kind):
    model = _builder(kind, "batch")
    params, state = model.init(KEY)
    x = _inputs(kind) + 1.0
    assert_eval_returns_state_unchanged(model, params, state, x)
    _, train_state = jitted(model)(params, state, x, train=True)
    assert jax.tree.structure(train_state) == jax.tree.structure(state)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state, train_state)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("normalization", ["none", "batch"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_padded_batch_mask_matches_unpadded(kind, normalization):
    model = _builder(kind, normalization)
    apply = jitted(model)
    params, state = model.init(KEY)
    x = _inputs(kind)
    b = 5
    xp, mask = padded(x, b)
    for train in (True, False):
        out_p, state_p = apply(params, state, xp, train=train, mask=mask)
        out_u, state_u = apply(params, state, x[:b], train=train)
        np.testing.assert_allclose(out_p[:b], out_u, atol=ATOL)
        tree_allclose(state_p, state_u)
        if normalization == "batch" and train:
            # without the mask the junk rows would leak into the statistics
            _, leaky = apply(params, state, xp, train=True, mask=jnp.ones_like(mask))
            stats = "batch_stats", "BatchNorm_0", "mean"
            assert not np.allclose(
                leaky[stats[0]][stats[1]][stats[2]], state_u[stats[0]][stats[1]][stats[2]]
            )


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_dropout_is_per_example_under_padding(kind):
    model = _builder(kind, "batch", dropout=0.5)
    apply = jitted(model)
    params, state = model.init(KEY)
    x = _inputs(kind)
    b, drop_key = 3, jax.random.key(11)
    xp, mask = padded(x, b)
    out_p, state_p = apply(params, state, xp, train=True, key=drop_key, mask=mask)
    out_u, state_u = apply(params, state, x[:b], train=True, key=drop_key, mask=mask[:b])
    np.testing.assert_allclose(out_p[:b], out_u, atol=ATOL)
    tree_allclose(state_p, state_u)
    # dropout is active in training (the key matters) and off in evaluation
    out_other, _ = apply(params, state, x[:b], train=True, key=jax.random.key(12), mask=mask[:b])
    assert not np.allclose(out_u, out_other)
    ev1, _ = apply(params, state, x, train=False, key=drop_key)
    ev2, _ = apply(params, state, x, train=False, key=jax.random.key(12))
    np.testing.assert_array_equal(ev1, ev2)


def test_dropout_without_key_raises():
    model = _builder("mlp", "none", dropout=0.5)
    params, state = jax.eval_shape(model.init, KEY)
    x = jax.ShapeDtypeStruct((4, 64), jnp.float32)
    with pytest.raises(ValueError, match="key"):
        jax.eval_shape(partial(model.apply, train=True), params, state, x)


# --------------------------------------------------------------------------------------------
# vmap over trials
# --------------------------------------------------------------------------------------------


def _check_vmapped(model, x, *, n=2, mask=None):
    """vmap(jit) over stacked trials equals a jitted per-trial apply, in train and eval."""
    keys = jax.random.split(jax.random.key(3), n)
    drop_keys = jax.random.split(jax.random.key(4), n)
    params, state = jax.jit(jax.vmap(model.init))(keys)

    def train_step(p, s, k):
        return model.apply(p, s, x, train=True, key=k, mask=mask)

    def eval_step(p, s):
        return model.apply(p, s, x, train=False)[0]

    outs, states = jax.jit(jax.vmap(train_step))(params, state, drop_keys)
    evals = jax.jit(jax.vmap(eval_step))(params, state)
    single_train, single_eval = jax.jit(train_step), jax.jit(eval_step)
    for i in range(n):
        p_i, s_i = model.init(keys[i])
        tree_allclose(jax.tree.map(lambda a: a[i], params), p_i)
        tree_allclose(jax.tree.map(lambda a: a[i], state), s_i)
        out_i, state_i = single_train(p_i, s_i, drop_keys[i])
        np.testing.assert_allclose(outs[i], out_i, atol=ATOL)
        tree_allclose(jax.tree.map(lambda a: a[i], states), state_i)
        np.testing.assert_allclose(evals[i], single_eval(p_i, s_i), atol=ATOL)
    return outs


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_vmap_over_trials_matches_per_key(kind):
    model = _builder(kind, "batch", dropout=0.25)
    x = _inputs(kind, n=6)
    outs = _check_vmapped(model, x, mask=jnp.arange(6) < 4)
    assert not np.allclose(outs[0], outs[1])


# --------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------


class UserLinen(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
        return nn.Dense(3)(x)


class UserLinenMasked(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        x = nn.Dense(8)(x)
        bn_mask = None if mask is None else jnp.broadcast_to(mask[:, None], x.shape)
        x = nn.BatchNorm(use_running_average=not train)(x, mask=bn_mask)
        return nn.Dense(3)(nn.relu(x))


class UserNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(5, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x, mask=None):
        bn_mask = None if mask is None else jnp.broadcast_to(mask[:, None], (x.shape[0], 8))
        return self.out(self.drop(nnx.relu(self.norm(self.dense(x), mask=bn_mask))))


def test_from_linen():
    model = from_linen(UserLinen(), (5,))
    assert model.num_outputs == 3 and model.input_shape == (5,)
    params, state = model.init(KEY)
    assert set(state) == {"batch_stats"}
    x = jax.random.normal(jax.random.key(1), (6, 5))
    _, same = model.apply(params, state, x, train=False)
    assert same is state
    _check_vmapped(model, x)


def test_from_linen_forwards_mask_when_accepted():
    model = from_linen(UserLinenMasked(), (5,), num_outputs=3)
    params, state = model.init(KEY)
    x = jax.random.normal(jax.random.key(1), (6, 5))
    xp, mask = padded(x, 4)
    out_p, state_p = model.apply(params, state, xp, train=True, mask=mask)
    out_u, state_u = model.apply(params, state, x[:4], train=True)
    np.testing.assert_allclose(out_p[:4], out_u, atol=ATOL)
    tree_allclose(state_p, state_u)
    # a module without a mask parameter simply ignores it
    plain = from_linen(UserLinen(), (5,))
    p, s = plain.init(KEY)
    plain.apply(p, s, xp, train=True, key=KEY, mask=mask)


def test_from_nnx():
    model = from_nnx(UserNNX, (5,))
    assert model.num_outputs == 3
    params, state = model.init(KEY)
    assert set(params) == {"dense", "norm", "out"}
    assert set(state["norm"]) == {"mean", "var"}
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(params))
    x = jax.random.normal(jax.random.key(1), (6, 5))
    _, same = model.apply(params, state, x, train=False)
    assert same is state
    outs = _check_vmapped(model, x)
    assert not np.allclose(outs[0], outs[1])
    _, trained = model.apply(params, state, x, train=True, key=KEY)
    assert not np.allclose(trained["norm"]["mean"], state["norm"]["mean"])
    # eval mode: running statistics used, dropout off, deterministic
    a, _ = model.apply(params, trained, x, train=False)
    b, _ = model.apply(params, trained, x, train=False, key=jax.random.key(9))
    np.testing.assert_array_equal(a, b)


def test_from_nnx_mask():
    model = from_nnx(UserNNX, (5,))
    params, state = model.init(KEY)
    x = jax.random.normal(jax.random.key(1), (6, 5))
    xp, mask = padded(x, 4)
    out_p, state_p = model.apply(params, state, xp, train=True, key=KEY, mask=mask)
    out_u, state_u = model.apply(params, state, x[:4], train=True, key=KEY)
    np.testing.assert_allclose(out_p[:4], out_u, atol=ATOL)
    tree_allclose(state_p["norm"], state_u["norm"])


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "builder,kwargs,option",
    [
        (mlp, {"activation": "swish"}, "activation"),
        (mlp, {"normalization": "instance"}, "normalization"),
        (mlp, {"init": "orthogonal"}, "initializer"),
        (mlp, {"dropout": 1.0}, "dropout"),
        (mlp, {"widths": (8, 0)}, "widths"),
        (mlp, {"num_outputs": 0}, "num_outputs"),
        (cnn, {"pooling": "min"}, "pooling"),
        (cnn, {"head": "attention"}, "head"),
        (cnn, {"channels": (4, -1)}, "channels"),
        (cnn, {"input_shape": (10,)}, "input_shape"),
        (cnn, {"activation": "elu"}, "activation"),
        (cnn, {"init_scale": -1.0}, "scale"),
    ],
)
def test_bad_options_raise(builder, kwargs, option):
    base = {"num_outputs": 10, "input_shape": (8, 8, 1) if builder is cnn else (64,)}
    with pytest.raises(ValueError, match=option):
        builder(**{**base, **kwargs})


def test_bad_mask_shape_raises():
    model = _builder("mlp", "batch")
    params, state = model.init(KEY)
    with pytest.raises(ValueError, match="mask"):
        model.apply(params, state, _inputs("mlp"), train=True, mask=jnp.ones((3,), bool))
