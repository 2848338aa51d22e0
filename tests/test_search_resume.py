"""What adaptive strategies report after a resume, and which search spaces PBT trains.

A Hyperband run resumed in a later bracket reports exactly what the uninterrupted run reports
(divergences of the earlier brackets' finalists included, so the same best trial). PBT refuses a
search space that varies a numeric structure key, naming it; over several structures, each
structure is its own population: the run equals one PBT run per structure.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from interrupts import StopAt

import jaxtune
from jaxtune.checkpoint import latest_notes
from jaxtune.data import Splits
from jaxtune.engine.bind import Binder
from jaxtune.engine.run import Sweep
from jaxtune.search import pbt

D = 8


def _data(n_train=256, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=D)

    def make(n):
        x = rng.normal(size=(n, D)).astype(np.float32)
        return x, (x @ w + 0.1 * rng.normal(size=n)).astype(np.float32)

    return Splits(make(n_train), make(128), make(128))


DATA = _data()


def _task(width=None):
    """Linear regression, or through a hidden linear layer of ``width`` units."""
    if width is None:
        init = lambda key, hp: ({"w": jnp.zeros(D)}, {})
        apply = lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s)
    else:

        def init(key, hp):
            return {"a": 0.3 * jax.random.normal(key, (D, width)), "b": jnp.zeros(width)}, {}

        def apply(p, s, x, *, train, key=None, mask=None):
            return (x @ p["a"]) @ p["b"], s

    return jaxtune.Task(
        init=init,
        apply=apply,
        loss=lambda out, y, hp: (out - y) ** 2,
        metrics=lambda out, y: {"mae": jnp.abs(out - y)},
        data=DATA,
    )


TASK = _task()


def _by_width(structure):
    (width,) = structure["task.widths"]
    return _task(width)


def _assert_reports_the_same(whole, resumed):
    for k in whole.history:
        np.testing.assert_array_equal(resumed.history[k], whole.history[k], err_msg=k)
    assert resumed.search == whole.search

    def report(r):
        return [(t.hparams, t.diverged_step, t.stopped_step, t.stop_reason) for t in r.trials]

    assert report(resumed) == report(whole)
    assert [t.id for t in resumed.ranked()] == [t.id for t in whole.ranked()]
    assert resumed.best().id == whole.best().id


# ----------------------------------------------------------------------------------------------
# Hyperband resumed in a later bracket.


def _late_divergence(hp):
    """SGD whose learning rate jumps x1e6 after step 15: every finalist diverges late."""
    lr = hp["optimizer.learning_rate"]
    return optax.sgd(lambda t: jnp.where(t < 15, lr, lr * 1e6))


HYPERBAND = {
    "train": {"steps": 30, "eval_every": 5, "batch_size": 8, "execution": "scan/vmap"},
    "halving": {"eta": 3.0, "min_steps": 10},
    "checkpoint": {"every": 5},
    "log": {"tensorboard": False, "plots": False},
    "sweep": {
        "strategy": "hyperband",
        "grid": {"optimizer.learning_rate": [0.001, 0.003, 0.01, 0.03, 0.1]},
    },
}


def test_hyperband_resumed_in_a_later_bracket_reports_the_earlier_divergences(tmp_path):
    run = dict(task=TASK, optimizer=_late_divergence)
    whole = jaxtune.run_sweep(HYPERBAND, **run)
    first, second = [b["trials"] for b in whole.search["brackets"]]
    finalists = [i for i in first if whole.trials[i].stopped_step is None]
    # What the test is about: a first-bracket finalist diverged after the last rung, and a
    # trial that stopped at a rung (never diverged) is the best.
    assert [whole.trials[i].diverged_step for i in finalists] == [19]
    assert whole.best().id in first and whole.best().stopped_step == 10
    with pytest.raises(KeyboardInterrupt):  # the 2nd chunk ending at step 10: second bracket
        jaxtune.run_sweep(HYPERBAND, out_dir=tmp_path / "cut", callbacks=[StopAt(10, nth=2)], **run)
    assert latest_notes(tmp_path / "cut" / "checkpoints")["strategy"]["live"] == second
    resumed = jaxtune.run_sweep(HYPERBAND, out_dir=tmp_path / "cut", resume=True, **run)
    _assert_reports_the_same(whole, resumed)
    saved = jaxtune.SweepResult.load(tmp_path / "cut")
    assert [t.diverged_step for t in saved.trials] == [t.diverged_step for t in whole.trials]
    assert saved.best().id == whole.best().id


# ----------------------------------------------------------------------------------------------
# PBT: numeric structure keys are refused; each structure is its own population.


def _pbt(grid, **sections):
    cfg = {
        "optimizer": {"name": "sgd"},
        "train": {"steps": 20, "eval_every": 5, "batch_size": 8, "execution": "scan/vmap"},
        "pbt": {"interval": 10, "quantile": 0.5, "resample_probability": 0.5},
        "log": {"tensorboard": False, "plots": False},
        "sweep": {"strategy": "pbt", "grid": grid},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


LRS = [0.003, 0.01, 0.03, 0.1]


def test_pbt_refuses_a_numeric_structure_key_naming_it_and_the_keys_it_perturbs(tmp_path):
    # task.dropout is the one numeric key a sweep may vary that is not an argument of the
    # compiled program.
    grid = {"optimizer.learning_rate": LRS, "task.dropout": [0.1, 0.3]}
    with pytest.raises(jaxtune.ConfigError) as err:
        jaxtune.run_sweep(_pbt(grid), task=TASK, out_dir=tmp_path / "o")
    message = str(err.value)
    assert "task.dropout varies in the search space but is a structure key" in message
    assert "optimizer.learning_rate" in message and "hparams.*" in message
    assert "train.batch_size" not in message.split(";")[0]  # never perturbed
    assert not (tmp_path / "o").exists()  # refused before anything compiled or was written


def test_pbt_over_several_structures_equals_one_pbt_per_structure():
    widths = [[4], [16]]
    together = jaxtune.run_sweep(
        _pbt({"optimizer.learning_rate": LRS, "task.widths": widths}), task=_by_width
    )
    lineage = together.search["lineage"]
    groups = [
        [t.id for t in together.trials if list(t.hparams["task.widths"]) == w] for w in widths
    ]
    assert groups == [[0, 2, 4, 6], [1, 3, 5, 7]]
    for ids in groups:  # every copy within its structure, each structure exploited
        assert any(e["trial"] in ids for e in lineage)
        assert all((e["trial"] in ids) == (e["copied"] in ids) for e in lineage)
    # The second structure (its ids interleaved with the first's) against PBT over it alone.
    ids = groups[1]
    alone = jaxtune.run_sweep(
        _pbt({"optimizer.learning_rate": LRS}, task={"widths": widths[1]}), task=_by_width
    )
    for j, i in enumerate(ids):
        assert together.trials[i].hparams["optimizer.learning_rate"] == LRS[j]
        for k in set(alone.history) - {"eval_step"}:  # per-trial rows
            np.testing.assert_array_equal(together.history[k][i], alone.history[k][j], err_msg=k)
        final = together.search["final_hparams"]
        assert final[str(i)] == alone.search["final_hparams"][str(j)]
    mine = [(e["step"], e["trial"], e["copied"], e["hp"]) for e in lineage if e["trial"] in ids]
    assert mine == [
        (e["step"], ids[e["trial"]], ids[e["copied"]], e["hp"]) for e in alone.search["lineage"]
    ]


def test_exploit_keeps_an_unset_hyperparameter_unset_and_within_its_structure():
    """``optimizer.momentum`` unset (plain SGD) or set changes the optimizer state: two
    structures; exploration never sets, unsets or copies across them."""
    cfg = jaxtune.SweepConfig.from_dict(
        _pbt(
            {"optimizer.momentum": [None, 0.9], "optimizer.learning_rate": LRS},
            pbt={"resample_probability": 1.0},
        )
    )
    sweep = Sweep(
        cfg, Binder(cfg, task=TASK), out_dir=None, resume=False, callbacks=(), verbose=False
    )
    groups = pbt.structure_groups(sweep)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    hp = {i: {k: o[k] for k in pbt._explorable(sweep)} for i, o in enumerate(sweep.overrides)}
    values = {i: float(v) for i, v in enumerate([3, 1, 4, 2, 8, 5, 7, 6])}
    copies, new_hp = pbt.exploit_explore(sweep, values, hp, 10, "min", groups)
    # Each structure: its bottom half copies its top half (by value), as if it were alone.
    assert set(copies) == {0, 2, 4, 6}
    assert {copies[0], copies[2]} <= {1, 3} and {copies[4], copies[6]} <= {5, 7}
    for group in groups:
        alone = pbt.exploit_explore(sweep, {i: values[i] for i in group}, hp, 10, "min")
        assert alone == (
            {d: s for d, s in copies.items() if d in group},
            {d: h for d, h in new_hp.items() if d in group},
        )
    for dst, h in new_hp.items():
        assert (h["optimizer.momentum"] is None) == (dst in groups[0])
        assert h["optimizer.learning_rate"] in LRS  # resampled from the grid
