"""``jaxtune bench``: AlgoPerf scoring by hand, vectorized against one sweep per trial, bad
settings, resume after an interruption.

Every bench here shares its tasks (one Task per workload and structure, through
``run_benchmark(tasks=...)``), so all runs of the module reuse the engine's compiled programs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import jaxtune
from jaxtune.bench import load_bench_config, run_benchmark, scoring
from jaxtune.bench.config import bench_config
from jaxtune.cli import main
from jaxtune.workloads import get_workload

REPO = Path(__file__).resolve().parent.parent
INF = float("inf")


# ----------------------------------------------------------------------------------------------
# Scoring against a table worked by hand.

# times[submission][workload][study][trial]: 3 submissions A, B, C; 4 workloads; 3 studies of
# 2 trials. Per study, the fastest trial; per workload, the median over studies:
#   w1: A min(10, inf)=10, min(12, 20)=12, min(inf, inf)=inf -> median 12
#       B 6, 6, 7 -> 6;  C 30, 24, 40 -> 30
#   w2: A 5, 5, 5 -> 5;  B 5, 5, 4 -> 5 (a tie with A);  C 15, 15, 14 -> 15
#   w3: A inf, 50, inf -> inf (a miss: two of three studies missed);  B 20, 22, inf -> 22;
#       C inf, inf, inf -> inf
#   w4: nobody reaches the target
TIMES = [
    [[[10, INF], [12, 20], [INF, INF]], [[5, 7], [9, 5], [5, INF]],
     [[INF, INF], [INF, 50], [INF, INF]], [[INF, INF]] * 3],
    [[[6, 8], [INF, 6], [9, 7]], [[INF, 5], [5, 6], [4, INF]],
     [[20, INF], [22, 30], [INF, INF]], [[INF, INF]] * 3],
    [[[30, INF], [24, 25], [INF, 40]], [[15, 16], [17, 15], [INF, 14]],
     [[INF, INF]] * 3, [[INF, INF]] * 3],
]  # fmt: skip


def test_scores_match_a_table_worked_by_hand():
    s = scoring.score(np.array(TIMES, dtype=float))
    assert s.t.tolist() == [[12, 5, INF, INF], [6, 5, 22, INF], [30, 15, INF, INF]]
    # Ratios to the fastest per workload; C's 30 / 6 = 5 > r_max = 4 counts as infinite.
    assert s.r.tolist() == [[2, 1, INF, INF], [1, 1, 1, INF], [INF, 3, INF, INF]]
    # rho(tau) over 4 workloads: A 1/4 below tau = 2, 2/4 from 2 on; B 3/4 everywhere;
    # C 0 below 3, 1/4 from 3 on.
    taus = np.linspace(1, 4, 100)  # AlgoPerf's grid: tau_k = 1 + k / 33
    assert np.array_equal(s.taus, taus)
    assert s.rho[0].tolist() == [0.25] * 33 + [0.5] * 67
    assert s.rho[1].tolist() == [0.75] * 100
    assert s.rho[2].tolist() == [0.0] * 66 + [0.25] * 34
    # Trapezoids of width h = 1/33 over [1, 4], divided by 3. A step of 1 at grid point k > 0
    # integrates to (99 - k + 1/2) h: at tau = 2 (k = 33) 66.5 / 33, at tau = 3 (k = 66)
    # 33.5 / 33.
    # A: 0.25 * 3 + 0.25 * 66.5 / 33 = 0.75 + 0.50379 = 1.25379; / 3 = 0.41793
    #    (the exact integral of the step function would give 1.25 / 3 = 0.41667)
    # B: 0.75 * 3 / 3 = 0.75
    # C: 0.25 * 33.5 / 33 = 0.25379; / 3 = 0.08460
    assert s.score == pytest.approx([0.4179292929, 0.75, 0.0845959596], abs=1e-10)


def test_ratio_at_exactly_r_max_counts_and_nan_is_a_miss():
    r = scoring.performance_ratios([[1.0, 2.0], [4.0, np.nan], [4.000001, 8.0]])
    assert r.tolist() == [[1.0, 1.0], [4.0, INF], [INF, 4.0]]


# ----------------------------------------------------------------------------------------------
# Small benchmarks: diabetes twice (the built-in workload, and the same factory as a user
# workload with another metric and target), two submissions (Adam in two learning-rate
# ranges), 2 studies x 3 trials.

LR = "optimizer.learning_rate"
DOC = {
    "checkpoint": {"every": 0},
    # A fixed form and call size: no per-sweep probing (it is not part of the results).
    "train": {"execution": "scan/vmap", "max_trials_per_call": 4},
    "bench": {
        "studies": 2,
        "trials": 3,
        "workloads": [
            {"name": "diabetes", "steps": 100, "eval_every": 20},
            {
                "name": "narrow",
                "factory": "jaxtune.workloads.tabular:diabetes_mlp",
                "metric": "valid.mse",
                "target": 0.6,
                "steps": 100,
                "eval_every": 20,
                "batch_size": 32,
            },
        ],
        "submissions": {
            "adam": {
                "optimizer": "adam",
                "space": {LR: {"distribution": "log_uniform", "low": 3e-3, "high": 3e-2}},
            },
            "slow": {
                "optimizer": "adam",
                "set": {"optimizer.weight_decay": 0.0},
                "space": {LR: {"distribution": "log_uniform", "low": 1e-3, "high": 1e-2}},
            },
        },
    },
}


@pytest.fixture(scope="module")
def tasks():
    w = get_workload("diabetes")
    built = {}

    def task(structure):  # both workloads are the same diabetes task: one compiled program
        key = json.dumps({k: v for k, v in structure.items() if k.startswith("task.")})
        if key not in built:
            built[key] = w.task(structure)
        return built[key]

    return {"diabetes": task, "narrow": task}


@pytest.fixture(scope="module")
def vectorized(tmp_path_factory, tasks):
    out = tmp_path_factory.mktemp("vectorized")
    return run_benchmark(DOC, out_dir=out, tasks=tasks)


def test_time_is_steps_times_the_measured_step_time(vectorized):
    r = vectorized
    assert r.steps.shape == (2, 2, 2, 3)
    assert np.isfinite(r.steps).any() and np.isinf(r.steps).any()  # hits and misses
    per_step = r.record["step_times"]
    for a, sub in enumerate(("adam", "slow")):
        for b, wl in enumerate(("diabetes", "narrow")):
            rec = per_step[sub][wl]
            assert rec["seconds_per_step"] == min(rec["run_s"]) / 100 == r.seconds_per_step[a, b]
            for j in range(2):
                for t in r.record["studies"][sub][wl][str(j)]["trials"]:
                    if t["target_step"] is None:
                        assert t["time_to_target"] is None
                    else:
                        assert t["time_to_target"] == t["target_step"] * rec["seconds_per_step"]
    assert np.array_equal(r.scores["time"].score, scoring.score(r.times).score)


def test_steps_to_target_from_the_study_histories(vectorized):
    """The recorded steps are the first evaluation reaching the target, read off each study's
    own history."""
    out = vectorized.out_dir
    for b, (metric, target) in enumerate((("valid.loss", 0.5), ("valid.mse", 0.6))):
        wl = ("diabetes", "narrow")[b]
        for j in range(2):
            h = np.load(out / "adam" / wl / f"study-{j}" / "history.npz")
            for i in range(3):
                hit = np.flatnonzero(h[metric][i] <= target)
                expected = h["eval_step"][hit[0]] if hit.size else INF
                assert vectorized.steps[0, b, j, i] == expected


def test_study_points_and_seeds_differ(vectorized):
    studies = vectorized.record["studies"]["adam"]["diabetes"]
    lrs = [[t["hparams"][LR] for t in studies[str(j)]["trials"]] for j in range(2)]
    assert set(lrs[0]).isdisjoint(lrs[1])
    assert [studies[str(j)]["sweep_seed"] for j in range(2)] == [0, 1]
    assert [studies[str(j)]["train_seed"] for j in range(2)] == [0, 1]
    assert all(3e-3 <= lr <= 3e-2 for row in lrs for lr in row)


def test_one_sweep_per_trial_gives_the_same_steps(vectorized, tasks, tmp_path):
    solo = run_benchmark(DOC, out_dir=tmp_path, tasks=tasks, vectorize=False)
    assert np.array_equal(solo.steps, vectorized.steps)
    for sub in ("adam", "slow"):
        for wl in ("diabetes", "narrow"):
            for j in ("0", "1"):
                a = solo.record["studies"][sub][wl][j]
                b = vectorized.record["studies"][sub][wl][j]
                assert [t["hparams"] for t in a["trials"]] == [t["hparams"] for t in b["trials"]]
                assert not a["vectorized"] and b["vectorized"]
    assert (tmp_path / "slow" / "narrow" / "study-1" / "trial-002" / "results.json").is_file()
    assert np.array_equal(solo.scores["steps"].score, vectorized.scores["steps"].score)


def test_outputs(vectorized):
    out = vectorized.out_dir
    assert (out / "plots" / "profiles.png").stat().st_size > 10_000
    md = (out / "bench.md").read_text()
    assert md == vectorized.summary
    assert "## diabetes: valid.loss <= 0.5 within 100 steps" in md
    assert "## narrow: valid.mse <= 0.6 within 100 steps" in md
    blob = json.loads((out / "bench.json").read_text())
    assert blob["status"] == "done"
    assert blob["scores"]["steps"]["score"]["adam"] == vectorized.scores["steps"].score[0]
    assert len(blob["scores"]["taus"]) == 100


# ----------------------------------------------------------------------------------------------
# Resume.


class _StopInSecondStudy(jaxtune.SweepCallback):
    def __init__(self):
        self.starts = 0

    def on_start(self, info):
        self.starts += 1

    def on_chunk(self, start, stop, history):
        if self.starts == 2 and stop == 60:
            raise KeyboardInterrupt


class _StartSteps(jaxtune.SweepCallback):
    def __init__(self):
        self.steps = []

    def on_start(self, info):
        self.steps.append(info["start_step"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_after_an_interruption_gives_the_same_scores(vectorized, tasks, tmp_path):
    doc = {**DOC, "checkpoint": {"every": 40}}  # where and how often it checkpoints: not hashed
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(doc, out_dir=tmp_path, tasks=tasks, callbacks=[_StopInSecondStudy()])
    before = json.loads((tmp_path / "bench.json").read_text())
    assert list(before["studies"]["adam"]["diabetes"]) == ["0"]
    with pytest.raises(jaxtune.ConfigError, match="already holds a benchmark"):
        run_benchmark(doc, out_dir=tmp_path, tasks=tasks)
    starts = _StartSteps()
    resumed = run_benchmark(doc, out_dir=tmp_path, tasks=tasks, resume=True, callbacks=[starts])
    # Study 0 was not rerun; study 1 resumed from the checkpoint written as it stopped (at
    # step 60, or 80 when the chunk dispatched ahead had run); 6 more studies ran.
    assert starts.steps[0] in (60, 80) and starts.steps[1:] == [0] * 6
    after = resumed.record
    assert after["studies"]["adam"]["diabetes"]["0"] == before["studies"]["adam"]["diabetes"]["0"]
    assert after["step_times"]["adam"]["diabetes"] == before["step_times"]["adam"]["diabetes"]
    assert np.array_equal(resumed.steps, vectorized.steps)
    assert np.array_equal(resumed.scores["steps"].score, vectorized.scores["steps"].score)
    assert np.array_equal(resumed.scores["time"].score, scoring.score(resumed.times).score)


def test_cli_resume_of_a_finished_benchmark_reprints_it(vectorized, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(vectorized.out_dir, out)
    (out / "bench.md").unlink()
    assert main(["bench", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert vectorized.summary in printed
    assert (out / "bench.md").read_text() == vectorized.summary
    code = main(["bench", "--out", str(out), "--resume", "--set", "bench.trials=4"])
    assert code == 2
    assert "differs from the stored one in bench.trials" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bad settings: exit status 2, one line naming the key.


def _bench(**changes):
    table = {**DOC["bench"], **changes}
    return {"bench": table}


BAD = {
    "no target": (
        _bench(workloads=[{"name": "mine", "factory": "m:f", "metric": "valid.loss", "steps": 9}]),
        "bench.workloads.mine.target is needed",
    ),
    "unknown workload": (_bench(workloads=["diabetes", "mnist"]), "unknown workload 'mnist'"),
    "studies < 1": (_bench(studies=0), "bench.studies = 0 is invalid"),
    "trials < 1": (_bench(trials=-1), "bench.trials = -1 is invalid"),
    "unknown optimizer": (
        _bench(submissions={"x": {"optimizer": "lamb", "space": {}}}),
        "bench.submissions.x.optimizer = 'lamb' is invalid: expected one of 'sgd'",
    ),
    "no space": (
        _bench(submissions={"x": {"optimizer": "adam"}}),
        "bench.submissions.x.space is needed",
    ),
    "both optimizer and factory": (
        _bench(submissions={"x": {"optimizer": "adam", "factory": "m:f", "space": {LR: [0.1]}}}),
        "bench.submissions.x needs exactly one of optimizer",
    ),
    "bad space key": (
        _bench(submissions={"x": {"optimizer": "adam", "space": {"optimizer.lr": [0.1]}}}),
        "bench.submissions.x on workload diabetes: unknown key in sweep.space: 'optimizer.lr'",
    ),
    "unknown bench key": ({"bench": {**DOC["bench"], "trails": 3}}, "unknown bench key"),
    "no workloads": ({"bench": {"submissions": DOC["bench"]["submissions"]}}, "bench.workloads"),
    "a sweep table": ({**_bench(), "sweep": {"method": "grid"}}, "[sweep] is invalid"),
    # A submission may not move the budget or target its numbers are reported against.
    "a submission's own budget": (
        _bench(
            submissions={
                "x": {"optimizer": "adam", "space": {LR: [0.1]}, "set": {"train.steps": 5}}
            }
        ),
        "bench.submissions.x.set['train.steps'] is invalid: the workload owns it",
    ),
    "a submission's own target": (
        _bench(
            submissions={
                "x": {"optimizer": "adam", "space": {LR: [0.1]}, "set": {"select.target": 0.1}}
            }
        ),
        "bench.submissions.x.set['select.target'] is invalid: the workload owns it",
    ),
    "a workload's steps through set": (
        _bench(workloads=[{"name": "diabetes", "set": {"train.steps": 5}}]),
        "bench.workloads.diabetes.set['train.steps'] is invalid: it is the workload's 'steps'",
    ),
    "a seed through set": (
        _bench(workloads=[{"name": "diabetes", "set": {"train.seed": 7}}]),
        "the benchmark seeds every study itself",
    ),
    "a workload entry that is no table": (
        _bench(workloads={"diabetes": 5}),
        "bench.workloads.diabetes = 5 is invalid: expected a table",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_settings_exit_2_naming_the_key(case, tmp_path, capsys):
    from jaxtune.config import to_toml

    doc, message = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(doc))
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxtune: error: "), err
    assert message in err, err
    assert not (tmp_path / "out" / "bench.json").exists()


def test_an_unknown_factory_and_metric_fail_before_training(tasks, tmp_path):
    doc = _bench(submissions={"x": {"factory": "nowhere:chain", "space": {LR: [0.1]}}})
    with pytest.raises(jaxtune.ConfigError, match="bench.submissions.x.factory"):
        run_benchmark(doc, out_dir=tmp_path, tasks=tasks)
    wl = {**DOC["bench"]["workloads"][1], "metric": "valid.accuracy"}
    with pytest.raises(jaxtune.ConfigError, match="bench.workloads.narrow.metric"):
        run_benchmark(_bench(workloads=[wl]), out_dir=tmp_path, tasks={"narrow": tasks["narrow"]})
    assert not (tmp_path / "bench.json").exists()


def test_the_example_validates():
    cfg = load_bench_config(REPO / "examples" / "bench.toml")
    assert [s.name for s in cfg.submissions] == ["momentum", "adam", "adamw", "lion"]
    assert cfg.submissions[3].factory == "bench_optimizers:clipped_lion"
    assert {w.name: w.steps for w in cfg.workloads} == {
        "digits_mlp": 150,
        "diabetes": 400,
        "digits_cnn": 200,
    }
    assert bench_config(cfg.to_dict()) == cfg


def test_cli_gives_every_study_tensorboard_runs_unless_log_tensorboard_is_off(
    tmp_path, monkeypatch
):
    """``jaxtune bench`` passes one TensorBoard logger to the studies' sweeps (each writes
    into its own study folder, tests/test_report_callbacks.py) when ``log.tensorboard`` is
    on, as ``jaxtune sweep`` does, and none when it is off."""
    import jaxtune.bench.runner as runner
    from jaxtune.config import to_toml
    from jaxtune.report import TensorBoardLogger

    seen = []

    def fake(cfg, **kw):
        seen.append([type(c) for c in kw["callbacks"]])
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_benchmark", fake)
    for i, on in enumerate((True, False)):
        path = tmp_path / f"b{i}.toml"
        path.write_text(to_toml({**DOC, "log": {"tensorboard": on}}))
        assert main(["bench", str(path), "--out", str(tmp_path / f"out{i}")]) == 130
    assert seen == [[TensorBoardLogger], []]
