"""Tests for jaxtune.initializers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.initializers import (
    INITIALIZERS,
    compute_fans,
    expected_std,
    get_initializer,
    reinitialize,
)

DENSE = (512, 256)  # fan_in 512, fan_out 256
CONV = (3, 3, 64, 128)  # fan_in 576, fan_out 1152

PRESETS = [name for name in INITIALIZERS if name != "normal"]


def hand_std(name: str, shape: tuple[int, ...]) -> float:
    """The closed-form std, written out independently of the library."""
    receptive = 1
    for d in shape[:-2]:
        receptive *= d
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    if name.startswith("he_"):
        return math.sqrt(2.0 / fan_in)
    if name.startswith("glorot_"):
        return math.sqrt(2.0 / (fan_in + fan_out))
    if name.startswith("lecun_"):
        return math.sqrt(1.0 / fan_in)
    raise AssertionError(name)


def empirical_std(w: jax.Array) -> float:
    return float(np.std(np.asarray(w, dtype=np.float64)))


# What each preset should be, as jax.nn.initializers.variance_scaling parameters (the table of
# the module docstring): scale, fan mode, distribution. "normal" is N(0, 0.01^2).
_VS = jax.nn.initializers.variance_scaling
REFERENCE = {
    "he_normal": _VS(2.0, "fan_in", "truncated_normal"),
    "he_uniform": _VS(2.0, "fan_in", "uniform"),
    "glorot_normal": _VS(1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": _VS(1.0, "fan_avg", "uniform"),
    "lecun_normal": _VS(1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": _VS(1.0, "fan_in", "uniform"),
    "normal": jax.nn.initializers.normal(0.01),
}


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_preset_draws_what_its_variance_scaling_rule_draws(name, shape):
    ours = get_initializer(name)(jax.random.key(7), shape)
    np.testing.assert_array_equal(ours, REFERENCE[name](jax.random.key(7), shape))


def test_every_preset_has_a_reference():
    assert sorted(INITIALIZERS) == sorted(REFERENCE)


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_empirical_std_matches_closed_form(name, shape):
    w = get_initializer(name)(jax.random.key(0), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    target = hand_std(name, shape)
    assert abs(empirical_std(w) / target - 1.0) < 0.03
    assert math.isclose(expected_std(name, shape), target, rel_tol=1e-12)
    assert abs(float(jnp.mean(w))) < 0.03 * target


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_jax_own(name):
    shape = (32, 16)
    ours = get_initializer(name)(jax.random.key(3), shape)
    theirs = getattr(jax.nn.initializers, name)()(jax.random.key(3), shape)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("name", ["he_normal", "glorot_uniform"])
def test_scale_multiplies_std(name):
    base = get_initializer(name)(jax.random.key(1), CONV)
    scaled = get_initializer(name, scale=2.5)(jax.random.key(1), CONV)
    np.testing.assert_allclose(scaled, 2.5 * base, rtol=1e-6)
    assert math.isclose(expected_std(name, CONV, scale=2.5), 2.5 * hand_std(name, CONV))


def test_normal_stddev_keyword_and_spelled_form():
    key = jax.random.key(2)
    by_kw = get_initializer("normal", stddev=0.05)(key, DENSE)
    spelled = get_initializer("normal(0.05)")(key, DENSE)
    np.testing.assert_array_equal(by_kw, spelled)
    np.testing.assert_array_equal(by_kw, jax.nn.initializers.normal(0.05)(key, DENSE))
    assert abs(empirical_std(by_kw) / 0.05 - 1.0) < 0.03
    assert expected_std("normal(0.05)", DENSE) == pytest.approx(0.05)
    default = get_initializer("normal")(key, DENSE)
    assert abs(empirical_std(default) / 0.01 - 1.0) < 0.03


def test_compute_fans():
    assert compute_fans(DENSE) == (512, 256)
    assert compute_fans(CONV) == (576, 1152)


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_initializer("xavier"),
        lambda: get_initializer("he_normal(0.1)"),
        lambda: get_initializer("normal(abc)"),
        lambda: get_initializer("lecun_normal", stddev=0.1),
        lambda: get_initializer("normal(0.1)", stddev=0.2),
        lambda: get_initializer("he_normal", scale=0.0),
        lambda: get_initializer("normal", stddev=-1.0),
        lambda: expected_std("nope", DENSE),
        lambda: expected_std("he_normal", (7,)),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="he_normal.*glorot_uniform.*normal"):
        get_initializer("kaiming")


def _params():
    return {
        "Conv_0": {"kernel": jnp.ones(CONV), "bias": jnp.ones(CONV[-1])},
        "BatchNorm_0": {"scale": jnp.full((128,), 2.0), "bias": jnp.ones(128)},
        "Dense_0": {"kernel": jnp.ones(DENSE), "bias": jnp.ones(DENSE[-1])},
    }


@pytest.mark.parametrize("scheme", ["he_normal", "glorot_uniform", "lecun_normal"])
def test_reinitialize(scheme):
    params = _params()
    new = reinitialize(params, scheme, jax.random.key(0))
    # pure: input untouched, same structure and dtypes
    np.testing.assert_array_equal(params["Dense_0"]["kernel"], 1.0)
    assert jax.tree.structure(new) == jax.tree.structure(params)
    for old_leaf, new_leaf in zip(jax.tree.leaves(params), jax.tree.leaves(new), strict=True):
        assert old_leaf.shape == new_leaf.shape and old_leaf.dtype == new_leaf.dtype
    for layer in ("Conv_0", "BatchNorm_0", "Dense_0"):
        np.testing.assert_array_equal(new[layer]["bias"], 0.0)
    np.testing.assert_array_equal(new["BatchNorm_0"]["scale"], 2.0)
    for layer, shape in (("Conv_0", CONV), ("Dense_0", DENSE)):
        kernel = new[layer]["kernel"]
        assert not np.allclose(kernel, 1.0)
        assert abs(empirical_std(kernel) / hand_std(scheme, shape) - 1.0) < 0.03


def test_reinitialize_keys_are_per_path_and_stable():
    square = {"a": {"kernel": jnp.zeros((64, 64))}, "b": {"kernel": jnp.zeros((64, 64))}}
    new = reinitialize(square, "he_normal", jax.random.key(0))
    assert not np.allclose(new["a"]["kernel"], new["b"]["kernel"])
    bigger = {**square, "c": {"kernel": jnp.zeros((64, 64))}}
    again = reinitialize(bigger, "he_normal", jax.random.key(0))
    np.testing.assert_array_equal(new["a"]["kernel"], again["a"]["kernel"])
    other_key = reinitialize(square, "he_normal", jax.random.key(1))
    assert not np.allclose(new["a"]["kernel"], other_key["a"]["kernel"])


def test_reinitialize_scale():
    params = _params()
    base = reinitialize(params, "he_uniform", jax.random.key(4))
    scaled = reinitialize(params, "he_uniform", jax.random.key(4), scale=0.5)
    np.testing.assert_allclose(scaled["Dense_0"]["kernel"], 0.5 * base["Dense_0"]["kernel"])


def test_reinitialize_bad_scheme():
    with pytest.raises(ValueError):
        reinitialize(_params(), "zeros", jax.random.key(0))


def test_a_scaled_normal_draws_what_jax_draws_at_the_scaled_stddev():
    key = jax.random.key(3)
    got = get_initializer("normal(0.01)", scale=3.0)(key, (64, 32))
    want = jax.nn.initializers.normal(0.03)(key, (64, 32))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("scheme", ["he_normal", "glorot_normal", "lecun_uniform"])
def test_attention_projections_get_the_fans_of_their_flattened_dense_kernel(scheme):
    """A Flax attention module's ``query``/``key``/``value`` kernels ``(in, heads, head_dim)``
    and ``out`` kernel ``(heads, head_dim, features)`` are DenseGeneral kernels: their fans
    are those of the ``(in, heads * head_dim)`` and ``(heads * head_dim, features)`` dense
    kernels, as Flax draws them. A conv1d kernel ``(width, in, out)`` beside them keeps the
    conv fans."""
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(64, (5,))(x)
            return nn.MultiHeadDotProductAttention(num_heads=8, qkv_features=512)(x)

    params = Model().init(jax.random.key(0), jnp.ones((1, 4, 32)))["params"]
    new = reinitialize(params, scheme, jax.random.key(1))
    attention = new["MultiHeadDotProductAttention_0"]
    for name in ("query", "key", "value"):
        assert attention[name]["kernel"].shape == (64, 8, 64)
        got = empirical_std(attention[name]["kernel"])
        assert abs(got / hand_std(scheme, (64, 512)) - 1.0) < 0.03, name
    assert attention["out"]["kernel"].shape == (8, 64, 64)
    got = empirical_std(attention["out"]["kernel"])
    assert abs(got / hand_std(scheme, (512, 64)) - 1.0) < 0.03
    got = empirical_std(new["Conv_0"]["kernel"])
    assert abs(got / hand_std(scheme, (5, 32, 64)) - 1.0) < 0.03


def test_reinitialized_attention_matches_flax_own_draw_of_the_same_scheme():
    """Flax's own ``lecun_normal`` draw of an attention module (its default) has the spread
    that ``reinitialize(..., "lecun_normal")`` gives it."""
    import flax.linen as nn

    module = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=256)
    params = module.init(jax.random.key(0), jnp.ones((1, 3, 256)))["params"]
    new = reinitialize(params, "lecun_normal", jax.random.key(1))
    for name in ("query", "key", "value", "out"):
        flax_std = empirical_std(params[name]["kernel"])
        assert abs(empirical_std(new[name]["kernel"]) / flax_std - 1.0) < 0.03, name


def test_an_nnx_state_is_redrawn_as_its_pure_dict_is():
    """``nnx.state(model, nnx.Param)`` holds each parameter under a ``Variable``'s
    ``.value``: it is redrawn (and scaled) exactly as its pure dict, not left unchanged."""
    from flax import nnx

    from jaxtune.initializers import scale_kernels

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(32, 64, rngs=rngs)
            self.attention = nnx.MultiHeadAttention(
                num_heads=4, in_features=64, qkv_features=128, decode=False, rngs=rngs
            )

    state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
    pure = state.to_pure_dict()
    for scheme in ("he_normal", "glorot_uniform"):
        got = reinitialize(state, scheme, jax.random.key(1)).to_pure_dict()
        want = reinitialize(pure, scheme, jax.random.key(1))
        assert not np.allclose(got["dense"]["kernel"], pure["dense"]["kernel"])
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    halved = scale_kernels(state, 0.5).to_pure_dict()
    np.testing.assert_allclose(halved["dense"]["kernel"], 0.5 * pure["dense"]["kernel"])
