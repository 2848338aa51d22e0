"""Adaptive strategies against independent computations.

Successive halving: each rung's survivors are exactly the best ``1/eta`` of the live trials by the
validation metric of a plain grid run, and every trial's histories (and each finalist's state)
equal that grid run's; Hyperband's trial-steps follow from its brackets. PBT: exploit copies are
bit-exact, and on a problem where a decaying learning rate wins, PBT beats the best constant
learning rate of the same population. Both resume bit-identically after a kill.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from interrupts import StopAt

import jaxtune
from jaxtune.data import Splits
from jaxtune.engine.bind import Binder
from jaxtune.engine.run import Sweep
from jaxtune.search import halving, pbt


def _regression(n_train=2000, seed=0):
    """Noisy, ill-conditioned linear regression: SGD's best constant step is beaten by decay."""
    rng = np.random.default_rng(seed)
    d = 20
    scales = np.logspace(-1, 0.5, d)
    w = rng.normal(size=d) / scales

    def make(n):
        x = (rng.normal(size=(n, d)) * scales).astype(np.float32)
        return x, (x @ w + 2.0 * rng.normal(size=n)).astype(np.float32)

    return jaxtune.Task(
        init=lambda key, hp: ({"w": jnp.zeros(d)}, {}),
        apply=lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s),
        loss=lambda out, y, hp: (out - y) ** 2,
        metrics=lambda out, y: {"mae": jnp.abs(out - y)},
        data=Splits(make(n_train), make(1000), make(1000)),
    )


TASK = _regression()
LRS = [0.003, 0.01, 0.03]
HALVING = {
    "optimizer": {"name": "sgd"},
    "train": {"steps": 90, "eval_every": 10},
    "halving": {"eta": 3.0, "min_steps": 10},
    # 0.5 diverges: it must never survive a rung.
    "sweep": {"grid": {"optimizer.learning_rate": [*LRS, 0.5], "train.batch_size": [4, 8]}},
}


def _with(cfg, **sections):
    out = {k: dict(v) for k, v in cfg.items()}
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values}
    return out


@pytest.fixture(scope="module")
def grid():
    return jaxtune.run_sweep(HALVING, task=TASK)


@pytest.fixture(scope="module")
def halved_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("halved") / "run"


@pytest.fixture(scope="module")
def halved(halved_dir):
    # Checkpoints every rung, all kept: export_trial finds stopped trials in the older ones.
    cfg = _with(HALVING, sweep={"strategy": "halving"}, checkpoint={"every": 10, "max_to_keep": 9})
    return jaxtune.run_sweep(cfg, task=TASK, out_dir=halved_dir)


def _value(result, metric, trial, step):
    col = int(np.flatnonzero(result.history["eval_step"] == step)[0])
    return float(result.history[metric][trial, col])


def test_rungs_keep_exactly_the_best_third_of_a_grid_run(grid, halved):
    assert halving.rung_steps(8, 90, 3.0, 10, 10) == [10, 30, 90]
    rungs = halved.search["rungs"]
    assert [r["step"] for r in rungs] == [10, 30]
    live = list(range(8))
    for rung in rungs:
        assert rung["trials"] == live
        step = rung["step"]
        healthy = [
            i
            for i in live
            if grid.trials[i].diverged_step is None
            and math.isfinite(_value(grid, "valid.loss", i, step))
        ]
        by_metric = sorted(healthy, key=lambda i: _value(grid, "valid.loss", i, step))
        expected = sorted(by_metric[: math.ceil(len(live) / 3)])
        assert rung["survivors"] == expected
        live = expected
    diverged = [t.id for t in grid.trials if t.diverged_step is not None]
    assert diverged and not set(diverged) & {i for r in rungs for i in r["survivors"]}
    # Stopped trials end at their rung, finalists at the end; trial-steps follow from the rungs.
    finalists = rungs[-1]["survivors"]
    for t in halved.trials:
        if t.id in finalists:
            assert t.stopped_step is None
        else:
            rung = next(r for r in rungs if t.id in r["trials"] and t.id not in r["survivors"])
            assert t.stopped_step == rung["step"] and t.stop_reason
    assert halved.timing["trial_steps"] == 8 * 10 + 3 * 20 + 1 * 60
    assert halved.timing["grid_trial_steps"] == 8 * 90
    assert halved.best().id in finalists


def test_export_trial_finds_each_trial_by_its_id_after_halving(halved, halved_dir):
    """Checkpoints after a rung hold only its survivors: a trial is found by its results id
    (not its position in the saved population), a stopped one in a checkpoint taken before it
    stopped, and equals a plain optax loop of its hyperparameters up to its last step."""
    import types

    import optax
    from reference import optax_loop

    finalist = halved.search["rungs"][-1]["survivors"][0]
    stopped = next(t for t in halved.trials if t.stopped_step == 10 and t.diverged_step is None)
    model = types.SimpleNamespace(init=lambda key: ({"w": jnp.zeros(20)}, {}))
    for trial, steps in ((halved.trials[finalist], 90), (stopped, 10)):
        hp = trial.hparams
        want, _, _ = optax_loop(
            model,
            TASK.data.train,
            optax.sgd(hp["optimizer.learning_rate"]),
            steps=steps,
            batch_size=hp["train.batch_size"],
            forward=lambda p, x: x @ p["w"],
            loss=lambda out, y: (out - y) ** 2,
        )
        got = jaxtune.export_trial(halved_dir, trial.id)["params"]
        np.testing.assert_allclose(got["w"], np.asarray(want["w"]), rtol=2e-5, atol=2e-6)
    # The result itself keeps only the finalists' states, and says where the others are.
    with pytest.raises(ValueError, match="it was stopped at step 10.*export_trial"):
        halved.trial_state(stopped.id)
    # With the checkpoints of the first rung gone, a trial stopped there is refused by name.
    import shutil

    for step in (0, 10):
        shutil.rmtree(halved_dir / "checkpoints" / str(step), ignore_errors=True)
    with pytest.raises(jaxtune.ConfigError, match=f"trial_id = {stopped.id}: no checkpoint"):
        jaxtune.export_trial(halved_dir, stopped.id)


def test_best_is_a_finalist_even_when_a_stopped_trial_scored_better_early(halved):
    import dataclasses

    stopped = next(t for t in halved.trials if t.stopped_step is not None)
    trials = [
        dataclasses.replace(t, final={**t.final, "valid.loss": -1.0}) if t is stopped else t
        for t in halved.trials
    ]
    result = dataclasses.replace(halved, trials=trials)
    assert result.best().stopped_step is None
    assert result.ranked()[0].stopped_step is None


def test_every_trial_equals_the_grid_run_up_to_where_it_stopped(grid, halved):
    for t in halved.trials:
        stop = t.stopped_step or 90
        for key in ("train.loss", "grad_norm"):
            a, b = halved.history[key][t.id, :stop], grid.history[key][t.id, :stop]
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{key} {t.id}")
            assert np.isnan(halved.history[key][t.id, stop:]).all()
        steps = halved.history["eval_step"]
        upto = steps <= stop
        np.testing.assert_allclose(
            halved.history["valid.loss"][t.id, upto],
            grid.history["valid.loss"][t.id, upto],
            rtol=1e-5,
        )
    for i in halved.search["rungs"][-1]["survivors"]:
        for a, b in zip(
            jax.tree.leaves(halved.trial_state(i)),
            jax.tree.leaves(grid.trial_state(i)),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_hyperband_brackets_start_fresh_and_spend_what_their_rungs_say(grid):
    result = jaxtune.run_sweep(_with(HALVING, sweep={"strategy": "hyperband"}), task=TASK)
    brackets = result.search["brackets"]
    assert sorted(i for b in brackets for i in b["trials"]) == list(range(8))
    spent = 0
    for b in brackets:
        live, start = list(b["trials"]), 0
        rungs = [r for r in result.search["rungs"] if r["trials"] and r["trials"][0] in live]
        for step in b["rungs"]:
            spent += (step - start) * len(live)
            rung = next((r for r in rungs if r["step"] == step), None)
            if rung is None:
                break
            live, start = rung["survivors"], step
    assert result.timing["trial_steps"] == spent < 8 * 90
    for t in result.trials:  # each bracket trains its trials from their own initial state
        stop = t.stopped_step or 90
        np.testing.assert_allclose(
            result.history["train.loss"][t.id, :stop],
            grid.history["train.loss"][t.id, :stop],
            rtol=1e-5,
            atol=1e-6,
        )


def test_halving_ranks_across_structure_groups():
    cfg = {
        "task": {"dataset": "synthetic"},
        "train": {"steps": 40, "eval_every": 10, "batch_size": 16},
        "halving": {"eta": 2.0, "min_steps": 10},
        "sweep": {
            "grid": {"optimizer.learning_rate": [0.01, 0.1, 0.5], "task.widths": [[4], [16]]}
        },
    }
    full = jaxtune.run_sweep(cfg)
    adaptive = jaxtune.run_sweep(_with(cfg, sweep={"strategy": "halving"}))
    live = list(range(6))
    for rung in adaptive.search["rungs"]:
        ranked = sorted(live, key=lambda i: -_value(full, "valid.accuracy", i, rung["step"]))
        # ties on accuracy can only be broken by id; compare the kept values
        kept = sorted(_value(full, "valid.accuracy", i, rung["step"]) for i in rung["survivors"])
        best = sorted(
            _value(full, "valid.accuracy", i, rung["step"])
            for i in ranked[: math.ceil(len(live) / 2)]
        )
        np.testing.assert_allclose(kept, best, rtol=1e-6)
        live = rung["survivors"]
    widths = {str(t.hparams["task.widths"]) for t in adaptive.trials if t.stopped_step is None}
    assert widths  # a finalist exists, from whichever group was best


def _assert_same(a, b):
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    assert a.search == b.search
    assert [(t.stopped_step, t.stop_reason) for t in a.trials] == [
        (t.stopped_step, t.stop_reason) for t in b.trials
    ]
    for t in a.trials:
        if t.stopped_step is None and t.diverged_step is None:
            for x, y in zip(
                jax.tree.leaves(a.trial_state(t.id)),
                jax.tree.leaves(b.trial_state(t.id)),
                strict=True,
            ):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    ("strategy", "cut"),
    [
        ("halving", 50),  # mid-rung
        pytest.param("hyperband", 30, marks=pytest.mark.slow),  # at a rung, first bracket
        ("pbt", 50),  # mid-interval
        pytest.param("pbt", 40, marks=pytest.mark.slow),  # at an exploit boundary
    ],
)
def test_a_killed_adaptive_sweep_resumes_bit_identically(tmp_path, strategy, cut):
    cfg = _with(
        HALVING,
        sweep={"strategy": strategy},
        checkpoint={"every": 10},
        pbt={"interval": 20},
    )
    whole = jaxtune.run_sweep(cfg, task=TASK, out_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        jaxtune.run_sweep(cfg, task=TASK, out_dir=tmp_path / "cut", callbacks=[StopAt(cut)])
    resumed = jaxtune.run_sweep(cfg, task=TASK, out_dir=tmp_path / "cut", resume=True)
    _assert_same(whole, resumed)
    assert jaxtune.SweepResult.load(tmp_path / "cut").search == whole.search
    assert resumed.timing["trial_steps"] == whole.timing["trial_steps"]


# ----------------------------------------------------------------------------------------------
# PBT.

PBT = {
    "optimizer": {"name": "sgd"},
    "train": {"steps": 1000, "eval_every": 20, "batch_size": 4},
    "pbt": {"interval": 100},
    "sweep": {"grid": {"optimizer.learning_rate": [float(v) for v in np.geomspace(3e-3, 0.1, 8)]}},
}


def _sweep(config):
    cfg = jaxtune.SweepConfig.from_dict(config)
    binder = Binder(cfg, task=TASK)
    return Sweep(cfg, binder, out_dir=None, resume=False, callbacks=(), verbose=False)


@pytest.mark.parametrize("per_call", ["auto", 3])  # on the device / between calls
def test_exploit_copies_the_whole_state_bit_for_bit_but_keeps_the_key(per_call):
    sweep = _sweep(_with(PBT, train={"steps": 40, "max_trials_per_call": per_call}))
    pop = sweep.population()
    pop.init()
    sweep.train(pop, 0, 40)
    before = pop.states()
    copies = {7: 0, 6: 2, 5: 0}
    pbt.copy_states(pop, copies)
    after = pop.states()
    for i in range(8):
        src = copies.get(i, i)
        for field in ("params", "model_state", "opt_state", "diverged", "diverged_step"):
            for x, y in zip(
                jax.tree.leaves(getattr(after[i], field)),
                jax.tree.leaves(getattr(before[src], field)),
                strict=True,
            ):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(after[i].key), np.asarray(before[i].key))
    # Explore changes hyperparameters without recompiling: the unit's arrays change in place.
    pop.set_hp({7: {"optimizer.learning_rate": 0.5}})
    (call,) = [c for c in pop.calls if pop.ids.index(7) in c.spec.positions]
    lrs = np.asarray(call.hp["optimizer.learning_rate"])
    assert lrs[call.spec.positions.index(pop.ids.index(7))] == pytest.approx(0.5)
    assert len(pop.calls) == (1 if per_call == "auto" else 3)


def test_exploit_explore_moves_the_bottom_quantile_to_the_top():
    values = {i: float(v) for i, v in enumerate([5, 1, 7, 3, math.nan, 2, 8, 4])}
    hp = {i: {"optimizer.learning_rate": 0.01 * (i + 1)} for i in range(8)}
    sweep = _sweep(_with(PBT, pbt={"quantile": 0.25, "resample_probability": 0.0}))
    copies, new_hp = pbt.exploit_explore(sweep, values, hp, 100, "min")
    assert set(copies) == {4, 6}  # NaN counts as worst, then 8
    assert set(copies.values()) <= {1, 5}  # the best two
    for dst, src in copies.items():
        ratio = new_hp[dst]["optimizer.learning_rate"] / hp[src]["optimizer.learning_rate"]
        assert ratio == pytest.approx(0.8) or ratio == pytest.approx(1.25)
    assert pbt.exploit_explore(sweep, values, hp, 100, "min") == (copies, new_hp)  # keyed
    # Always resampling draws from the search space's values.
    sweep = _sweep(_with(PBT, pbt={"quantile": 0.5, "resample_probability": 1.0}))
    copies, new_hp = pbt.exploit_explore(sweep, values, hp, 200, "min")
    assert len(copies) == 4
    grid = set(PBT["sweep"]["grid"]["optimizer.learning_rate"])
    assert all(v["optimizer.learning_rate"] in grid for v in new_hp.values())


def test_exploit_explore_moves_a_small_integer_hyperparameter():
    """``round(1 * 1.25)`` and ``round(2 * 0.8)`` give the value back: an integer perturbed
    must still move, by one in the factor's direction (and stay within its bounds)."""
    values = {i: float(i) for i in range(8)}
    hp = {i: {"hparams.k": 1 + i % 3} for i in range(8)}
    sweep = _sweep(_with(PBT, pbt={"quantile": 0.5, "resample_probability": 0.0}))
    moved = []
    for step in range(100, 1100, 100):
        copies, new_hp = pbt.exploit_explore(sweep, values, hp, step, "min")
        for dst, src in copies.items():
            old, new = hp[src]["hparams.k"], new_hp[dst]["hparams.k"]
            assert isinstance(new, int) and abs(new - old) >= 1
            moved.append((old, new))
    # Both directions occurred from each of 1, 2 and 3 across the rounds.
    assert {(o, n > o) for o, n in moved} == {(o, up) for o in (1, 2, 3) for up in (False, True)}


def test_pbt_beats_the_best_constant_learning_rate_of_the_same_population():
    constant = jaxtune.run_sweep(PBT, task=TASK)
    result = jaxtune.run_sweep(_with(PBT, sweep={"strategy": "pbt"}), task=TASK)
    best_constant = min(t.final["valid.loss"] for t in constant.trials if t.diverged_step is None)
    assert result.timing["trial_steps"] == constant.timing["trial_steps"]
    assert result.best().final["valid.loss"] < best_constant
    schedule = result.search["winning_schedule"]
    assert schedule[0]["from_step"] == 0 and len(schedule) > 1
    # The lineage replays: each copy's source ranked in the top quantile at that step.
    for event in result.search["lineage"]:
        step = event["step"]
        col = int(np.flatnonzero(result.history["eval_step"] == step)[0])
        v = result.history["valid.loss"][:, col]
        v = np.where(np.isfinite(v), v, np.inf)
        assert np.sum(v < v[event["copied"]]) < 2  # top 2 of 8 (quantile 0.25)
        assert np.sum(v > v[event["trial"]]) < 2  # bottom 2 of 8


# ----------------------------------------------------------------------------------------------
# Bad settings: one line naming the key, exit status 2.


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"halving": {"eta": 1.0}, "sweep": {"strategy": "halving"}}, "halving.eta"),
        ({"halving": {"min_steps": 15}, "sweep": {"strategy": "halving"}}, "halving.min_steps"),
        ({"pbt": {"quantile": 0.0}, "sweep": {"strategy": "pbt"}}, "pbt.quantile"),
        ({"pbt": {"quantile": 0.6}, "sweep": {"strategy": "pbt"}}, "pbt.quantile"),
        ({"pbt": {"interval": 15}, "sweep": {"strategy": "pbt"}}, "pbt.interval"),
        ({"pbt": {"resample_probability": 2.0}, "sweep": {"strategy": "pbt"}}, "pbt.resample"),
        ({"sweep": {"strategy": "asha"}}, "sweep.strategy"),
        ({"optuna": {"sampler": "bayes"}, "sweep": {"strategy": "optuna"}}, "optuna.sampler"),
    ],
)
def test_bad_strategy_settings_exit_2_naming_the_key(tmp_path, capsys, section, match):
    from jaxtune.cli import main

    cfg = _with(HALVING, **section)
    args = []
    for name, values in cfg.items():
        if name == "sweep":
            continue
        for k, v in values.items():
            args += ["--set", f"{name}.{k}={v}"]
    for k, v in cfg["sweep"].items():
        if k == "strategy":
            args += ["--set", f"sweep.strategy={v}"]
    assert main(["sweep", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_plain_sweeps_are_not_padded_and_strategy_populations_pad_to_powers_of_two():
    from jaxtune.engine import plan as plan_lib
    from jaxtune.engine.prepare import SPLITS

    cfg = jaxtune.SweepConfig.from_dict(
        _with(HALVING, sweep={"grid": {"train.seed": list(range(20))}})
    )
    binder = Binder(cfg, task=TASK)

    def info(trials, **kw):
        grouped = plan_lib.group(cfg, binder, trials, splits=SPLITS)
        (out,) = plan_lib.cut_calls(grouped, 16, 1, **kw).group_info
        return out

    everyone = [(i, {"train.seed": i}) for i in range(20)]
    first = info(everyone)
    assert (first["calls"], first["trials_per_call"], first["padding_trials"]) == (2, 10, 0)
    later = info(everyone[:5], pow2=True)
    assert (later["calls"], later["trials_per_call"], later["padding_trials"]) == (1, 8, 3)
    # A call runs in the smallest compiled size that holds it, up to twice its own size.
    signature = plan_lib.group(cfg, binder, everyone[:3], splits=SPLITS).groups[0].signature
    for compiled, size in [([8], 8), ([16], 4), ([10, 8], 8), ([], 4), ([3, 8], 3), ([2], 4)]:
        got = info(everyone[:3], pow2=True, compiled={signature: compiled})
        assert got["trials_per_call"] == size, compiled
