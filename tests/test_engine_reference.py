"""The engine, trial by trial, against a training loop written here with plain optax.

Nothing in the reference loop calls the engine: it has its own forward pass, its own batch
order (the documented key rule), its own loss and its own optax chain or schedule. Each case
plants a knob (weight decay, a schedule, init scale, dropout, clipping) that a broken engine
could ignore or mis-apply.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import mlp_forward

import jaxtune
from jaxtune import data as data_lib

STEPS, EVAL_EVERY, BS = 30, 10, 32

# Names of the result fields these tests read.
H_LOSS, H_LR, H_CLIPPED, H_GRAD = "train.loss", "learning_rate", "clipped", "grad_norm"
H_SEL = "valid.accuracy"  # the evaluated metric ranked by best_step
F_TRAIN = "train.loss"


def _ds():
    return data_lib.make_classification(flat=True)


def _batch(data_key, t, n, bs):
    spe = n // bs
    perm = jax.random.permutation(jax.random.fold_in(data_key, t // spe), n)
    return jax.lax.dynamic_slice(perm, ((t % spe) * bs,), (bs,))


def _reference(
    ds,
    tx,
    *,
    lr_schedule,
    clip=None,
    init_scale=1.0,
    seed=0,
    steps=STEPS,
    widths=(32,),
    dropout=0.0,
):
    """A plain optax loop; returns final params and per-step loss, lr, grad norm, clipped."""
    init_key, data_key, drop_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    x_all, y_all = (jnp.asarray(a) for a in ds.train)
    n, f = x_all.shape
    k = int(y_all.max()) + 1
    model = jaxtune.mlp(num_outputs=k, input_shape=(f,), widths=widths, dropout=dropout)
    params, _ = model.init(init_key)
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a * init_scale if p[-1].key == "kernel" else a, params
    )
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, t):
        idx = _batch(data_key, t, n, BS)
        x, y = x_all[idx], y_all[idx]

        def loss_fn(p):
            if dropout:
                logits, _ = model.apply(p, {}, x, train=True, key=jax.random.fold_in(drop_key, t))
            else:
                logits = mlp_forward(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    hist = {"loss": [], "lr": [], "grad": [], "clipped": []}
    for t in range(steps):
        params, opt_state, loss, gn = step(params, opt_state, t)
        hist["loss"].append(float(loss))
        hist["grad"].append(float(gn))
        hist["lr"].append(float(lr_schedule(t)))
        hist["clipped"].append(clip is not None and float(gn) > clip)
    return params, {k: np.asarray(v) for k, v in hist.items()}


LR = 0.05
# (trial overrides, reference chain, reference schedule, clip)
CASES = {
    "sgd-constant": (
        {"optimizer.name": "sgd"},
        optax.sgd(LR),
        optax.constant_schedule(LR),
        None,
    ),
    "momentum-l2-step-decay-clip": (
        {
            "optimizer.name": "momentum",
            "optimizer.momentum": 0.9,
            "optimizer.weight_decay": 1e-2,
            "optimizer.clip_norm": 0.5,
            "schedule.name": "step_decay",
            "schedule.decay_rate": 0.5,
            "schedule.every": 7,
            "schedule.min_value": 0.02,
        },
        optax.chain(
            optax.clip_by_global_norm(0.5),
            optax.add_decayed_weights(1e-2),
            optax.sgd(optax.exponential_decay(LR, 7, 0.5, staircase=True, end_value=0.02), 0.9),
        ),
        optax.exponential_decay(LR, 7, 0.5, staircase=True, end_value=0.02),
        0.5,
    ),
    "adamw-cosine": (
        {
            "optimizer.name": "adamw",
            "optimizer.learning_rate": 0.01,
            "optimizer.weight_decay": 0.1,
            "schedule.name": "cosine",
            "schedule.alpha": 0.1,
        },
        optax.adamw(optax.cosine_decay_schedule(0.01, STEPS, alpha=0.1), weight_decay=0.1),
        optax.cosine_decay_schedule(0.01, STEPS, alpha=0.1),
        None,
    ),
    "nesterov-exponential": (
        {
            "optimizer.name": "nesterov",
            "optimizer.momentum": 0.8,
            "schedule.name": "exponential",
            "schedule.decay_rate": 0.7,
            "schedule.every": 5,
        },
        optax.sgd(optax.exponential_decay(LR, 5, 0.7), momentum=0.8, nesterov=True),
        optax.exponential_decay(LR, 5, 0.7),
        None,
    ),
    "adam-warmup-cosine-clip": (
        {
            "optimizer.name": "adam",
            "optimizer.learning_rate": 0.01,
            "optimizer.clip_norm": 0.3,
            "schedule.name": "warmup_cosine",
            "schedule.warmup_steps": 6,
            "schedule.alpha": 0.2,
        },
        optax.chain(
            optax.clip_by_global_norm(0.3),
            optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.01, 6, STEPS, 0.002)),
        ),
        optax.warmup_cosine_decay_schedule(0.0, 0.01, 6, STEPS, 0.002),
        0.3,
    ),
    "rmsprop-l2-init-scale": (
        {
            "optimizer.name": "rmsprop",
            "optimizer.learning_rate": 0.003,
            "optimizer.weight_decay": 1e-3,
            "task.init_scale": 0.5,
        },
        optax.chain(optax.add_decayed_weights(1e-3), optax.rmsprop(0.003)),
        optax.constant_schedule(0.003),
        None,
    ),
}


@pytest.fixture(scope="module")
def case_sweep():
    trials = [dict(o) for o, *_ in CASES.values()]
    result = jaxtune.run_sweep(
        {
            "task": {"dataset": "synthetic", "widths": [32]},
            "optimizer": {"learning_rate": LR},
            "train": {"steps": STEPS, "eval_every": EVAL_EVERY, "batch_size": BS},
            "sweep": {"method": "list", "trials": trials},
        }
    )
    return result


@pytest.mark.parametrize("case", list(CASES))
def test_trial_equals_a_plain_optax_loop(case_sweep, case):
    i = list(CASES).index(case)
    overrides, tx, schedule, clip = CASES[case]
    params, ref = _reference(
        _ds(), tx, lr_schedule=schedule, clip=clip, init_scale=overrides.get("task.init_scale", 1.0)
    )
    h = case_sweep.history
    np.testing.assert_allclose(h[H_LOSS][i], ref["loss"], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(h[H_GRAD][i], ref["grad"], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(h[H_LR][i], ref["lr"], rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(h[H_CLIPPED][i], ref["clipped"])
    if clip is not None:
        assert 0 < ref["clipped"].sum() < STEPS, "the clip norm should bite on some steps only"
    mine = case_sweep.trial_state(i).params
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_dropout_uses_a_fresh_documented_key_every_step():
    result = jaxtune.run_sweep(
        {
            "task": {"dataset": "synthetic", "widths": [32], "dropout": 0.3},
            "optimizer": {"name": "sgd", "learning_rate": LR},
            "train": {"steps": STEPS, "eval_every": EVAL_EVERY, "batch_size": BS, "seed": 3},
        }
    )
    params, ref = _reference(
        _ds(), optax.sgd(LR), lr_schedule=optax.constant_schedule(LR), seed=3, dropout=0.3
    )
    np.testing.assert_allclose(result.history[H_LOSS][0], ref["loss"], rtol=2e-4, atol=1e-6)
    mine = result.trial_state(0).params
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_one_off_non_finite_batch_freezes_the_trial_at_its_last_finite_step():
    ds = _ds()
    bad_row = 7
    _, data_key, _ = jax.random.split(jax.random.PRNGKey(0), 3)
    n = ds.train[0].shape[0]
    bad_step = next(t for t in range(STEPS) if bad_row in np.asarray(_batch(data_key, t, n, BS)))
    assert 0 < bad_step < STEPS - 5, "the planted row must land mid-run with finite steps after"
    # A finite but huge row, labelled as the class it scores lowest: its loss and gradient
    # overflow at `bad_step` only; every later batch is finite again.
    x, y = (np.array(a) for a in ds.train)
    x[bad_row] = 1e35
    sgd = optax.sgd(0.01)
    const = optax.constant_schedule(0.01)
    before, _ = _reference(ds._replace(train=(x, y)), sgd, lr_schedule=const, steps=bad_step)
    y[bad_row] = int(np.argmin(np.asarray(mlp_forward(before, x[bad_row : bad_row + 1]))[0]))
    poisoned = ds._replace(train=(x, y))
    _, ref = _reference(poisoned, sgd, lr_schedule=const, steps=bad_step + 1)
    assert not np.isfinite(ref["grad"][-1]) and np.all(np.isfinite(ref["grad"][:-1]))
    result = jaxtune.run_sweep(
        {
            "task": {"widths": [32]},
            "optimizer": {"name": "sgd", "learning_rate": 0.01},
            "train": {"steps": STEPS, "eval_every": EVAL_EVERY, "batch_size": BS},
        },
        dataset=poisoned,
    )
    trial = result.trials[0]
    assert trial.diverged and trial.diverged_step == bad_step
    mine = result.trial_state(0).params
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(before), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-7)
    loss = result.history[H_LOSS][0]
    np.testing.assert_allclose(loss[:bad_step], ref["loss"][:bad_step], rtol=2e-4, atol=1e-6)
    assert np.all(np.isnan(loss[bad_step:]))


def test_final_and_best_are_the_documented_reductions_of_the_history(case_sweep):
    h = case_sweep.history
    for t in case_sweep.trials:
        window = h[H_LOSS][t.id, STEPS - EVAL_EVERY : STEPS]
        assert t.final[F_TRAIN] == pytest.approx(float(np.mean(window)), rel=1e-6)
        sel = h[H_SEL][t.id]
        j = int(np.argmax(sel))
        assert t.best_step == int(h["eval_step"][j])
        assert list(h["eval_step"]) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
