"""``sweep.strategy = "optuna"``: Optuna receives exactly what the engine measured.

Each round's proposals train as one vectorized group; the study (SQLite in the run folder) holds
each trial's final validation metric and its evaluations, diverged trials as pruned; a trial's
numbers equal a plain sweep of the same point; a killed study resumes to the same result, whichever
round it was killed in.
"""

import math
import sys

import numpy as np
import pytest
from interrupts import StopAt
from test_search import TASK

import jaxtune
from jaxtune.checkpoint import latest_notes

optuna = pytest.importorskip("optuna")

CFG = {
    "optimizer": {"name": "sgd"},
    "train": {"steps": 60, "eval_every": 20, "batch_size": 8},
    "checkpoint": {"every": 20},
    "optuna": {"batch_size": 4, "rounds": 3},
    "sweep": {
        "strategy": "optuna",
        "method": "quasi_random",
        "space": {
            "optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1.0}
        },
    },
}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("optuna") / "run"
    return out, jaxtune.run_sweep(CFG, task=TASK, out_dir=out)


def _load(out):
    return optuna.load_study(study_name="jaxtune", storage=f"sqlite:///{out / 'optuna.db'}")


def test_the_study_holds_exactly_what_the_engine_measured(study_run):
    out, result = study_run
    study = _load(out)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # valid.loss
    assert len(study.trials) == len(result.trials) == 12
    h = result.history
    states = set()
    for t, frozen in zip(result.trials, study.trials, strict=True):
        assert frozen.number == t.id
        assert frozen.params["optimizer.learning_rate"] == t.hparams["optimizer.learning_rate"]
        curve = h["valid.loss"][t.id]
        pairs = zip(h["eval_step"], curve, strict=True)
        reported = {int(s): float(v) for s, v in pairs if math.isfinite(v)}
        assert frozen.intermediate_values == reported
        if t.diverged_step is not None:
            assert frozen.state == optuna.trial.TrialState.PRUNED
            assert frozen.user_attrs["diverged_step"] == t.diverged_step
        else:
            assert frozen.state == optuna.trial.TrialState.COMPLETE
            assert frozen.value == t.final["valid.loss"]
        states.add(frozen.state)
    assert optuna.trial.TrialState.COMPLETE in states
    best = study.best_trial
    assert best.number == result.best().id


def test_a_round_equals_a_plain_sweep_of_the_same_points(study_run):
    _, result = study_run
    points = [t.hparams for t in result.trials[4:8]]
    plain = jaxtune.run_sweep(
        {
            **{k: v for k, v in CFG.items() if k not in ("sweep", "optuna", "checkpoint")},
            "sweep": {"method": "list", "trials": points},
        },
        task=TASK,
    )
    for a, b in zip(result.trials[4:8], plain.trials, strict=True):
        assert a.diverged_step == b.diverged_step
        np.testing.assert_allclose(a.final["valid.loss"], b.final["valid.loss"], rtol=1e-5)


def test_proposals_follow_the_told_results(study_run):
    """Later rounds are model-based: TPE's seeded proposals depend on what it was told."""
    _, result = study_run
    later = [t.hparams["optimizer.learning_rate"] for t in result.trials[4:]]
    assert all(1e-3 <= lr <= 1.0 for lr in later)
    assert len(set(later)) == len(later)  # the constant liar keeps a batch apart


def test_a_killed_study_resumes_to_the_same_result(tmp_path, study_run):
    _, whole = study_run
    with pytest.raises(KeyboardInterrupt):
        jaxtune.run_sweep(CFG, task=TASK, out_dir=tmp_path / "cut", callbacks=[StopAt(40)])
    # Killed in round 0; round 1 is asked only after round 0 is told.
    assert len(_load(tmp_path / "cut").trials) == 4
    resumed = jaxtune.run_sweep(CFG, task=TASK, out_dir=tmp_path / "cut", resume=True)
    for k in whole.history:
        np.testing.assert_array_equal(resumed.history[k], whole.history[k], err_msg=k)
    assert resumed.search["told"] == whole.search["told"]
    assert [t.hparams for t in resumed.trials] == [t.hparams for t in whole.trials]


def test_a_study_killed_in_a_later_round_reports_the_earlier_rounds_as_trained(tmp_path, study_run):
    """Resumed in round 2, the trials of rounds 0 and 1 are reported with the points the study
    proposed and the steps they diverged at, exactly as by the uninterrupted run."""
    out, whole = study_run
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):  # the 3rd chunk ending at step 40: round 2
        jaxtune.run_sweep(CFG, task=TASK, out_dir=cut, callbacks=[StopAt(40, nth=3)])
    assert latest_notes(cut / "checkpoints")["strategy"]["round"] == 2
    # What the test is about: a trial of round 1 diverged.
    assert any(t.diverged_step is not None for t in whole.trials[4:8])
    resumed = jaxtune.run_sweep(CFG, task=TASK, out_dir=cut, resume=True)
    for k in whole.history:
        np.testing.assert_array_equal(resumed.history[k], whole.history[k], err_msg=k)
    assert resumed.search["told"] == whole.search["told"]
    for a, b in (
        (resumed, whole),
        (jaxtune.SweepResult.load(cut), jaxtune.SweepResult.load(out)),
    ):
        assert [(t.hparams, t.diverged_step) for t in a.trials] == [
            (t.hparams, t.diverged_step) for t in b.trials
        ]
        assert [t.id for t in a.ranked()] == [t.id for t in b.ranked()]
        assert a.best().id == b.best().id


@pytest.mark.parametrize(
    "sampler",
    [
        "qmc",
        pytest.param("tpe", marks=pytest.mark.slow),  # TPE is the study fixture's sampler
        pytest.param("cmaes", marks=pytest.mark.slow),
        pytest.param("random", marks=pytest.mark.slow),
        pytest.param("gp", marks=pytest.mark.slow),
    ],
)
def test_each_sampler_proposes_in_the_space(sampler):
    if sampler == "gp":
        pytest.importorskip("torch")
    cfg = {
        "task": {"dataset": "synthetic"},
        "train": {"steps": 20, "eval_every": 10, "batch_size": 16},
        "optuna": {"batch_size": 3, "rounds": 2, "sampler": sampler},
        "sweep": {
            "strategy": "optuna",
            "method": "random",
            "space": {
                "optimizer.learning_rate": {"distribution": "log_uniform", "low": 0.01, "high": 1},
                "optimizer.momentum": {"distribution": "uniform", "low": 0.0, "high": 0.9},
                "task.widths": {"choice": [[8], [16, 8]]},
            },
        },
    }
    result = jaxtune.run_sweep(cfg)
    assert len(result.trials) == 6 and result.selection.metric == "valid.accuracy"
    for t in result.trials:
        assert 0.01 <= t.hparams["optimizer.learning_rate"] <= 1.0
        assert t.hparams["task.widths"] in ((8,), (16, 8))
    assert {r["state"] for r in result.search["told"]} <= {"complete", "pruned"}


def test_without_optuna_the_strategy_exits_2_with_the_pip_command(monkeypatch, tmp_path, capsys):
    from jaxtune.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    config = tmp_path / "c.toml"
    config.write_text(jaxtune.config.to_toml(CFG))
    assert main(["sweep", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "jaxtune[optuna]"' in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sweep": {**CFG["sweep"], "num_trials": 5}}, "sweep.num_trials"),
        ({"sweep": {**CFG["sweep"], "seeds": 2}}, "sweep.seeds"),
        ({"sweep": {"strategy": "optuna", "grid": {"optimizer.learning_rate": [0.1]}}}, "space"),
        ({"optuna": {"batch_size": 0}}, "optuna.batch_size"),
    ],
)
def test_bad_optuna_settings_name_the_key(change, match):
    with pytest.raises(jaxtune.ConfigError, match=match):
        jaxtune.SweepConfig.from_dict({**CFG, **change})
