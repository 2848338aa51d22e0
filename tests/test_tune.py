"""``jaxtune tune``: each stage's choice against an independent computation from its results.

The main fixture runs every stage on the user task of ``examples/custom_task.toml`` (a residual
Flax MLP on the diabetes data, a Huber loss, a user optax chain; chosen on ``valid.mse``) with a
tiny budget. The other runs reuse its task functions, so their programs come from the compile
cache.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from jaxtune import registry
from jaxtune.cli import main
from jaxtune.engine import SweepCallback, SweepResult
from jaxtune.search import tune_stages as tune_mod
from jaxtune.search.tune import lr_band, run_tune, t_interval
from jaxtune.search.tune_config import TUNE_KEYS, load_tune_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CUSTOM = str(EXAMPLES / "custom_task.toml")

TINY = [
    "task.widths=[8]",
    "train.steps=20",
    "train.eval_every=10",
    "checkpoint.every=10",
    "log.tensorboard=false",
    "log.plots=false",
    "tune.lr_range.steps=10",
    "tune.lr_range.num_lrs=5",
    "tune.lr_range.min_lr=1e-4",
    "tune.lr_range.max_lr=1.0",
    "tune.lr_batch.num_trials=3",
    "tune.lr_batch.batch_sizes=[16, 32]",
    "tune.seeds.count=3",
]


@pytest.fixture(scope="module")
def user_task():
    cfg, _ = load_tune_config(CUSTOM, TINY)
    make_task = registry.import_factory("custom_task:make_task", "task.factory", search=[EXAMPLES])
    make_opt = registry.import_factory("custom_task:make_optimizer", "x", search=[EXAMPLES])
    return make_task(dict(cfg.base)), make_opt


def _tune(out, task, optimizer, **kw):
    cfg, settings = load_tune_config(CUSTOM, TINY)
    return run_tune(cfg, settings, out_dir=out, task=task, optimizer=optimizer, **kw)


@pytest.fixture(scope="module")
def tuned(user_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    return _tune(out, *user_task)


def _results(out, folder):
    return json.loads((out / folder / "results.json").read_text())


def test_stage1_band_is_the_rule_applied_by_hand_to_the_range_test(tuned):
    out, rec = tuned.out_dir, tuned.stages["lr_range"]
    blob = _results(out, "stage1-lr-range")
    with np.load(out / "stage1-lr-range" / "history.npz") as z:
        loss = z["train.loss"].astype(np.float64)
    lrs = [t["hparams"]["optimizer.learning_rate"] for t in blob["trials"]]
    assert lrs == sorted(lrs) and len(lrs) == 5
    tail = loss[:, -max(1, loss.shape[1] // 5) :]
    final = [
        float(np.mean(row)) if np.all(np.isfinite(row)) and not t["diverged"] else math.inf
        for row, t in zip(tail, blob["trials"], strict=True)
    ]
    initial = float(np.median(loss[:, 0]))
    b = min(range(5), key=lambda i: final[i])
    limit = final[b] + 0.1 * (initial - final[b])
    i = j = b
    while i > 0 and final[i - 1] <= limit:
        i -= 1
    while j < 4 and final[j + 1] <= limit:
        j += 1
    if i < j:
        expect = (lrs[i], lrs[j])
    else:
        lower = lrs[b - 1] if b > 0 else lrs[b] ** 2 / lrs[b + 1]
        upper = lrs[b + 1] if b < 4 else lrs[b] ** 2 / lrs[b - 1]
        expect = (math.sqrt(lower * lrs[b]), math.sqrt(lrs[b] * upper))
    np.testing.assert_allclose(rec["band"], expect, rtol=1e-12)
    np.testing.assert_allclose(rec["initial_loss"], initial, rtol=1e-6)


def test_lr_band_rules():
    lrs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    losses = [2.0, 1.0, 0.2, 0.25, math.inf]
    assert lr_band(lrs, losses, 2.5) == (0.1, 1.0, 0.1)
    assert lr_band(lrs, losses, 2.5, within=0.5) == (1e-2, 1.0, 0.1)
    np.testing.assert_allclose(lr_band(lrs, losses, 2.5, rule="around"), (0.1 / 3, 0.3, 0.1))
    edge = lr_band(lrs, [5, 4, 3, 2, 1], 6.0, within=0.01)
    np.testing.assert_allclose(edge, (10**0.5, 10**1.5, 10.0))
    with pytest.raises(ValueError):
        lr_band(lrs, [math.nan] * 5, 1.0)


def test_stage2_chooses_the_best_trial_trained_to_the_end_on_validation(tuned):
    blob = _results(tuned.out_dir, "stage2-lr-batch")
    assert blob["select"]["metric"] == "valid.mse" and blob["search"]["strategy"] == "halving"
    lo, hi = tuned.stages["lr_range"]["band"]
    full = [t for t in blob["trials"] if t["stopped_step"] is None and not t["diverged"]]
    assert len(full) < len(blob["trials"])  # halving stopped some
    for t in blob["trials"]:
        assert lo <= t["hparams"]["optimizer.learning_rate"] <= hi
        assert t["hparams"]["train.batch_size"] in (16, 32)
    best = min(full, key=lambda t: t["final"]["valid.mse"])
    assert tuned.stages["lr_batch"]["set"] == {
        "optimizer.learning_rate": best["hparams"]["optimizer.learning_rate"],
        "train.batch_size": best["hparams"]["train.batch_size"],
    }


def test_stage3_varies_the_configs_own_keys_around_the_incumbent(tuned):
    blob = _results(tuned.out_dir, "stage3-refine")
    hp = [t["hparams"] for t in blob["trials"]]
    # A user optimizer chain: no schedule / clip / weight decay; the config's own sweep.grid
    # keys other than the learning rate, with the incumbent's values first.
    assert set(hp[0]) == {"hparams.huber_delta", "hparams.beta2"}
    assert hp[0] == {"hparams.huber_delta": 1.0, "hparams.beta2": 0.999}
    assert len(hp) == 3 * 2
    base = json.loads((tuned.out_dir / "stage3-refine" / "results.json").read_text())["config"]
    assert base["optimizer"]["learning_rate"] == tuned.chosen["optimizer.learning_rate"]
    best = min(blob["trials"], key=lambda t: (t["final"]["valid.mse"], t["id"]))
    assert tuned.stages["refine"]["set"] == best["hparams"]
    for key, value in best["hparams"].items():
        assert tuned.chosen[key] == value


def test_stage4_interval_is_scipys_t_interval_of_the_per_seed_validation_values(tuned):
    result = SweepResult.load(tuned.out_dir / "stage4-seeds")
    rec = tuned.stages["seeds"]
    valid = np.array([t.final["valid.mse"] for t in result.trials])
    seeds = [t.hparams["train.seed"] for t in result.trials]
    assert seeds == [1, 2, 3]  # fresh seeds: the choices were made with seed 0
    low, high = stats.t.interval(0.95, len(valid) - 1, loc=valid.mean(), scale=stats.sem(valid))
    np.testing.assert_allclose(rec["interval"], [valid.mean(), low, high], rtol=1e-10)
    np.testing.assert_allclose(t_interval(valid), [valid.mean(), low, high], rtol=1e-10)
    for key, value in tuned.chosen.items():
        assert result.config.base[key] == pytest.approx(value)
    test = np.array([t.final["test.mse"] for t in result.trials])
    np.testing.assert_allclose(rec["test"], test, rtol=1e-6)


def test_summary_says_what_each_stage_chose_and_reports_test_once(tuned):
    text = (tuned.out_dir / "summary.md").read_text()
    assert text == tuned.summary
    for stage in ("lr_range", "lr_batch", "refine", "seeds"):
        assert tuned.stages[stage]["chosen"] in text and tuned.stages[stage]["why"] in text
    assert "**valid.mse** (min)" in text
    head, tail = text.split("## Test split")
    assert "test." not in head and "test.mse" in tail
    state = json.loads((tuned.out_dir / "tune.json").read_text())
    assert all(state["stages"][s]["status"] == "done" for s in state["stages"])


def test_an_adversarial_test_split_changes_no_choice(user_task, tuned, tmp_path):
    task, optimizer = user_task
    x, y = task.data.test
    bad = task._replace(data=task.data._replace(test=(x, -5.0 * y + 3.0)))
    adv = _tune(tmp_path, bad, optimizer)
    assert adv.chosen == tuned.chosen
    for stage in ("lr_range", "lr_batch", "refine"):
        a, b = dict(adv.stages[stage]), dict(tuned.stages[stage])
        a.pop("wall_s"), b.pop("wall_s")
        assert a == b
    assert adv.stages["seeds"]["valid"] == tuned.stages["seeds"]["valid"]
    assert adv.stages["seeds"]["test"] != tuned.stages["seeds"]["test"]


class _StopIn(SweepCallback):
    def __init__(self, at):
        self.at = at

    def on_chunk(self, start, stop, history):
        if stop >= self.at:
            raise KeyboardInterrupt


def test_resume_skips_finished_stages_and_gives_the_same_summary(
    user_task, tuned, tmp_path, monkeypatch
):
    task, optimizer = user_task
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path, task, optimizer, callbacks=lambda s: [_StopIn(10)] if s == "refine" else [])
    state = json.loads((tmp_path / "tune.json").read_text())
    assert state["stages"]["refine"]["status"] == "running" and "seeds" not in state["stages"]
    assert any((tmp_path / "stage3-refine" / "checkpoints").iterdir())

    calls = []
    real = tune_mod.run_sweep

    def spy(cfg, **kw):
        calls.append((Path(kw["out_dir"]).name, kw["resume"]))
        return real(cfg, **kw)

    monkeypatch.setattr(tune_mod, "run_sweep", spy)
    monkeypatch.setattr("jaxtune.diagnostics.lr_sweep_test", None)  # stage 1 must not run
    with pytest.raises(Exception, match="already holds a tune run"):
        _tune(tmp_path, task, optimizer)
    resumed = _tune(tmp_path, task, optimizer, resume=True)
    assert calls == [("stage3-refine", True), ("stage4-seeds", False)]
    assert resumed.summary == tuned.summary
    assert (tmp_path / "summary.md").read_text() == tuned.summary


@pytest.mark.parametrize(
    "setting, key",
    [
        ("tune.seeds.count=1", "tune.seeds.count"),
        ('tune.lr_range.band="middle"', "tune.lr_range.band"),
        ("tune.lr_range.stepz=5", "tune.lr_range.steps"),
        ("tune.lr_range.min_lr=20", "tune.lr_range.min_lr"),
        ("tune.lr_batch.batch_sizes=[0]", "tune.lr_batch.batch_sizes"),
        ("tune.lr_batch.batch_sizes=[]", "tune.lr_batch.batch_sizes = [] is invalid"),
        ("tune.lr_batch.eta=1", "tune.lr_batch.eta"),
        ('tune.stages=["seeds", "lr_range"]', "tune.stages"),
        ('tune.refine.schedules=["cosine"]', "tune.refine.schedules"),
        ('tune.refine.grid={"train.seed" = [1, 2]}', "tune.refine.grid"),
        ("tune.lr_batch.band=[0.1, 1.0]", "tune.lr_batch.band"),
        ("tune.lr_batch.min_steps=15", "tune.lr_batch.min_steps"),
    ],
)
def test_bad_tune_settings_exit_2_with_one_line_naming_the_key(setting, key, tmp_path, capsys):
    rc = main(["tune", CUSTOM, "--out", str(tmp_path / "o"), "--set", setting])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and key in err, err
    assert not (tmp_path / "o").exists()


def test_bad_default_config_settings_name_the_key(tmp_path, capsys):
    (tmp_path / "t.toml").write_text('[tune.refine]\nschedules = ["linear"]\n')
    assert main(["tune", str(tmp_path / "t.toml")]) == 2
    err = capsys.readouterr().err
    assert "tune.refine.schedules" in err and "'cosine'" in err
    assert set(TUNE_KEYS) >= {"tune.stages", "tune.seeds.count", "tune.refine.grid"}


def test_cli_imports_the_user_task_and_resumes_from_tune_json(tmp_path, capsys):
    # Stage 3 with nothing to vary trains nothing: the command's plumbing without a compile.
    out = tmp_path / "run"
    argv = ["tune", CUSTOM, "--out", str(out), "--set", 'tune.stages=["refine"]']
    assert main([*argv, "--set", "tune.refine.grid={}"]) == 0
    printed = capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert summary in printed and "nothing to compare" in summary
    state = json.loads((out / "tune.json").read_text())
    assert state["search_path"] == [str(EXAMPLES)]
    assert main(["tune", "--out", str(out), "--resume"]) == 0  # the config from tune.json
    assert summary in capsys.readouterr().out
    assert main(["tune", CUSTOM, "--out", str(out), "--resume"]) == 2  # its grid differs
    assert "tune.refine.grid" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_the_user_task_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["tune", CUSTOM, "--out", str(out), *(a for s in TINY for a in ("--set", s))]) == 0
    printed = capsys.readouterr().out
    assert (out / "summary.md").read_text() in printed
    assert "**valid.mse** (min)" in printed and printed.count("test.mse") == 1


def test_example_tune_toml_spells_out_the_defaults():
    cfg, settings = load_tune_config(EXAMPLES / "tune.toml")
    _, defaults = load_tune_config(None)
    assert settings.values == defaults.values
    assert cfg.base["train.steps"] % cfg.base["train.eval_every"] == 0


@pytest.mark.slow
def test_example_tune_toml_end_to_end(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxtune.cli",
            "tune",
            str(EXAMPLES / "tune.toml"),
            "--out",
            str(tmp_path / "o"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## Test split" in proc.stdout
    for folder in ("stage1-lr-range", "stage2-lr-batch", "stage3-refine", "stage4-seeds"):
        assert (tmp_path / "o" / folder / "results.json").is_file()
