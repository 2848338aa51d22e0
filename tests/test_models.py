"""Tests for jaxtune.models."""

from __future__ import annotations

import collections
from functools import cache, partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.models import (
    CNN,
    MLP,
    Model,
    cnn,
    decoder_lm,
    from_linen,
    from_nnx,
    group_count,
    mlp,
)
from jaxtune.spec import KeySpec

KEY = jax.random.key(0)
ATOL = 1e-5
# Numeric tests draw kernels with a uniform preset: on CPU, XLA compiles it much faster than the
# truncated normal of the *_normal presets (which the shape-only tests still trace).
INIT = "he_uniform"


def _numeric(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(x)
    return x


def tree_allclose(a, b, atol=ATOL):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(_numeric(x), _numeric(y), atol=atol, rtol=1e-5)


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def normal(shape, seed=0):
    """Test inputs from NumPy (no device RNG program to compile)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def padded(x, b, *, fill=3.0):
    """Rows [:b] of x followed by junk rows, plus the mask marking the real rows."""
    x = np.asarray(x).copy()
    x[b:] = fill
    return x, np.arange(x.shape[0]) < b


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
    model = _builder("cnn", "none")
    params, state = _init("cnn", "none")
    x = _inputs("cnn")
    a, _ = model.apply(params, state, x.reshape(x.shape[0], 64), train=False)
    b, _ = model.apply(params, state, x, train=False)
    np.testing.assert_allclose(a, b, atol=ATOL)
    # keeps the spatial layout: the flatten head after 8 -> 4 -> 2 pooling sees 2*2*8 features
    assert params["Dense_0"]["kernel"].shape == (2 * 2 * 8, 5)


def test_group_count():
    assert group_count(256) == 32
    assert group_count(48) == 12
    assert group_count(32) == 8
    assert group_count(12) == 3
    assert group_count(7) == 1
    assert group_count(34) == 2


def test_group_norm_on_a_narrow_layer_is_not_constant():
    # One feature per group would map every hidden activation to the GroupNorm bias.
    model = mlp(num_outputs=3, input_shape=(6,), widths=(8,), normalization="group")
    params, state = model.init(KEY)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    out, _ = model.apply(params, state, x, train=False)
    assert np.std(np.asarray(out), axis=0).max() > 1e-3


def test_linen_modules_direct():
    x = jax.ShapeDtypeStruct((2, 64), jnp.float32)
    for module in (MLP(num_outputs=3, widths=(5,)), CNN(num_outputs=3, channels=(2,))):
        variables = jax.eval_shape(partial(module.init, train=False), KEY, x)
        out = jax.eval_shape(partial(module.apply, train=False), variables, x)
        assert out.shape == (2, 3)


# --------------------------------------------------------------------------------------------
# Linear output, init scale
# --------------------------------------------------------------------------------------------


def test_output_layer_is_linear_and_init_scale_multiplies_kernels():
    model = mlp(num_outputs=4, input_shape=(6,), widths=(5,), activation="tanh", init=INIT)
    params, state = model.init(KEY)
    x = normal((7, 6), seed=1)
    out, _ = model.apply(params, state, x, train=False)
    d0, d1 = params["Dense_0"], params["Dense_1"]
    hidden = jnp.tanh(x @ d0["kernel"] + d0["bias"])
    np.testing.assert_allclose(out, hidden @ d1["kernel"] + d1["bias"], atol=ATOL)
    # negative outputs exist: nothing squashes the logits
    assert float(out.min()) < 0.0 < float(out.max())
    scaled = mlp(num_outputs=4, input_shape=(6,), widths=(5,), init=INIT, init_scale=0.5)
    scaled = scaled.init(KEY)[0]
    for layer in ("Dense_0", "Dense_1"):
        np.testing.assert_allclose(scaled[layer]["kernel"], 0.5 * params[layer]["kernel"])


# --------------------------------------------------------------------------------------------
# BatchNorm state, masks, dropout
# --------------------------------------------------------------------------------------------


@cache
def _builder(kind, normalization, dropout=0.5):
    """Shared small models (cached so that tests reuse compiled operations)."""
    if kind == "mlp":
        return mlp(
            num_outputs=5,
            input_shape=(64,),
            widths=(16, 8),
            normalization=normalization,
            dropout=dropout,
            init=INIT,
        )
    return cnn(
        num_outputs=5,
        input_shape=(8, 8, 1),
        channels=(4, 8),
        normalization=normalization,
        dropout=dropout,
        init=INIT,
    )


@cache
def _init(kind, normalization, seed=0):
    return _builder(kind, normalization).init(jax.random.key(seed))


def _inputs(kind, n=8):
    shape = (n, 64) if kind == "mlp" else (n, 8, 8, 1)
    return normal(shape, seed=7)


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
    params, state = _init(kind, "batch")
    x = _inputs(kind)
    assert_eval_returns_state_unchanged(model, params, state, x)
    _, train_state = model.apply(params, state, x, train=True, key=KEY)
    assert jax.tree.structure(train_state) == jax.tree.structure(state)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state, train_state)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("normalization", ["none", "batch"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_padded_batch_matches_unpadded(kind, normalization):
    """Masked BatchNorm statistics and per-example dropout make padding invisible."""
    model = _builder(kind, normalization)
    params, state = _init(kind, normalization)
    x = _inputs(kind)
    b = 5
    xp, mask = padded(x, b)
    for train in (True, False):
        out_p, state_p = model.apply(params, state, xp, train=train, key=KEY, mask=mask)
        out_u, state_u = model.apply(params, state, x[:b], train=train, key=KEY)
        np.testing.assert_allclose(out_p[:b], out_u, atol=ATOL)
        tree_allclose(state_p, state_u)
    if normalization == "batch":
        # without the mask the junk rows leak into the statistics
        _, leaky = model.apply(params, state, xp, train=True, key=KEY)
        mean = lambda s: s["batch_stats"]["BatchNorm_0"]["mean"]
        assert not np.allclose(mean(leaky), mean(state_u))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_dropout_active_only_in_training(kind):
    model = _builder(kind, "none")
    params, state = _init(kind, "none")
    x = _inputs(kind)
    a, _ = model.apply(params, state, x, train=True, key=KEY)
    b, _ = model.apply(params, state, x, train=True, key=jax.random.key(12))
    assert not np.allclose(a, b)
    ev1, _ = model.apply(params, state, x, train=False, key=KEY)
    ev2, _ = model.apply(params, state, x, train=False)
    np.testing.assert_array_equal(ev1, ev2)


def test_dropout_without_key_raises():
    model = _builder("mlp", "none")
    params, state = jax.eval_shape(model.init, KEY)
    x = jax.ShapeDtypeStruct((4, 64), jnp.float32)
    with pytest.raises(ValueError, match="key"):
        jax.eval_shape(partial(model.apply, train=True), params, state, x)


# --------------------------------------------------------------------------------------------
# vmap over trials
# --------------------------------------------------------------------------------------------


def _check_vmapped(model, per_trial, x, *, jit=False, mask=None):
    """vmap over stacked trials equals the per-trial apply, in train and eval mode.

    Args:
      model: The model.
      per_trial: ``[(params, model_state), ...]`` from ``model.init`` with different keys.
      x: A batch.
      jit: Also compile the vmapped functions.
      mask: Optional batch mask.
    """
    n = len(per_trial)
    params, state = stack([p for p, _ in per_trial]), stack([s for _, s in per_trial])
    drop_keys = jax.random.split(jax.random.key(4), n)

    def train_step(p, s, k):
        return model.apply(p, s, x, train=True, key=k, mask=mask)

    def eval_step(p, s):
        return model.apply(p, s, x, train=False)[0]

    wrap = jax.jit if jit else (lambda f: f)
    outs, states = wrap(jax.vmap(train_step))(params, state, drop_keys)
    evals = wrap(jax.vmap(eval_step))(params, state)
    for i, (p_i, s_i) in enumerate(per_trial):
        out_i, state_i = train_step(p_i, s_i, drop_keys[i])
        np.testing.assert_allclose(outs[i], out_i, atol=ATOL)
        tree_allclose(jax.tree.map(lambda a: a[i], states), state_i)
        np.testing.assert_allclose(evals[i], eval_step(p_i, s_i), atol=ATOL)
    assert not np.allclose(outs[0], outs[1])
    assert not np.allclose(evals[0], evals[1])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_vmap_over_trials_matches_per_key(kind):
    model = _builder(kind, "batch")
    per_trial = [_init(kind, "batch", seed) for seed in (0, 1)]
    _check_vmapped(model, per_trial, _inputs(kind), jit=True, mask=np.arange(8) < 6)


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


def _adapter_batch():
    x = normal((6, 5), seed=1)
    return (x, *padded(x, 4))


def test_from_linen_jit_vmap():
    model = from_linen(UserLinen(), (5,))
    assert model.num_outputs == 3 and model.input_shape == (5,)
    per_trial = [model.init(jax.random.key(seed)) for seed in (0, 1)]
    params, state = per_trial[0]
    assert set(params) == {"Dense_0", "BatchNorm_0", "Dense_1"}
    assert set(state) == {"batch_stats"}
    x, xp, mask = _adapter_batch()
    assert_eval_returns_state_unchanged(model, params, state, x)
    _check_vmapped(model, per_trial, x, jit=True)
    # a module without a mask parameter ignores the mask
    out, _ = model.apply(params, state, xp, train=False, mask=mask)
    np.testing.assert_array_equal(out, model.apply(params, state, xp, train=False)[0])


def test_from_linen_forwards_mask_when_accepted():
    model = from_linen(UserLinenMasked(), (5,), num_outputs=3)
    params, state = model.init(KEY)
    x, xp, mask = _adapter_batch()
    out_p, state_p = model.apply(params, state, xp, train=True, mask=mask)
    out_u, state_u = model.apply(params, state, x[:4], train=True)
    np.testing.assert_allclose(out_p[:4], out_u, atol=ATOL)
    tree_allclose(state_p, state_u)


def test_from_nnx_jit_vmap():
    model = from_nnx(UserNNX, (5,))
    assert model.num_outputs == 3 and model.input_shape == (5,)
    per_trial = [model.init(jax.random.key(seed)) for seed in (0, 1)]
    params, state = per_trial[0]
    assert set(params) == {"dense", "norm", "out"}
    assert set(state["norm"]) == {"mean", "var"}
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves((params, state)))
    x, xp, mask = _adapter_batch()
    assert_eval_returns_state_unchanged(model, params, state, x)
    _check_vmapped(model, per_trial, x, jit=True)
    apply = jax.jit(model.apply, static_argnames="train")
    _, trained = apply(params, state, x, train=True, key=KEY)
    assert not np.allclose(trained["norm"]["mean"], state["norm"]["mean"])
    # eval mode: running statistics, dropout off, so the key does not matter
    a, _ = apply(params, trained, x, train=False)
    b, _ = apply(params, trained, x, train=False, key=jax.random.key(9))
    np.testing.assert_array_equal(a, b)
    # the mask reaches a module whose __call__ accepts it
    out_p, state_p = apply(params, state, xp, train=True, key=KEY, mask=mask)
    out_u, state_u = apply(params, state, x[:4], train=True, key=KEY)
    tree_allclose(state_p["norm"], state_u["norm"])
    assert out_p.shape == (6, 3) and out_u.shape == (4, 3)


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


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_options_are_checked_once_per_build(kind, monkeypatch):
    """The builder checks each option once; init and apply (the module's traces) check none."""
    checked = collections.Counter()
    parse = KeySpec.parse

    def counting(self, value):
        checked[id(self)] += 1
        return parse(self, value)

    monkeypatch.setattr(KeySpec, "parse", counting)
    if kind == "mlp":
        model = mlp(num_outputs=3, input_shape=(6,), widths=(4,), normalization="batch")
        options = 9
    else:
        model = cnn(num_outputs=3, input_shape=(4, 4, 1), channels=(2,), normalization="batch")
        options = 11 + 1  # the image shape reads input_shape as a shape first
    assert sum(checked.values()) == options and set(checked.values()) == {1}
    checked.clear()
    params, state = jax.eval_shape(model.init, KEY)
    x = jax.ShapeDtypeStruct((2, *model.input_shape), jnp.float32)
    for train in (False, True):
        jax.eval_shape(partial(model.apply, train=train), params, state, x)
    assert not checked


LM = {"seq_len": 8, "width": 32, "depth": 1, "num_heads": 2}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"seq_len": 0}, r"seq_len = 0 is invalid: seq_len must be an integer in \[1, inf\)"),
        ({"width": 2.5}, r"width = 2.5 is invalid"),
        ({"depth": True}, r"depth = True is invalid"),
        ({"mlp_ratio": "4"}, r"mlp_ratio = '4' is invalid"),
        ({"vocab_size": -1}, r"vocab_size = -1 is invalid"),
        ({"num_heads": 3}, r"num_heads = 3 is invalid: .*divisor of width = 32"),
        ({"num_heads": 0}, r"num_heads = 0 is invalid"),
        ({"dtype": "float16"}, r"dtype = 'float16' is invalid: .*'float32', 'bfloat16'"),
    ],
)
def test_bad_decoder_lm_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decoder_lm(**{**LM, **kwargs})


def test_decoder_lm_checks_its_arguments_once_per_build(monkeypatch):
    checked = collections.Counter()
    parse = KeySpec.parse

    def counting(self, value):
        checked[self.kind] += 1
        return parse(self, value)

    monkeypatch.setattr(KeySpec, "parse", counting)
    model = decoder_lm(**LM, dtype=jnp.bfloat16)
    # 5 sizes; num_heads as a size inside its divisor check; the dtype
    assert checked == {"int": 6, "custom": 1, "dtype": 1}
    checked.clear()
    params, state = jax.eval_shape(model.init, KEY)
    x = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    for train in (False, True):
        jax.eval_shape(partial(model.apply, train=train), params, state, x)
    assert not checked


def test_linen_modules_used_directly_name_a_bad_option():
    x = jax.ShapeDtypeStruct((2, 64), jnp.float32)
    for module, option in (
        (MLP(num_outputs=3, activation="swish"), r"activation = 'swish'.*'relu'"),
        (MLP(num_outputs=3, normalization="instance"), r"normalization = 'instance'.*'batch'"),
        (CNN(num_outputs=3, pooling="min"), r"pooling = 'min'.*'max', 'avg'"),
        (CNN(num_outputs=3, head="attention"), r"head = 'attention'.*'flatten'"),
        (CNN(num_outputs=3), r"input_shape = \(10,\)"),
    ):
        shape = (2, 10) if option.startswith("input") else x.shape
        with pytest.raises(ValueError, match=option):
            jax.eval_shape(partial(module.init, train=False), KEY, jnp.zeros(shape))


class _TokenClassifier(nn.Module):
    @nn.compact
    def __call__(self, tokens, train: bool = False):
        h = nn.Embed(num_embeddings=11, features=6)(tokens)
        return nn.Dense(3)(h.mean(axis=1))


def test_from_linen_and_from_nnx_take_integer_inputs():
    """A module whose inputs are token ids (an ``nn.Embed`` first) is traced on integer zeros;
    the wrapped model computes what the module does."""
    tokens = jnp.array([[1, 4, 2, 9], [0, 10, 3, 3]], jnp.int32)
    module = _TokenClassifier()
    model = from_linen(module, (4,), input_dtype=jnp.int32)
    assert model.num_outputs == 3
    params, state = model.init(jax.random.key(0))
    out, _ = model.apply(params, state, tokens, train=False)
    want = module.apply({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-6)

    class Tokens(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(11, 6, rngs=rngs)
            self.head = nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, tokens):
            return self.head(self.embed(tokens).mean(axis=1))

    nnx_model = from_nnx(Tokens, (4,), input_dtype=jnp.int32)
    assert nnx_model.num_outputs == 3
    p, s = nnx_model.init(jax.random.key(0))
    assert nnx_model.apply(p, s, tokens, train=False)[0].shape == (2, 3)


def test_decoder_lm_refuses_sequences_longer_than_its_positions():
    model = decoder_lm(**LM)
    params, state = model.init(jax.random.key(0))
    too_long = jnp.zeros((1, LM["seq_len"] + 1), jnp.int32)
    with pytest.raises(ValueError, match=f"expected at most seq_len = {LM['seq_len']}"):
        model.apply(params, state, too_long, train=False)
