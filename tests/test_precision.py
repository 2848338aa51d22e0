"""Mixed precision of the built-in models: bfloat16 compute, float32 parameters and outputs.

The bfloat16 forward pass is compared with the float32 model on the same parameters and with a
float64 NumPy forward pass written by hand; the compute dtype of every matmul and convolution is
read off the traced program. The MLP, the CNN and the decoder-only transformer are covered.
"""

from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import mlp_forward

import jaxtune
from jaxtune.config import ConfigError, SweepConfig
from jaxtune.initializers import scale_kernels
from jaxtune.models import cnn, decoder_lm, mlp

KEY = jax.random.key(0)
INIT = "he_uniform"  # compiles faster on CPU than the truncated normal presets
# bfloat16 keeps 8 significant bits: each rounding is off by at most 2**-9 relative, and a few
# layers of sums of such terms stay within 2% of the output scale (measured: under 0.7%).
BF16_RTOL = 0.02
# The transformer's residual stream is bfloat16 through every block: measured under 1.5% of the
# logits' scale (jitted or not) on the small decoder below.
LM_RTOL = 0.03


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@cache
def _pair(kind, normalization="none"):
    """The same architecture in float32 and in bfloat16."""
    if kind == "mlp":
        build = partial(mlp, input_shape=(16,), widths=(32, 16))
    else:
        build = partial(cnn, input_shape=(8, 8, 1), channels=(4, 8))
    kw = dict(num_outputs=5, normalization=normalization, init=INIT)
    return build(**kw, dtype="float32"), build(**kw, dtype="bfloat16")


def _inputs(kind, n=8):
    return _x((n, 16) if kind == "mlp" else (n, 8, 8, 1), seed=3)


def _dtypes(tree):
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree)}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bf16_params_state_and_outputs_are_float32(kind):
    _, bf16 = _pair(kind, "batch")
    params, state = jax.eval_shape(bf16.init, KEY)
    assert _dtypes(params) == {"float32"} and _dtypes(state) == {"float32"}
    x = jax.ShapeDtypeStruct(_inputs(kind).shape, jnp.float32)
    for train in (True, False):
        out, new_state = jax.eval_shape(partial(bf16.apply, train=train), params, state, x)
        assert out.dtype == jnp.float32 and _dtypes(new_state) == {"float32"}


def test_the_compute_dtype_does_not_touch_initialization():
    f32, bf16 = _pair("mlp", "batch")
    ref, got = jax.jit(f32.init)(KEY), jax.jit(bf16.init)(KEY)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)


def _op_dtypes(fn, *args):
    """The input dtypes of every dot_general and conv in the program of ``fn``, in order."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
            for param in eqn.params.values():
                sub = getattr(param, "jaxpr", param)  # a ClosedJaxpr or a Jaxpr
                if hasattr(sub, "eqns"):
                    visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_hidden_layers_compute_in_bf16_and_the_output_layer_in_float32(kind):
    f32, bf16 = _pair(kind, "layer")
    params, state = jax.eval_shape(f32.init, KEY)
    x = jax.ShapeDtypeStruct(_inputs(kind).shape, jnp.float32)
    ops = _op_dtypes(lambda p, s, x: bf16.apply(p, s, x, train=False)[0], params, state, x)
    hidden, head = ops[:-1], ops[-1]
    assert len(hidden) == 2
    assert all(dtypes == ("bfloat16", "bfloat16") for _, dtypes in hidden), hidden
    assert head == ("dot_general", ("float32", "float32"))
    ops32 = _op_dtypes(lambda p, s, x: f32.apply(p, s, x, train=False)[0], params, state, x)
    assert all(dtypes == ("float32", "float32") for _, dtypes in ops32)


def _assert_bf16_close(out, ref, rtol=BF16_RTOL):
    err = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    assert err <= rtol * scale, (err, scale)
    assert err > 1e-6 * scale, "no rounding at all: the pass did not run in bfloat16"


@pytest.mark.parametrize(
    "kind,normalization,train",
    [
        ("mlp", "none", False),
        ("mlp", "batch", True),
        ("cnn", "none", False),
        ("cnn", "group", True),
    ],
)
def test_bf16_forward_matches_the_float32_model(kind, normalization, train):
    f32, bf16 = _pair(kind, normalization)
    params, state = jax.jit(f32.init)(KEY)
    x = _inputs(kind)
    ref, ref_state = jax.jit(partial(f32.apply, train=train))(params, state, x)
    out, new_state = jax.jit(partial(bf16.apply, train=train))(params, state, x)
    _assert_bf16_close(out, np.asarray(ref, np.float64))
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=BF16_RTOL, atol=BF16_RTOL)


def test_bf16_mlp_matches_a_float64_forward_pass_by_hand():
    _, bf16 = _pair("mlp")
    params, state = jax.jit(bf16.init)(KEY)
    x = _inputs("mlp")
    out, _ = bf16.apply(params, state, x, train=False)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    relu = lambda z: np.maximum(z, 0.0)
    _assert_bf16_close(out, mlp_forward(p64, x.astype(np.float64), act=relu))


def test_bf16_sgd_steps_lower_the_loss():
    _, bf16 = _pair("mlp")
    rng = np.random.default_rng(0)
    x = _x((64, 16), seed=1)
    y = (x[:, :5] + 0.1 * rng.standard_normal((64, 5))).argmax(axis=1)
    params, state = jax.jit(bf16.init)(KEY)
    opt = optax.sgd(0.1)
    opt_state = opt.init(params)

    def loss_fn(p):
        logits, _ = bf16.apply(p, state, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, o):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss, grads

    losses = []
    for _ in range(8):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
    assert loss.dtype == jnp.float32 and _dtypes(grads) == {"float32"}
    assert _dtypes(params) == {"float32"}
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("builder", [mlp, cnn])
def test_dtype_takes_names_and_jnp_dtypes_and_names_the_allowed_ones(builder):
    kw = dict(num_outputs=3, input_shape=(4, 4, 1), init=INIT)
    bf16 = builder(**kw, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 4, 4, 1), jnp.float32)
    params, state = jax.eval_shape(bf16.init, KEY)
    ops = _op_dtypes(lambda p, s, x: bf16.apply(p, s, x, train=False)[0], params, state, x)
    assert ops[0][1] == ("bfloat16", "bfloat16")
    for bad in ("float16", jnp.float16, "bf16"):
        with pytest.raises(ValueError, match=r"dtype .*'float32', 'bfloat16'"):
            builder(**kw, dtype=bad)


@cache
def _lm_pair():
    """A small decoder in float32 and in bfloat16, and parameters whose kernels are scaled up
    (x4) so that attention is far from uniform (at N(0, 0.02^2) every score is close to 0)."""
    build = partial(decoder_lm, seq_len=16, width=32, depth=2, num_heads=2)
    f32, bf16 = build(dtype="float32"), build(dtype="bfloat16")
    params = scale_kernels(jax.jit(f32.init)(KEY)[0], 4.0)
    return f32, bf16, params


def _tokens(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (4, 16)).astype(np.int32)


def test_bf16_transformer_keeps_float32_params_softmax_and_logits():
    f32, bf16, _ = _lm_pair()
    params, state = jax.eval_shape(bf16.init, KEY)
    assert _dtypes(params) == {"float32"} and state == {}
    tokens = jax.ShapeDtypeStruct((4, 16), jnp.int32)
    forward = lambda p, t: bf16.apply(p, state, t, train=False)[0]
    assert jax.eval_shape(forward, params, tokens).dtype == jnp.float32
    ops = _op_dtypes(forward, params, tokens)
    hidden, head = ops[:-1], ops[-1]
    assert len(hidden) == 2 * 8  # per block: q, k, v, scores, weights x values, out, 2 MLP
    assert all("bfloat16" in dtypes for _, dtypes in hidden), hidden
    assert sum(dtypes == ("bfloat16", "bfloat16") for _, dtypes in hidden) == 2 * 7
    assert head == ("dot_general", ("float32", "float32"))
    program = str(jax.make_jaxpr(forward)(params, tokens))
    softmax = [ln for ln in program.splitlines() if " = exp " in ln]
    assert len(softmax) == 2 and all(":f32[4,2,16,16]" in ln for ln in softmax)
    ops32 = _op_dtypes(lambda p, t: f32.apply(p, state, t, train=False)[0], params, tokens)
    assert all(dtypes == ("float32", "float32") for _, dtypes in ops32)


def test_bf16_transformer_matches_the_float32_model_and_is_causal():
    f32, bf16, params = _lm_pair()
    x, k = _tokens(), 9
    changed = x.copy()
    changed[:, k] = (x[:, k] + 1) % 256

    @jax.jit
    def forward(p, tokens, changed):
        run = lambda m, t: m.apply(p, {}, t, train=False)[0]
        return run(f32, tokens), run(bf16, tokens), run(bf16, changed)

    ref, out, out_changed = forward(params, x, changed)
    assert out.dtype == jnp.float32
    _assert_bf16_close(out, np.asarray(ref, np.float64), LM_RTOL)
    np.testing.assert_array_equal(out_changed[:, :k], out[:, :k])  # the past does not see it
    scale = float(np.max(np.abs(ref)))
    assert np.all(np.abs(out_changed[:, k:] - out[:, k:]).max(axis=-1) > 1e-3 * scale)


SWEEP = {
    "task": {"dataset": "synthetic", "widths": [16]},
    "train": {"steps": 20, "eval_every": 10, "batch_size": 32},
    "optimizer": {"name": "sgd", "learning_rate": 0.1},
    "log": {"tensorboard": False, "plots": False},
    "sweep": {"grid": {"task.dtype": ["float32", "bfloat16"]}},
}


def test_a_bfloat16_sweep_runs_and_differs_from_float32_by_rounding_only():
    result = jaxtune.run_sweep(SWEEP)
    ids = {t.hparams["task.dtype"]: t.id for t in result.trials}
    f32, bf16 = ids["float32"], ids["bfloat16"]
    state = result.trial_state(bf16)
    assert _dtypes(state.params) == {"float32"}
    loss = result.history["train.loss"]
    assert loss.dtype == np.float32 and np.all(np.isfinite(loss))
    assert loss[bf16, -5:].mean() < loss[bf16, :5].mean()
    # same data, init and batches: the bf16 trial tracks the float32 one, not bit for bit
    assert not np.array_equal(loss[bf16], loss[f32])
    np.testing.assert_allclose(loss[bf16], loss[f32], rtol=BF16_RTOL)  # measured: under 0.2%


def test_bad_task_dtype_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"task.dtype = 'float16'.*'float32', 'bfloat16'"):
        SweepConfig.from_dict({"task": {"dtype": "float16"}})
    with pytest.raises(ConfigError, match=r"task.dtype"):
        jaxtune.run_sweep({**SWEEP, "sweep": {"grid": {"task.dtype": ["float32", "half"]}}})
