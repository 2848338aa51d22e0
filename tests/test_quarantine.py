"""The deferred quarantine of one-program chunks equals the per-step quarantine.

A chunk run as one program (``scan`` forms of a dense model) keeps every update, puts diverged
trials back at the chunk's end and replays the chunk for a trial that diverged within it
(jaxtune/engine/quarantine.py). Here one training row is finite but huge (its activations
overflow to inf, its loss is NaN), and three trials with their own
data seeds meet it at step 4 (the first chunk), at step 16 (the third) and never. Each trial is
compared with the plain optax loop of tests/reference.py, which stops at the divergence: the
diverged trials must hold their last finite state, and every evaluation after the divergence
(including those of a chunk already dispatched when the replay ran) must be of that state.
``host/vmap`` (the per-step quarantine) runs the same sweep as a second witness.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import accuracy, assert_tree_close, batch_of, optax_loop

import jaxtune
from jaxtune import data as data_lib
from jaxtune.engine import population as population_lib

STEPS, EVAL_EVERY, BS, LR = 24, 6, 16, 0.05
SEEDS = (0, 1, 2)
WANT_DIVERGED = [4, 16, None]
_REPLAY = population_lib.Call.replay
FORMS = ("scan/vmap", "scan/map:2", "host/vmap")  # deferred, deferred, per step


def _first_hit(seed, row, n):
    data_key = jax.random.split(jax.random.PRNGKey(seed), 4)[1]
    hits = [t for t in range(STEPS) if row in np.asarray(batch_of(data_key, t, n, BS))]
    return hits[0] if hits else None


@pytest.fixture(scope="module")
def poisoned():
    data = data_lib.make_classification()
    x, y = (np.array(a) for a in data.train)
    row = 5  # met at steps 4, 16 and never by seeds 0, 1, 2 (checked below)
    assert [_first_hit(s, row, len(x)) for s in SEEDS] == WANT_DIVERGED
    x[row] = 3e38
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(32,))
    task = jaxtune.tasks.classification(model, data._replace(train=(x, y)))
    tx = optax.sgd(LR, momentum=0.9)
    refs = [optax_loop(model, (x, y), tx, steps=STEPS, batch_size=BS, seed=s) for s in SEEDS]
    return model, task, refs


def _sweep(task, form, monkeypatch, grad_norm=True, per_call="auto"):
    replays = []

    def spy(self, start, length, until):
        replays.append((start, length, np.asarray(until).tolist()))
        return _REPLAY(self, start, length, until)

    monkeypatch.setattr(population_lib.Call, "replay", spy)
    result = jaxtune.run_sweep(
        {
            "train": {
                "steps": STEPS,
                "eval_every": EVAL_EVERY,
                "batch_size": BS,
                "execution": form,
                "grad_norm": grad_norm,
                "max_trials_per_call": per_call,
            },
            "sweep": {"method": "list", "trials": [{"train.seed": s} for s in SEEDS]},
        },
        task=task,
        optimizer=lambda hp: optax.sgd(LR, momentum=0.9),
    )
    return result, replays


@pytest.fixture(scope="module")
def runs(poisoned):
    _, task, _ = poisoned
    with pytest.MonkeyPatch.context() as mp:
        return {form: _sweep(task, form, mp) for form in FORMS}


@pytest.mark.parametrize("form", FORMS)
def test_diverged_trials_hold_their_last_finite_state_and_are_evaluated_on_it(form, poisoned, runs):
    model, task, refs = poisoned
    _check_poisoned(runs[form][0], model, task, refs, form)


def _check_poisoned(result, model, task, refs, form):
    assert {e["form"] for e in result.timing["execution"]} == {form}
    steps = result.history["eval_step"]
    for i, (params, model_state, hist) in enumerate(refs):
        trial = result.trials[i]
        assert hist["diverged_step"] == WANT_DIVERGED[i] == trial.diverged_step
        taken = len(hist["loss"])
        loss = result.history["train.loss"][i]
        np.testing.assert_allclose(loss[:taken], hist["loss"], rtol=1e-4)
        np.testing.assert_allclose(result.history["grad_norm"][i, :taken], hist["grad"], rtol=1e-4)
        state = result.trial_state(i)
        assert_tree_close(state.params, params, rtol=1e-3, atol=1e-5)
        want = accuracy(model, params, model_state, task.data.valid)
        if hist["diverged_step"] is None:
            assert trial.final["valid.accuracy"] == pytest.approx(want, abs=1e-6)
            continue
        d = hist["diverged_step"]
        assert np.isnan(loss[d:]).all() and np.isnan(result.history["grad_norm"][i, d + 1 :]).all()
        after = steps > d
        assert after.sum() >= 2  # the chunk it diverged in and every later one
        np.testing.assert_allclose(result.history["valid.accuracy"][i, after], want, atol=1e-6)


def test_only_chunks_with_a_new_divergence_are_replayed(runs):
    # Chunk [0, 6) replays trial 0 up to step 4, chunk [12, 18) trial 1 up to step 16; the
    # other trials are left as they are (until = -1).
    for form in ("scan/vmap", "scan/map:2"):
        assert runs[form][1] == [(0, 6, [4, -1, -1]), (12, 6, [-1, 16, -1])]
    assert runs["host/vmap"][1] == []


@pytest.mark.parametrize("form", ["scan/vmap", "scan/map:2"])
def test_the_deferred_and_per_step_quarantines_give_the_same_sweep(form, runs):
    fast, slow = runs[form][0], runs["host/vmap"][0]
    for key in ("train.loss", "grad_norm", "valid.loss", "valid.accuracy", "test.loss"):
        np.testing.assert_allclose(fast.history[key], slow.history[key], rtol=1e-4, atol=1e-6)
    for i in range(len(SEEDS)):
        assert_tree_close(fast.trial_state(i), slow.trial_state(i), rtol=1e-3, atol=1e-5)


def test_train_step_keep_values():
    task = jaxtune.tasks.classification(
        jaxtune.mlp(num_outputs=2, input_shape=(3,), widths=(4,)),
        data_lib.make_classification(num_features=3, num_classes=2),
    )
    fns = jaxtune.make_train_step(task, lambda hp: optax.sgd(0.1))
    state = fns.init(jax.random.PRNGKey(0), {})
    x, y = (jnp.asarray(a[:8]) for a in task.data.train)
    bad = (x.at[0].set(jnp.nan), y)
    kept, _ = fns.train_step(state, {}, bad, 3, keep="all")
    frozen, m = fns.train_step(state, {}, bad, 3)
    assert bool(kept.diverged) and int(kept.diverged_step) == 3
    assert not all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(kept.params))
    assert_tree_close(frozen.params, state.params, rtol=0, atol=0)
    assert np.isnan(m["loss"])
    skipped, _ = fns.train_step(state, {}, (x, y), 3, keep=jnp.asarray(False))
    assert_tree_close(skipped.params, state.params, rtol=0, atol=0)
    assert not bool(skipped.diverged)
    replayed, _ = fns.train_step(state, {}, bad, 3, keep=jnp.asarray(True))  # the quarantine
    assert bool(replayed.diverged) and int(replayed.diverged_step) == 3
    assert_tree_close(replayed.params, state.params, rtol=0, atol=0)
    with pytest.raises(ValueError, match="keep = 'some' is invalid: expected 'finite', 'all'"):
        fns.train_step(state, {}, (x, y), 3, keep="some")


# ----------------------------------------------------------------------------------------------
# train.grad_norm = false: no gradient norm per step. The chunk's flags follow the loss, the
# states are checked at the chunk's end, and the replay finds the exact step. Here a marked
# training row has a finite loss and a NaN gradient (d sqrt(u) at u = 0, times 0), so only the
# gradient norm shows the divergence: seed 0 meets it at step 5 (a chunk's last step: only the
# check of the states catches it), seed 1 at step 9 (the loss of step 10 is NaN), seed 2 never.

WANT_NAN_GRAD = [5, 9, None]
OFF_FORMS = ("scan/vmap", "scan/unroll", "host/vmap")  # deferred, per step, per step


def _marked_loss(out, y):
    marked = y >= 4
    u = jnp.where(marked, 0.0 * jnp.abs(out[..., 0]), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(out, y % 4)
    return ce + jnp.where(marked, jnp.sqrt(u), 0.0)


@pytest.fixture(scope="module")
def nan_grad():
    data = data_lib.make_classification()
    x, y = (np.array(a) for a in data.train)
    row = 16
    assert [_first_hit(s, row, len(x)) for s in SEEDS] == WANT_NAN_GRAD
    y[row] += 4
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(32,))
    task = jaxtune.tasks.classification(model, data)._replace(
        data=data._replace(train=(x, y)), loss=lambda out, t, hp: _marked_loss(out, t)
    )
    tx = optax.sgd(LR, momentum=0.9)
    refs = [
        optax_loop(model, (x, y), tx, steps=STEPS, batch_size=BS, seed=s, loss=_marked_loss)
        for s in SEEDS
    ]
    with pytest.MonkeyPatch.context() as mp:
        runs = {form: _sweep(task, form, mp, grad_norm=False) for form in OFF_FORMS}
    return model, task, refs, runs


def _check_against(result, model, task, refs, want):
    steps = result.history["eval_step"]
    assert np.isnan(result.history["grad_norm"]).all()  # not recorded
    for i, (params, model_state, hist) in enumerate(refs):
        assert hist["diverged_step"] == want[i] == result.trials[i].diverged_step
        taken, loss = len(hist["loss"]), result.history["train.loss"][i]
        np.testing.assert_allclose(loss[:taken], hist["loss"], rtol=1e-4)
        assert_tree_close(result.trial_state(i).params, params, rtol=1e-3, atol=1e-5)
        acc = accuracy(model, params, model_state, task.data.valid)
        if want[i] is None:
            assert result.trials[i].final["valid.accuracy"] == pytest.approx(acc, abs=1e-6)
            continue
        d = want[i]
        assert np.isnan(loss[d:]).all()
        assert np.isnan(result.history["learning_rate"][i, d + 1 :]).all()
        np.testing.assert_allclose(result.history["valid.accuracy"][i, steps > d], acc, atol=1e-6)


@pytest.mark.parametrize("form", OFF_FORMS)
def test_without_the_gradient_norm_a_nan_gradient_is_caught_at_its_step(form, nan_grad):
    model, task, refs, runs = nan_grad
    result, replays = runs[form]
    assert [e["form"] for e in result.timing["execution"]] == [form]
    _check_against(result, model, task, refs, WANT_NAN_GRAD)
    if form != "scan/vmap":  # the per-step quarantine computes the norm, and never replays
        assert replays == []
    else:  # flagged by the check at the chunk's end (step 5), and by the loss of step 10
        assert replays == [(0, 6, [5, -1, -1]), (6, 6, [-1, 10, -1])]


def test_without_the_gradient_norm_a_nan_loss_is_caught_at_its_step(poisoned):
    model, task, refs = poisoned
    with pytest.MonkeyPatch.context() as mp:
        result, replays = _sweep(task, "scan/vmap", mp, grad_norm=False)
    _check_against(result, model, task, refs, WANT_DIVERGED)
    assert replays == [(0, 6, [4, -1, -1]), (12, 6, [-1, 16, -1])]


def test_one_unrolled_trial_per_call_defers_its_quarantine(poisoned, nan_grad):
    # One unrolled trial on a device carries its state apart and defers the quarantine like
    # batched trials (jaxtune/engine/execution.py): its chunks flag, its replays find the step.
    model, task, refs = poisoned
    with pytest.MonkeyPatch.context() as mp:
        result, replays = _sweep(task, "scan/unroll", mp, per_call=1)
    assert result.timing["groups"][0]["calls"] == len(SEEDS)
    _check_poisoned(result, model, task, refs, "scan/unroll")
    assert replays == [(0, 6, [4]), (12, 6, [16])]
    model, task, refs, _ = nan_grad
    with pytest.MonkeyPatch.context() as mp:
        result, replays = _sweep(task, "scan/unroll", mp, grad_norm=False, per_call=1)
    _check_against(result, model, task, refs, WANT_NAN_GRAD)
    assert replays == [(0, 6, [5]), (6, 6, [10])]


def test_the_chunk_end_check_flags_exactly_the_trials_with_a_non_finite_state():
    # Trial 0: huge but finite (a plain sum would overflow); 1: inf in the optimizer state
    # only; 2: NaN in the model state; 3: finite, but diverged before (its step is kept).
    from jaxtune.engine.quarantine import flag_nonfinite
    from jaxtune.engine.step import TrainState

    params = {"w": jnp.full((4, 3), 3e38, jnp.float32).at[1:].set(1.0)}
    opt = {"mu": jnp.zeros((4, 3)).at[1, 2].set(jnp.inf), "count": jnp.zeros((4,), jnp.int32)}
    ms = {"mean": jnp.zeros((4, 2)).at[2, 0].set(jnp.nan)}
    state = TrainState(
        params,
        ms,
        opt,
        jnp.zeros((4, 2), jnp.uint32),
        jnp.asarray([False, False, False, True]),
        jnp.asarray([-1, -1, -1, 3], jnp.int32),
    )
    out = flag_nonfinite(state, 11)
    assert np.asarray(out.diverged).tolist() == [False, True, True, True]
    assert np.asarray(out.diverged_step).tolist() == [-1, 11, 11, 3]


@pytest.mark.parametrize("grad_norm", [True, False])
def test_a_trial_the_replay_does_not_catch_before_its_flag_is_marked_there(grad_norm):
    # A learning rate of 3e38: step 0's gradients are finite and its update is kept, step
    # 1's loss is not finite. The chunk flags step 1; the replay's per-step check finds
    # nothing before it, so the trial is marked diverged at step 1, as the optax loop stops.
    data = data_lib.make_classification()
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(32,))
    task = jaxtune.tasks.classification(model, data)
    lrs = [0.05, 3e38]
    result = jaxtune.run_sweep(
        {
            "train": {
                "steps": 12,
                "eval_every": 6,
                "batch_size": BS,
                "grad_norm": grad_norm,
                "execution": "scan/vmap",
            },
            "sweep": {"grid": {"optimizer.learning_rate": lrs}},
        },
        task=task,
        optimizer=lambda hp: optax.sgd(hp["optimizer.learning_rate"]),
    )
    for i, lr in enumerate(lrs):
        params, _, hist = optax_loop(model, data.train, optax.sgd(lr), steps=12, batch_size=BS)
        assert result.trials[i].diverged_step == hist["diverged_step"] == (None, 1)[i]
        np.testing.assert_allclose(
            result.history["train.loss"][i, : len(hist["loss"])], hist["loss"], rtol=1e-4
        )
        assert_tree_close(result.trial_state(i).params, params, rtol=1e-3, atol=1e-5)


def _overflowing_loss(out, y):
    # A marked row adds 1e30 times its first logit: the loss and the update stay finite, the
    # gradient's entries (about 1e28) square past float32, so only its norm is not finite.
    ce = optax.softmax_cross_entropy_with_integer_labels(out, y % 4)
    return ce + jnp.where(y >= 4, 1e30 * out[..., 0], 0.0)


def test_without_the_gradient_norm_an_overflowing_norm_at_a_chunks_last_step_is_caught(nan_grad):
    # Seed 0 meets the marked row at step 5, a chunk's last step: no later step of the chunk
    # shows it, and the state it leaves is finite, so the chunk's last step checks the norm.
    model, nan_task, _, _ = nan_grad
    task = nan_task._replace(loss=lambda out, t, hp: _overflowing_loss(out, t))
    tx = optax.sgd(LR, momentum=0.9)
    refs = [
        optax_loop(
            model, task.data.train, tx, steps=STEPS, batch_size=BS, seed=s, loss=_overflowing_loss
        )
        for s in SEEDS
    ]
    assert [r[2]["diverged_step"] for r in refs] == [5, 9, None]
    with pytest.MonkeyPatch.context() as mp:
        result, replays = _sweep(task, "scan/vmap", mp, grad_norm=False)
    _check_against(result, model, task, refs, [5, 9, None])
    assert replays == [(0, 6, [5, -1, -1]), (6, 6, [-1, 10, -1])]
