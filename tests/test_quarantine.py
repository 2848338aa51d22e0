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


def _sweep(task, form, monkeypatch):
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
    result, _ = runs[form]
    assert [e["form"] for e in result.timing["execution"]] == [form]
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
    # other trials are left as they are (until = the chunk's start).
    for form in ("scan/vmap", "scan/map:2"):
        assert runs[form][1] == [(0, 6, [4, 0, 0]), (12, 6, [12, 16, 12])]
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
    with pytest.raises(ValueError, match="keep = 'some' is invalid: expected 'finite', 'all'"):
        fns.train_step(state, {}, (x, y), 3, keep="some")
