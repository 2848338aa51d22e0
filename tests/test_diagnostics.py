"""Tuning diagnostics: each check catches a planted fault and passes on the healthy digits MLP."""

import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxtune
from jaxtune import data as data_lib
from jaxtune import diagnostics as D
from jaxtune.config import SweepConfig
from jaxtune.engine import Selection, SweepResult, TrialResult

DIGITS = {
    "task": {"dataset": "digits", "widths": [32, 32]},
    "optimizer": {"name": "momentum", "momentum": 0.9, "learning_rate": 0.1},
    "train": {"batch_size": 64, "steps": 100, "eval_every": 50},
}
SWEEP_LRS = [0.01, 0.03, 0.1, 0.3, 1000.0]

DIGITS_TOML = """
[task]
dataset = "digits"
widths = [32, 32]

[optimizer]
name = "momentum"
momentum = 0.9
learning_rate = 0.1

[train]
batch_size = 64
steps = 100
eval_every = 50
"""


def _with(base: dict, **sections) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


# ---------------------------------------------------------------------------------------------
# Overfit check.


@pytest.fixture(scope="module")
def overfit_digits():
    return D.overfit_check(DIGITS, steps=150, lrs=[0.1, 1000.0])


def test_overfit_passes_on_healthy_digits_mlp(overfit_digits):
    r = overfit_digits
    assert r.passed and r.passing_lrs == [0.1]
    assert r.steps_to_tol[0][0] is not None and r.steps_to_tol[1][0] is not None
    assert r.steps_to_tol[1][0] < 150
    assert r.init_loss_ok and r.expected_init_loss == pytest.approx(math.log(10))
    assert "PASS" in r.report()


def test_overfit_diagnoses_exploding_learning_rate(overfit_digits):
    r = overfit_digits
    assert r.steps_to_tol[1][1] is None
    assert "non-finite" in r.diagnosis[1][1] and "too large" in r.diagnosis[1][1]


def test_overfit_fails_on_a_one_unit_bottleneck():
    r = D.overfit_check(_with(DIGITS, task={"widths": [1]}), steps=150)
    assert not r.passed
    assert r.steps_to_tol[0][0] is not None  # one example is easy even through one unit
    assert "cannot represent" in r.diagnosis[1][0]


def test_overfit_flat_loss_with_deep_sigmoid_and_tiny_lr():
    cfg = _with(
        DIGITS,
        task={"widths": [32] * 6, "activation": "sigmoid", "init": "normal(0.01)"},
        optimizer={"name": "sgd", "momentum": None, "learning_rate": 1e-3},
    )
    r = D.overfit_check(cfg, steps=150)
    assert not r.passed
    assert "flat" in r.diagnosis[1][0] and "too small" in r.diagnosis[1][0]


def test_overfit_labels_beyond_the_output_range():
    r = D.overfit_check(DIGITS, num_classes=5)
    assert not r.passed and "label/output mismatch" in r.reason


# ---------------------------------------------------------------------------------------------
# Data checks (no training: fast).


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_digits(return_standardizer=True)


def test_data_checks_pass_on_digits(digits):
    ds, std = digits
    r = D.data_checks(ds, num_classes=10, standardizer=std)
    assert r.passed, r.report()
    assert not [f for f in r.findings if f[0] == "leakage"]


def test_data_checks_catch_test_standardized_with_its_own_statistics(digits):
    ds, std = digits
    raw_test = np.asarray(std.inverse_transform(ds.test[0]))
    refit = np.asarray(data_lib.Standardizer.fit(raw_test).transform(raw_test))
    leaked = ds._replace(test=(refit, ds.test[1]))
    r = D.data_checks(leaked, num_classes=10)
    assert not r.passed
    assert any(name == "leakage" and "own statistics" in msg for name, _, msg in r.findings)


def test_data_checks_catch_a_standardizer_fit_on_all_data(digits):
    ds, std = digits
    parts = (std.inverse_transform(ds.train[0]), std.inverse_transform(ds.test[0]))
    raw = np.concatenate([np.asarray(p) for p in parts])
    joint = data_lib.Standardizer.fit(raw)
    n = ds.train[0].shape[0]
    leaked = ds._replace(
        train=(np.asarray(joint.transform(raw[:n])), ds.train[1]),
        test=(np.asarray(joint.transform(raw[n:])), ds.test[1]),
    )
    r = D.data_checks(leaked, num_classes=10, standardizer=joint)
    assert not r.passed
    assert any(name == "leakage" for name, _, _ in r.findings)


def test_data_checks_catch_labels_nan_unstandardized_and_imbalance(digits):
    ds, _ = digits
    x_train, y_train = (np.asarray(a) for a in ds.train)
    y = y_train.copy()
    y[:3] = 12
    r = D.data_checks(ds._replace(train=(x_train, y)), num_classes=10)
    assert not r.passed and any(f[0] == "label range" for f in r.findings)
    x = x_train.copy()
    x[0, 5] = np.nan
    r = D.data_checks(ds._replace(train=(x, y_train)), num_classes=10)
    assert any(f[0] == "non-finite" for f in r.findings)
    r = D.data_checks(ds._replace(train=(x_train * 16 + 8, y_train)), num_classes=10)
    assert any(f[0] == "standardize" for f in r.findings)
    keep = np.flatnonzero((y_train != 3) | (np.arange(len(y_train)) % 20 == 0))
    imb = ds._replace(train=(x_train[keep], y_train[keep]))
    r = D.data_checks(imb, num_classes=10)
    assert not r.passed and any(f[0] == "imbalance" for f in r.findings)


# ---------------------------------------------------------------------------------------------
# Signal propagation at init.


def test_init_report_he_propagates_normal_explodes_or_vanishes(tmp_path):
    presets = ("he_normal", "normal(1.0)", "normal(0.01)")
    r = D.init_report(depth=20, width=128, batch=64, presets=presets, out_dir=tmp_path)
    hidden = r.act_ratio["he_normal"][:-1]
    assert len(hidden) == 20
    assert all(0.5 <= v <= 2.0 for v in hidden), hidden
    assert not r.flags["he_normal"]
    assert r.act_ratio["normal(1.0)"][-2] > 1e6 and r.flags["normal(1.0)"]
    assert r.act_ratio["normal(0.01)"][-2] < 1e-6 and r.flags["normal(0.01)"]
    assert not r.passed
    assert D.init_report(depth=20, width=128, batch=64, presets=presets, check=["he_normal"]).passed
    assert (tmp_path / "init_report.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# LR finders and gradient health.


@pytest.fixture(scope="module")
def lr_sweep():
    return D.lr_sweep_test(DIGITS, lrs=SWEEP_LRS, steps=40)


def test_lr_finders_fast(lr_sweep, tmp_path):
    classic = D.lr_range_test(DIGITS, min_lr=1e-4, max_lr=10.0, steps=60)
    assert classic.passed and classic.stop_step < 60  # diverged before reaching lr = 10
    assert 1e-3 < classic.suggestions["min/10"] < 0.3
    assert lr_sweep.passed and 0.01 <= lr_sweep.suggestion <= 0.3
    assert math.isinf(lr_sweep.losses[-1])  # lr = 1000 diverged
    path = D.plot_lr_find(classic, lr_sweep, out_dir=tmp_path)
    assert path.stat().st_size > 0


def test_gradient_health_names_the_exploded_layer(lr_sweep, tmp_path):
    r = D.gradient_health(lr_sweep.result)
    assert not r.passed
    assert r.first_nonfinite[-1] is not None and all(x is None for x in r.first_nonfinite[:-1])
    assert "diverged" in r.recommendations[-1]
    layer = r.exploded_layer[len(SWEEP_LRS) - 1]
    assert layer.dominant.startswith("Dense_")
    assert D.gradient_health(lr_sweep.result, trials=[0, 1, 2]).passed
    out = D.plot_grad_norms(lr_sweep.result, tmp_path / "g.png")
    assert out.stat().st_size > 0


def _fake_result(grad_norms, clip_norm):
    cfg = SweepConfig.from_dict({"optimizer": {"clip_norm": clip_norm}})
    gn = np.asarray(grad_norms, np.float32)[None]
    trial = TrialResult(0, "000-base", {}, {"train.loss": 0.1}, False, None, None, 0.9)
    history = {"grad_norm": gn, "clipped": gn > clip_norm, "train.loss": np.ones_like(gn)}
    return SweepResult(cfg, [trial], history, {}, Selection("valid.loss", "min"))


def test_gradient_health_percentiles_and_clip_advice():
    norms = np.arange(1, 101, dtype=np.float32)
    r = D.gradient_health(_fake_result(norms, clip_norm=95.0))
    assert r.passed
    assert r.p50[0] == pytest.approx(np.percentile(norms, 50))
    assert r.p90[0] == pytest.approx(np.percentile(norms, 90))
    assert r.p99[0] == pytest.approx(np.percentile(norms, 99))
    assert r.clip_fraction[0] == pytest.approx(0.05)
    r = D.gradient_health(_fake_result(norms, clip_norm=10.0))
    assert not r.passed and "lower the learning rate instead" in r.recommendations[0]


# ---------------------------------------------------------------------------------------------
# Normalization masking.


def test_normalization_masks_a_too_large_init_fast():
    cfg = _with(DIGITS, task={"widths": [16, 16, 16], "init_scale": 5.0})
    planted = D.normalization_masking(cfg, steps=20, normalizations=["none", "batch"])
    assert not planted.passed and planted.masked, planted.report()
    assert planted.growth[0] > 10


@pytest.mark.slow
def test_normalization_masking_planted_and_healthy():
    cfg = _with(DIGITS, task={"widths": [32, 32, 32, 32]})
    planted = D.normalization_masking(
        _with(cfg, task={"init_scale": 4.0}), steps=50, normalizations=["none", "batch"]
    )
    assert not planted.passed and planted.masked, planted.report()
    healthy = D.normalization_masking(cfg, steps=50, normalizations=["none", "batch"])
    assert healthy.passed, healthy.report()


# ---------------------------------------------------------------------------------------------
# CLI handlers.


def _add_config_arguments(parser):
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("--set", action="append", default=[], dest="set")
    parser.add_argument("--out", default=None)


def _parser():
    parser = argparse.ArgumentParser(prog="jaxtune")
    D.add_subcommands(parser.add_subparsers(dest="command"), _add_config_arguments)
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


@pytest.fixture()
def toml_config(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text(DIGITS_TOML)
    return path


def test_cli_check_routes_config_and_action(toml_config, monkeypatch, capsys):
    seen = {}

    def fake_run_checks(cfg, **kw):
        seen["cfg"] = cfg
        return D.CheckReport(False, "planted", {}, [])

    monkeypatch.setattr(D, "run_checks", fake_run_checks)
    assert _run(["check", str(toml_config)]) == 1
    assert seen["cfg"].base["task.widths"] == (32, 32)
    assert _run(["check", "all", str(toml_config), "--set", "train.batch_size=32"]) == 1
    assert seen["cfg"].base["train.batch_size"] == 32
    with pytest.raises(SystemExit):
        _run(["check", "nonsense", str(toml_config)])


def test_cli_check_data_and_overfit(toml_config, overfit_digits, capsys):
    assert _run(["check", "data", str(toml_config)]) == 0
    assert _run(["check", "overfit", str(toml_config), "--lrs", "0.1,1000", "--steps", "150"]) == 0
    assert "overfit check" in capsys.readouterr().out
    assert (
        _run(["check", "overfit", str(toml_config), "--set", "task.widths=[1]", "--steps", "150"])
        == 1
    )


def test_cli_lr_find_vectorized(toml_config, lr_sweep, tmp_path, capsys):
    lrs = ",".join(str(x) for x in SWEEP_LRS)
    code = _run(
        [
            "lr-find",
            str(toml_config),
            "--mode",
            "vectorized",
            "--lrs",
            lrs,
            "--steps",
            "40",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert (tmp_path / "lr_find.png").exists()
    assert "suggestion best" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The example, end to end.


def test_debug_checklist_example_fast(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "debug_checklist.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--fast", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUMMARY: PASS" in proc.stdout
    assert (tmp_path / "checks.txt").exists()


# ---------------------------------------------------------------------------------------------
# Slow: LR finders against the best learning rate of a full sweep on digits.


@pytest.mark.slow
def test_lr_finders_agree_with_a_full_sweep_on_digits():
    lrs = [float(x) for x in np.geomspace(1 / 256, 2, 10)]
    full_cfg = _with(DIGITS, train={"steps": 600, "eval_every": 100})
    full_cfg["task"]["widths"] = [64, 64]
    full_cfg["sweep"] = {"grid": {"optimizer.learning_rate": lrs}}
    full = jaxtune.run_sweep(full_cfg)
    best = full.best("train.loss").hparams["optimizer.learning_rate"]
    cfg = {k: v for k, v in full_cfg.items() if k != "sweep"}
    vec = D.lr_sweep_test(cfg, lrs=lrs, steps=100)
    classic = D.lr_range_test(cfg, min_lr=1e-4, max_lr=10.0, steps=100)
    lr_at_min = float(classic.lrs[int(np.nanargmin(classic.smoothed))])
    print(
        f"full-sweep best {best:.4g}; vectorized {vec.suggestions}; classic {classic.suggestions}"
        f"; classic lr at min loss {lr_at_min:.4g}"
    )
    assert best / 3 <= vec.suggestion <= best * 3
    assert best / 3 <= lr_at_min <= best * 3
    # min/10 and steepest are conservative by design: below the best, within 10x.
    for key in ("min/10", "steepest"):
        assert best / 10 <= classic.suggestions[key] <= best
