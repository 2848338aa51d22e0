"""The benchmark workloads: every one builds, checks and trains; data and model properties.

The reach-the-target runs (``-m slow``, except the cheapest) train each workload's reference
optimizer at its documented learning rate and check that the documented validation target is
reached within the step budget, and not already at the first evaluation.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtune
from jaxtune.data import text
from jaxtune.models import decoder_lm
from jaxtune.workloads import WORKLOADS, get_workload
from jaxtune.workloads.images import class_templates, make_images
from jaxtune.workloads.language import make_bytes_lm

NAMES = sorted(WORKLOADS)
# Smaller models for the few-step runs (the engine and factory paths are the same).
SMALL = {"images32_cnn": [4], "bytes_lm": [16], "digits_cnn": [4], "digits_mlp": [16]}


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_workload_builds_and_passes_check_task(name):
    w = get_workload(name)
    assert w.name == name and w.mode in ("max", "min") and w.optimizer in jaxtune.OPTIMIZERS
    assert 0 < w.eval_every <= w.steps and w.batch_size >= 1 and w.learning_rate > 0
    names = jaxtune.tasks.check_task(w.task(), {}, where=w.factory)
    split, _, metric = w.metric.partition(".")
    assert split == "valid" and (metric == "loss" or metric in names)
    cfg = jaxtune.SweepConfig.from_dict(w.config())  # every key the config sets is valid
    assert cfg.base["task.factory"] == w.factory and cfg.base["select.target"] == w.target
    assert cfg.base["optimizer.learning_rate"] == w.learning_rate


@pytest.mark.parametrize("name", NAMES)
def test_factory_reuses_its_arrays(name):
    a, b = get_workload(name).task(), get_workload(name).task({"task.widths": None})
    assert a.data.train[0] is b.data.train[0] and a.data.valid[1] is b.data.valid[1]


def test_unknown_workload_names_the_allowed_ones():
    with pytest.raises(jaxtune.ConfigError) as e:
        get_workload("digits")
    for name in WORKLOADS:
        assert repr(name) in str(e.value)


def test_config_overrides():
    w = get_workload("digits_mlp")
    cfg = w.config(**{"train.steps": 7, "optimizer.name": "sgd"}, sweep={"seeds": 2})
    assert cfg["train"] == {"steps": 7, "eval_every": w.eval_every, "batch_size": w.batch_size}
    assert cfg["optimizer"]["name"] == "sgd" and cfg["sweep"] == {"seeds": 2}
    assert w.config()["train"]["steps"] == w.steps  # the workload itself is unchanged
    with pytest.raises(jaxtune.ConfigError, match="dotted key"):
        w.config(steps=3)


def test_structure_keys_dtype_subset_widths():
    w = get_workload("digits_mlp")
    assert jaxtune.data.num_examples(w.task({"task.subset": 100}).data.train) == 100
    with pytest.raises(jaxtune.ConfigError, match=r"task\.subset = 5000 .*\[0, 1257\]"):
        w.task({"task.subset": 5000})
    with pytest.raises(jaxtune.ConfigError, match=r"task\.dtype = 'float16'.*'bfloat16'"):
        w.task({"task.dtype": "float16"})
    with pytest.raises(jaxtune.ConfigError, match=r"task\.widths"):
        get_workload("bytes_lm").task({"task.widths": [32, 64]})
    params, _ = jax.eval_shape(w.task({"task.widths": [8, 4]}).init, jax.random.key(0), {})
    assert params["Dense_1"]["kernel"].shape == (8, 4)


def test_task_subset_fails_alike_for_a_workload_and_the_built_in_task():
    messages = []
    for build in (
        lambda: get_workload("digits_mlp").task({"task.subset": 5000}),
        lambda: jaxtune.registry.load_data(
            jaxtune.SweepConfig.from_dict({"task": {"dataset": "digits", "subset": 5000}}).base
        ),
    ):
        with pytest.raises(jaxtune.ConfigError, match=r"task\.subset = 5000 .*\[0, 1257\]") as e:
            build()
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    base = jaxtune.SweepConfig.from_dict({"task": {"dataset": "digits", "subset": 100}}).base
    assert jaxtune.data.num_examples(jaxtune.registry.load_data(base).train) == 100


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_params():
    w = get_workload("digits_mlp")
    t32, t16 = w.task(), w.task({"task.dtype": "bfloat16"})
    params, state = jax.jit(lambda key: t32.init(key, {}))(jax.random.key(0))
    x, y = (jnp.asarray(a[:16]) for a in t32.data.valid)

    def forward(task, p):
        return task.apply(p, state, x, train=False)[0]

    def loss16(p):
        return jnp.mean(t16.loss(forward(t16, p), y, {}))

    dots = [ln for ln in str(jax.make_jaxpr(loss16)(params)).splitlines() if "dot_general" in ln]
    # hidden products in bf16; the output layer computes in float32 (jaxtune.mlp's dtype)
    assert dots and all(":bf16[" in ln.split(" = ")[0] for ln in dots[:-1])
    assert ":f32[16,10]" in dots[-1].split(" = ")[0]
    out32, out16, grads = jax.jit(
        lambda p: (forward(t32, p), forward(t16, p), jax.grad(loss16)(p))
    )(params)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.1 * float(jnp.std(out32)))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_a_bfloat16_workload_config_trains_float32_params_and_evaluates_in_bfloat16():
    w = get_workload("diabetes")
    overrides = {"task.dtype": "bfloat16", "train.steps": 4, "train.eval_every": 4}
    cfg = w.config(**overrides, log={"tensorboard": False, "plots": False})
    result = jaxtune.run_sweep(cfg)
    (trial,) = result.trials
    state = result.trial_state(trial.id)
    assert {str(a.dtype) for a in jax.tree.leaves(state.params)} == {"float32"}
    # The engine's validation loss is the bfloat16 model's on the trained params, not float32's
    # (the two differ by rounding: measured 0.3%).
    x, y = (jnp.asarray(a) for a in w.task().data.valid)

    def valid_loss(dtype):
        task = w.task({"task.dtype": dtype})
        out = task.apply(state.params, state.model_state, x, train=False)[0]
        return float(jnp.mean(task.loss(out, y, {})))

    got, bf16, f32 = trial.final["valid.loss"], valid_loss("bfloat16"), valid_loss("float32")
    np.testing.assert_allclose(got, bf16, rtol=1e-5)
    assert abs(got - f32) > 1e-4 * abs(f32)


# ---------------------------------------------------------------------------------------------
# Byte-level text
# ---------------------------------------------------------------------------------------------


def test_stdlib_bytes_are_the_files_first_bytes():
    text.stdlib_bytes.cache_clear()
    got = text.stdlib_bytes(bytes_per_file=1000)
    root = Path(sysconfig.get_paths()["stdlib"])
    want = b"".join((root / f).read_bytes()[:1000] for f in sorted(text.STDLIB_FILES))
    assert got.dtype == np.uint8 and got.tobytes() == want
    assert list(text.STDLIB_FILES) == sorted(text.STDLIB_FILES)
    text.stdlib_bytes.cache_clear()
    assert np.array_equal(text.stdlib_bytes(bytes_per_file=1000), got)  # deterministic


def test_stdlib_bytes_errors_name_the_file():
    with pytest.raises(ValueError, match="no_such_module.py"):
        text.stdlib_bytes(files=("no_such_module.py",))
    with pytest.raises(ValueError, match=r"argparse\.py has \d+ bytes"):
        text.stdlib_bytes(files=("argparse.py",), bytes_per_file=10**8)


def test_text_splits_are_disjoint_contiguous_blocks():
    seq_len, block, period = 15, 100, 5
    s = text.load_stdlib_text(seq_len=seq_len, bytes_per_file=1000, block_size=block, period=period)
    stream = text.stdlib_bytes(bytes_per_file=1000)
    starts = text.split_starts(stream.size, seq_len=seq_len, block_size=block, period=period)
    raw = stream.tobytes()
    blocks = {}
    for k, (x, y) in zip(("train", "valid", "test"), (s.train, s.valid, s.test), strict=True):
        st = starts[k]
        assert x.shape == y.shape == (st.size, seq_len) and x.dtype == np.int32
        for i in range(st.size):  # the rows are the stream's bytes, targets one later
            window = np.frombuffer(raw[st[i] : st[i] + seq_len + 1], np.uint8)
            assert np.array_equal(x[i], window[:-1]) and np.array_equal(y[i], window[1:])
        assert np.all(st // block == (st + seq_len) // block)  # a window stays in its block
        ids, counts = np.unique(st // block, return_counts=True)
        assert np.all(counts == block // (seq_len + 1))  # whole blocks
        blocks[k] = set(ids.tolist())
    assert not (blocks["train"] & blocks["valid"] or blocks["train"] & blocks["test"])
    assert not blocks["valid"] & blocks["test"]
    assert set().union(*blocks.values()) == set(range(stream.size // block))
    n = stream.size // block
    assert len(blocks["valid"]) == len(blocks["test"]) == n // period


def test_split_starts_checks_its_arguments():
    with pytest.raises(ValueError, match=r"block_size = 8 .*seq_len \+ 1 = 9"):
        text.split_starts(100, seq_len=8, block_size=8)
    with pytest.raises(ValueError, match="split"):
        text.load_stdlib_text(seq_len=8, bytes_per_file=100, block_size=1000)


# ---------------------------------------------------------------------------------------------
# The transformer language model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    """The default language-model task, its initial parameters and a jitted forward pass."""
    task = make_bytes_lm()
    params, state = jax.jit(lambda key: task.init(key, {}))(jax.random.key(0))

    @jax.jit
    def forward(tokens, targets):
        logits = task.apply(params, state, tokens, train=False)[0]
        return logits, task.loss(logits, targets, {}), task.metrics(logits, targets)

    return task, forward


def test_transformer_is_causal(lm):
    task, forward = lm
    x, y = (jnp.asarray(a[:64]) for a in task.data.valid)
    k = 37
    changed = x.at[:, k].set((x[:, k] + 1) % 256)
    a, b = forward(x, y)[0], forward(changed, y)[0]
    np.testing.assert_allclose(a[:, :k], b[:, :k], atol=1e-6)  # the past does not see it
    assert np.all(np.abs(a[:, k:] - b[:, k:]).max(axis=-1) > 1e-4)  # the future does


def test_decoder_lm_checks_heads():
    with pytest.raises(ValueError, match="divisor of width = 30"):
        decoder_lm(seq_len=8, width=30, depth=1, num_heads=4)


def test_untrained_lm_loss_is_log_256(lm):
    task, forward = lm
    x, y = (jnp.asarray(a[:64]) for a in task.data.valid)
    _, loss, metrics = forward(x, y)
    assert loss.shape == (64,)
    assert abs(float(loss.mean()) - math.log(256)) < 0.05  # a uniform next-byte distribution
    np.testing.assert_allclose(metrics["bits_per_byte"], loss / math.log(2), rtol=1e-6)
    assert float(metrics["accuracy"].mean()) < 0.1


# ---------------------------------------------------------------------------------------------
# Synthetic 32x32 images
# ---------------------------------------------------------------------------------------------


def test_images_are_deterministic_per_seed():
    a, b, c = (make_images(n_train=30, n_valid=10, n_test=10, seed=s) for s in (3, 3, 4))
    for split in ("train", "valid", "test"):
        for i in (0, 1):
            assert np.array_equal(getattr(a, split)[i], getattr(b, split)[i])
    assert not np.array_equal(a.train[0], c.train[0])


def test_images_are_shifted_templates_with_unit_variance():
    shift = 3
    s = make_images(n_train=40, n_valid=10, n_test=10, noise=0.0, shift=shift, seed=5)
    templates = class_templates(10, seed=5)
    x, y = s.train
    for i in range(8):  # every noiseless image is its class template rolled by some shift
        errs = [
            np.abs(x[i] - np.roll(templates[y[i]], (dy, dx), axis=(0, 1))).max()
            for dy in range(-shift, shift + 1)
            for dx in range(-shift, shift + 1)
        ]
        assert min(errs) < 1e-5
    noisy = make_images(n_train=600, n_valid=10, n_test=10, noise=1.5, seed=0).train[0]
    assert noisy.shape[1:] == (32, 32, 3)
    assert abs(float(noisy.std()) - 1.0) < 0.02 and abs(float(noisy.mean())) < 0.02
    counts = np.bincount(s.train[1], minlength=10)
    assert counts.sum() == 40 and counts.min() >= 1


# ---------------------------------------------------------------------------------------------
# Training: a few steps of every workload; the reach-the-target runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in NAMES if n != "diabetes"])
def test_few_steps_of_each_workload_run(name):
    w = get_workload(name)
    cfg = w.config(**{"train.steps": 2, "train.eval_every": 2, "task.widths": SMALL[name]})
    result = jaxtune.run_sweep(cfg)
    (trial,) = result.trials
    assert result.selection.metric == w.metric and result.selection.target == w.target
    assert np.isfinite(trial.final[w.metric]) and np.isfinite(trial.final["train.loss"])


def _reaches_target(name):
    w = get_workload(name)
    (trial,) = jaxtune.run_sweep(w.config()).trials
    assert trial.target_step is not None, f"{name}: {w.metric} never reached {w.target}"
    assert w.eval_every < trial.target_step <= w.steps  # reached, and not at once


def test_diabetes_reaches_its_target():
    _reaches_target("diabetes")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n != "diabetes"])
def test_workload_reaches_its_target(name):
    _reaches_target(name)
