"""User tasks through the engine, against independent computations.

A task restating classification equals the built-in path; a regression sweep equals a plain
optax loop trial by trial; a user hyperparameter compiles once; selection uses the validation
split; batched evaluation equals one pass; user-task sweeps export and resume; bad tasks fail
before anything is compiled or written.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import count_compiles, mlp_forward, optax_loop

import jaxtune
from jaxtune import data as data_lib
from jaxtune.errors import CheckpointMismatchError, ConfigError, TaskError

TRAIN = {"steps": 20, "eval_every": 10, "batch_size": 32}


def _classification_by_hand(model, splits):
    """The built-in classification task written out by a user."""

    def init(key, hp):
        params, state = model.init(key)
        return jaxtune.initializers.scale_kernels(params, hp["task.init_scale"]), state

    return jaxtune.Task(
        init=init,
        apply=model.apply,
        loss=lambda out, y, hp: optax.softmax_cross_entropy_with_integer_labels(out, y),
        metrics=lambda out, y: {"accuracy": (jnp.argmax(out, -1) == y).astype(jnp.float32)},
        data=splits,
    )


def test_a_task_restating_classification_equals_the_builtin_path():
    cfg = {
        "task": {"dataset": "synthetic", "widths": [16], "normalization": "batch"},
        "train": {**TRAIN, "seed": 1},
        "sweep": {"grid": {"optimizer.learning_rate": [0.05, 0.3], "train.batch_size": [16, 32]}},
    }
    builtin = jaxtune.run_sweep(cfg)
    splits = data_lib.make_classification()
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(16,), normalization="batch")
    mine = jaxtune.run_sweep(cfg, task=_classification_by_hand(model, splits))
    for k in builtin.history:
        np.testing.assert_array_equal(mine.history[k], builtin.history[k], err_msg=k)
    for t in builtin.trials:
        a, b = builtin.trial_state(t.id), mine.trial_state(t.id)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_each_regression_trial_equals_a_plain_optax_loop():
    lrs, betas = [3e-3, 1e-2], [0.99, 0.999]
    result = jaxtune.run_sweep(
        {
            "task": {"dataset": "diabetes", "widths": [16]},
            "hparams": {"beta2": 0.999},
            "train": {"steps": 25, "eval_every": 25, "batch_size": 16},
            "sweep": {"grid": {"optimizer.learning_rate": lrs, "hparams.beta2": betas}},
        },
        optimizer=lambda hp: optax.adam(hp["optimizer.learning_rate"], b2=hp["hparams.beta2"]),
    )
    assert result.selection.metric == "valid.loss" and result.selection.mode == "min"
    splits = data_lib.load_diabetes()
    x_va, y_va = splits.valid
    model = jaxtune.mlp(num_outputs=1, input_shape=(10,), widths=(16,))
    for t in result.trials:
        tx = optax.adam(t.hparams["optimizer.learning_rate"], b2=t.hparams["hparams.beta2"])
        params, _, ref = optax_loop(
            model,
            splits.train,
            tx,
            steps=25,
            batch_size=16,
            forward=mlp_forward,
            loss=lambda out, y: (out[:, 0] - y) ** 2,
        )
        np.testing.assert_allclose(result.history["train.loss"][t.id], ref["loss"], rtol=1e-4)
        err = np.asarray(mlp_forward(params, x_va)[:, 0], np.float64) - y_va
        assert t.final["valid.mse"] == pytest.approx(np.mean(err**2), rel=1e-4)
        assert t.final["valid.mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-4)
        assert t.final["valid.loss"] == pytest.approx(t.final["valid.mse"], rel=1e-6)


def _smoothing_task():
    splits = data_lib.make_classification(n_train=128, n_valid=32, n_test=32)
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(8,))

    def loss(out, y, hp):
        labels = optax.smooth_labels(jax.nn.one_hot(y, 4), hp["hparams.label_smoothing"])
        return optax.softmax_cross_entropy(out, labels)

    return jaxtune.Task(
        lambda key, hp: model.init(key),
        model.apply,
        loss,
        lambda out, y: {"accuracy": (jnp.argmax(out, -1) == y).astype(jnp.float32)},
        splits,
    )


def test_n_values_of_a_user_hyperparameter_compile_once():
    task = _smoothing_task()

    def cfg(values):
        return {
            "hparams": {"label_smoothing": 0.0},
            "train": TRAIN,
            "sweep": {"grid": {"hparams.label_smoothing": values}},
        }

    jaxtune.run_sweep(cfg([0.0]), task=task)  # warms up host-side helpers
    with count_compiles() as two:
        r2 = jaxtune.run_sweep(cfg([0.0, 0.1]), task=task)
    with count_compiles() as seven:
        r7 = jaxtune.run_sweep(cfg([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]), task=task)
    assert len(two) == len(seven) > 0
    # The hyperparameter really reaches the loss: smoothing raises the loss of a trained net.
    losses = [t.final["train.loss"] for t in r7.trials]
    assert losses == sorted(losses)
    assert r2.trials[1].hparams == {"hparams.label_smoothing": 0.1}


def test_validation_chooses_even_when_test_disagrees():
    splits = data_lib.make_classification(n_train=256, n_valid=64, n_test=64)
    x_te, y_te = splits.test
    adversarial = splits._replace(test=(x_te, (y_te + 1) % 4))  # a trained net scores ~0 here
    result = jaxtune.run_sweep(
        {
            "task": {"widths": [16]},
            "train": {"steps": 40, "eval_every": 20, "batch_size": 32},
            "sweep": {"grid": {"optimizer.learning_rate": [1e-5, 0.3]}},
        },
        dataset=adversarial,
    )
    slow, fast = result.trials
    assert fast.final["valid.accuracy"] > slow.final["valid.accuracy"] + 0.3
    assert fast.final["test.accuracy"] < slow.final["test.accuracy"]
    assert result.best().id == fast.id and result.ranked()[0].id == fast.id
    table = jaxtune.report.format_table(result).splitlines()
    assert table[2].split()[1] == fast.name
    with pytest.raises(ValueError, match="never used to choose"):
        result.best("test.accuracy")


def test_batched_evaluation_equals_one_pass_in_float64():
    splits = data_lib.make_classification(n_train=64, n_valid=53, n_test=8)
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(8,))
    task = jaxtune.tasks.classification(model, splits)
    fns = jaxtune.make_train_step(task, lambda hp: optax.sgd(0.1), rng=False)
    state = fns.init(jax.random.PRNGKey(3), {})
    x, y = splits.valid
    logits = np.asarray(mlp_forward(state.params, x), np.float64)
    logp = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1))[:, None]
    logp -= logits.max(1, keepdims=True)
    want_loss = float(np.mean(-logp[np.arange(len(y)), y]))
    want_acc = float(np.mean(logits.argmax(1) == y))
    for batch_size in (None, 1, 7, 53, 1000):
        got = fns.evaluate(state, {}, splits.valid, batch_size=batch_size)
        assert float(got["loss"]) == pytest.approx(want_loss, rel=2e-6), batch_size
        assert float(got["accuracy"]) == pytest.approx(want_acc, abs=1e-7), batch_size


def test_eval_batch_size_does_not_change_a_sweep():
    cfg = {
        "task": {"dataset": "synthetic", "widths": [8]},
        "train": TRAIN,
        "sweep": {"grid": {"optimizer.learning_rate": [0.1]}},
    }
    one = jaxtune.run_sweep(cfg)
    walked = jaxtune.run_sweep({**cfg, "eval": {"batch_size": 24}})
    for k in ("valid.loss", "valid.accuracy", "test.loss", "test.accuracy"):
        np.testing.assert_allclose(walked.history[k], one.history[k], rtol=2e-6, err_msg=k)


def test_time_to_target_and_best_step_from_the_history():
    result = jaxtune.run_sweep(
        {
            "task": {"dataset": "synthetic", "widths": [16]},
            "select": {"target": 0.8},
            "train": {"steps": 40, "eval_every": 5, "batch_size": 32},
            "sweep": {"grid": {"optimizer.learning_rate": [0.003, 0.03, 0.3]}},
        }
    )
    h = result.history
    for t in result.trials:
        acc = h["valid.accuracy"][t.id]
        hit = np.flatnonzero(acc >= 0.8)
        assert t.target_step == (int(h["eval_step"][hit[0]]) if hit.size else None)
        assert t.best_step == int(h["eval_step"][np.argmax(acc)])
        assert t.best == pytest.approx(float(acc.max()))
    assert any(t.target_step is not None for t in result.trials)
    assert "target_at" in jaxtune.report.format_table(result).splitlines()[0]


class _Net(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(4)(nn.tanh(nn.Dense(self.width)(x)))


def _linen_task(width):
    splits = data_lib.make_classification(n_train=128, n_valid=32, n_test=32)
    model = jaxtune.from_linen(_Net(width), (16,))
    return jaxtune.tasks.classification(model, splits)


class _StopAfterFirstChunk(jaxtune.SweepCallback):
    def on_chunk(self, start, stop, history):
        raise KeyboardInterrupt


def test_user_task_sweep_exports_and_resumes_bit_identically(tmp_path):
    cfg = {
        "train": {"steps": 30, "eval_every": 10, "batch_size": 16},
        "checkpoint": {"every": 10},
        "sweep": {"grid": {"optimizer.learning_rate": [0.05, 0.2]}},
    }
    task = _linen_task(8)
    whole = jaxtune.run_sweep(cfg, task=task, out_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        jaxtune.run_sweep(
            cfg, task=task, out_dir=tmp_path / "cut", callbacks=[_StopAfterFirstChunk()]
        )
    resumed = jaxtune.run_sweep(cfg, task=task, out_dir=tmp_path / "cut", resume=True)
    for k in whole.history:
        np.testing.assert_array_equal(resumed.history[k], whole.history[k], err_msg=k)
    for t in whole.trials:
        exported = jaxtune.export_trial(tmp_path / "cut", t.id)
        live = whole.trial_state(t.id).params
        assert jax.tree.structure(exported["params"]) == jax.tree.structure(live)
        for a, b in zip(jax.tree.leaves(exported["params"]), jax.tree.leaves(live), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))
    # Resuming with a task of another shape is refused, and the checkpoint stays where it is.
    steps_before = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    with pytest.raises(CheckpointMismatchError, match="different model"):
        jaxtune.run_sweep(cfg, task=_linen_task(12), out_dir=tmp_path / "cut", resume=True)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == steps_before


# ----------------------------------------------------------------------------------------------
# Bad input: an error naming the field, before compiling, nothing written.


def _bad(**changes):
    task = _linen_task(8)
    return task._replace(**changes)


def _splits():
    return data_lib.make_classification(n_train=64, n_valid=16, n_test=16)


BAD_TASKS = {
    "too few outputs": (
        lambda: jaxtune.tasks.classification(
            jaxtune.mlp(num_outputs=3, input_shape=(16,), widths=(8,)), _splits()
        ),
        "model.num_outputs = 3 is too small",
    ),
    "empty split": (
        lambda: _bad(
            data=_splits()._replace(valid=(np.zeros((0, 16), np.float32), np.zeros(0, int)))
        ),
        "data.valid is empty",
    ),
    "inputs do not fit the model": (
        lambda: jaxtune.tasks.classification(
            jaxtune.mlp(num_outputs=4, input_shape=(10,), widths=(8,)), _splits()
        ),
        r"task.apply failed on a batch of train inputs shaped \(2, 16\)",
    ),
    "loss not per example": (
        lambda: _bad(loss=lambda out, y, hp: jnp.mean((out[:, 0] - y) ** 2)),
        r"task.loss must return one float per example, shape \(2,\)",
    ),
    "metric not per example": (
        lambda: _bad(metrics=lambda out, y: {"accuracy": jnp.mean(jnp.argmax(out, -1) == y)}),
        r"task.metrics\['accuracy'\] must be per-example",
    ),
    "not a task": (lambda: {"init": None}, "task must be a jaxtune.Task"),
}


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_bad_tasks_fail_before_compiling_and_write_nothing(case, tmp_path):
    make, message = BAD_TASKS[case]
    out = tmp_path / "never"
    with count_compiles() as compiles, pytest.raises((TaskError, ConfigError), match=message):
        jaxtune.run_sweep({"train": TRAIN}, task=make(), out_dir=out)
    assert not out.exists()
    assert len(compiles) <= 2  # at most the host-side helpers of the data checks


def test_a_factory_returning_something_else_is_named():
    with pytest.raises(ConfigError, match="must return a jaxtune.Task, got dict"):
        jaxtune.run_sweep({"train": TRAIN}, task=lambda structure: {"not": "a task"})
    with pytest.raises(
        ConfigError, match=r"optimizer must return an optax.GradientTransformation.*got dict"
    ):
        jaxtune.run_sweep({"train": TRAIN}, task=_linen_task(8), optimizer=lambda hp: {"a": 1})
    with pytest.raises(
        ConfigError, match=r"task.factory = 'nowhere.at_all:make' cannot be imported"
    ):
        jaxtune.run_sweep({"task": {"factory": "nowhere.at_all:make"}, "train": TRAIN})


def test_settings_a_user_task_ignores_are_refused_before_training(tmp_path):
    """A structure key of the built-in task that a factory never reads, set or swept, would
    label identical trials as different settings, and so would one that the sweep varies
    for a given Task object; augmentation strengths need an augment function. A factory
    that reads its whole structure (a copy) may use any key."""
    grid = {"task.normalization": ["none", "batch"]}
    cases = [
        (
            {"task": {"factory": "jaxtune.workloads.tabular:digits_mlp"}, "sweep": {"grid": grid}},
            None,
            r"task.normalization = 'batch' has no effect: task.factory "
            r"'jaxtune.workloads.tabular:digits_mlp' does not read it \(it reads task.dtype, "
            r"task.subset, task.widths\)",
        ),
        (
            {"task": {"activation": "tanh"}},
            lambda structure: _linen_task(8),
            r"task.activation = 'tanh' has no effect: task does not read it \(it reads no task",
        ),
        (
            {"augment": {"noise": 0.5}},
            _linen_task(8),
            r"augment.noise has no effect: the given Task has no augment function",
        ),
        (
            {"sweep": {"grid": {"task.dtype": ["float32", "bfloat16"]}}},
            _linen_task(8),
            r"task.dtype = 'bfloat16' has no effect: the given Task is built already, so "
            r"trials that vary it train the same task",
        ),
    ]
    for cfg, task, message in cases:
        with pytest.raises(ConfigError, match=message):
            jaxtune.run_sweep({"train": TRAIN, **cfg}, task=task, out_dir=tmp_path / "never")
        assert not (tmp_path / "never").exists()
    seen = []

    def reads_everything(structure):
        seen.append(dict(structure)["task.activation"])
        return _linen_task(8)

    jaxtune.run_sweep(
        {"train": {**TRAIN, "steps": 10}, "task": {"activation": "tanh"}}, task=reads_everything
    )
    assert seen == ["tanh"]


def test_selection_metric_must_exist_and_not_be_test():
    with pytest.raises(ConfigError, match="hyperparameters are chosen on the validation split"):
        jaxtune.SweepConfig.from_dict({"select": {"metric": "test.accuracy"}})
    with pytest.raises(
        ConfigError, match=r"select.metric = 'valid.f1' is invalid: the task reports"
    ):
        jaxtune.run_sweep({"select": {"metric": "valid.f1"}, "train": TRAIN}, task=_linen_task(8))
    task = _linen_task(8)
    f1 = task._replace(metrics=lambda out, y: {"f1": (jnp.argmax(out, -1) == y).astype(float)})
    with pytest.raises(ConfigError, match="select.mode is needed"):
        jaxtune.run_sweep({"select": {"metric": "valid.f1"}, "train": TRAIN}, task=f1)


def test_user_hyperparameters_are_validated():
    with pytest.raises(ConfigError, match="hparams.x = 'big' is invalid: expected a finite number"):
        jaxtune.SweepConfig.from_dict({"hparams": {"x": "big"}})
    with pytest.raises(
        ConfigError, match="hparams.y .* is not defined: add it under \\[hparams\\]"
    ):
        jaxtune.SweepConfig.from_dict({"sweep": {"grid": {"hparams.y": [1.0, 2.0]}}})
    assert math.isclose(jaxtune.SweepConfig.from_dict({"hparams": {"x": 1}})["hparams.x"], 1)


def test_a_training_split_of_one_example_trains_like_a_plain_loop():
    """The "overfit one example" debug mode: a split of one example, batch size 1, with the
    default ``train.execution = "auto"`` (which inspects the step on real rows)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    splits = data_lib.Splits((x[:1], y[:1]), (x[1:5], y[1:5]), (x[5:], y[5:]))
    task = jaxtune.Task(
        init=lambda key, hp: ({"w": jnp.zeros((3,))}, {}),
        apply=lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s),
        loss=lambda out, y, hp: (out - y) ** 2,
        metrics=lambda out, y: {"mae": jnp.abs(out - y)},
        data=splits,
    )
    cfg = {
        "optimizer": {"name": "sgd"},
        "train": {"steps": 6, "eval_every": 3, "batch_size": 1},
        "sweep": {"grid": {"optimizer.learning_rate": [0.05, 0.1]}},
    }
    result = jaxtune.run_sweep(cfg, task=task)
    import types

    model = types.SimpleNamespace(init=lambda key: ({"w": jnp.zeros(3)}, {}))
    for t in result.trials:
        want, _, _ = optax_loop(
            model,
            splits.train,
            optax.sgd(t.hparams["optimizer.learning_rate"]),
            steps=6,
            batch_size=1,
            forward=lambda p, x: x @ p["w"],
            loss=lambda out, y: (out - y) ** 2,
        )
        np.testing.assert_allclose(
            np.asarray(result.trial_state(t.id).params["w"]), want["w"], rtol=2e-6, atol=1e-7
        )
