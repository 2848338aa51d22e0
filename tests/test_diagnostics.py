"""Tuning diagnostics: planted faults are caught with a diagnosis that agrees with the numbers,
healthy setups pass, and the whole checklist runs on a user task."""

import argparse
import math
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune
from jaxtune import data as data_lib
from jaxtune import diagnostics as D
from jaxtune.config import SweepConfig
from jaxtune.engine import Selection, SweepResult, TrialResult
from jaxtune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DIGITS = {
    "task": {"dataset": "digits", "widths": [32, 32]},
    "optimizer": {"name": "momentum", "momentum": 0.9, "learning_rate": 0.1},
    "train": {"batch_size": 64, "steps": 100, "eval_every": 50},
}
SWEEP_LRS = [0.01, 0.03, 0.1, 0.3, 1000.0]


def _with(base: dict, **sections) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def _digits_task(num_outputs=10, x_transform=None):
    splits = data_lib.load_digits()
    if x_transform is not None:
        splits = splits._replace(train=(x_transform(splits.train[0]), splits.train[1]))
    model = jaxtune.mlp(num_outputs=num_outputs, input_shape=(64,), widths=(32,))
    return jaxtune.Task(
        lambda key, hp: model.init(key),
        model.apply,
        lambda out, y, hp: optax.softmax_cross_entropy_with_integer_labels(out, y),
        lambda out, y: {"accuracy": (jnp.argmax(out, -1) == y).astype(jnp.float32)},
        splits,
    )


# ---------------------------------------------------------------------------------------------
# Planted faults: the verdict and the diagnosis text, across the range.


@pytest.fixture(scope="module")
def overfit_lrs():
    """One program: a healthy rate, one far too small, one far too large (no clipping)."""
    return D.overfit_check(DIGITS, steps=150, lrs=[0.1, 1e-7, 1e3])


@pytest.fixture(scope="module")
def overfit_clipped():
    return D.overfit_check(_with(DIGITS, optimizer={"clip_norm": 1.0}), steps=150, lrs=[1e3])


def _nan_inputs(x):
    x = np.array(x)
    x[3, 5] = np.nan
    return x


PLANTED = {
    # case: (how to get the result, stage, lr index, verdict passed, words in the diagnosis)
    "healthy": ("lrs", 1, 0, True, ["ok"]),
    "lr far too small (1e-7)": ("lrs", 1, 1, False, ["too small"]),
    "lr far too large (1e3)": ("lrs", 1, 2, False, ["too large"]),
    "lr 1e3 with clipping": ("clipped", 1, 0, False, ["too large"]),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_overfit_faults(case, overfit_lrs, overfit_clipped):
    source, stage, j, ok, words = PLANTED[case]
    r = overfit_lrs if source == "lrs" else overfit_clipped
    diagnosis = r.diagnosis[stage][j]
    assert (r.steps_to_tol[stage][j] is not None) == ok, diagnosis
    for w in words:
        assert w in diagnosis, diagnosis
    if case == "healthy":
        assert r.passed and r.passing_lrs == [0.1] and "PASS" in r.report()
        assert r.chance_loss == pytest.approx(math.log(10)) and r.init_loss_ok


def test_every_diagnosis_agrees_with_its_curve(overfit_lrs, overfit_clipped):
    """'too small' only when the loss did not rise; 'too large'/'diverged' whenever it rose or
    turned non-finite."""
    checked = 0
    for r in (overfit_lrs, overfit_clipped):
        for s in range(2):
            for j in range(len(r.lrs)):
                curve = r.losses[s, j]
                ran = curve[np.isfinite(curve)]
                rose = bool(np.isnan(curve).any() or ran.max() > float(curve[0]))
                d = r.diagnosis[s][j]
                if d == "ok":
                    continue
                checked += 1
                if "too small" in d:
                    assert not rose, (d, curve[:10])
                if rose and r.steps_to_tol[s][j] is None:
                    assert "too large" in d or "diverged" in d, d
    assert checked >= 3


def test_the_issue_example_loss_rising_is_called_too_large():
    """lr=1000 without normalization: the loss rose from ~3 to hundreds; not 'too small'."""
    losses = np.array([3.164, 40.0, 300.0, 770.7, 770.7])
    steps_to, d = D.diagnose_curve(losses, np.full(5, 5.51), 1000.0, 0.05)
    assert steps_to is None and "too large" in d and "too small" not in d
    flat = np.array([3.164, 3.163, 3.164, 3.164])
    assert "too small" in D.diagnose_curve(flat, np.full(4, 5.51), 1e-7, 0.05)[1]


def test_planted_bottleneck_cannot_fit():
    r = D.overfit_check(_with(DIGITS, task={"widths": [1]}), steps=150)
    assert not r.passed
    assert r.steps_to_tol[0][0] is not None  # one example is easy even through one unit
    assert "cannot represent" in r.diagnosis[1][0]


def test_planted_labels_beyond_the_outputs():
    task = _digits_task(num_outputs=5)
    r = D.overfit_check({"train": {"batch_size": 64}}, task=task)
    assert not r.passed and "label/output mismatch" in r.reason
    report = D.run_checks({"train": {"batch_size": 64}}, task=task, checks=("data", "overfit"))
    assert not report.passed
    assert any(f[0] == "label range" for f in report.results["data"].findings)
    assert "SUMMARY: FAIL" in report.report()


def test_planted_nan_in_the_inputs():
    task = _digits_task(x_transform=_nan_inputs)
    report = D.run_checks({"train": {"batch_size": 64}}, task=task, checks=("data", "overfit"))
    assert not report.passed
    data = report.results["data"]
    assert not data.passed and any(f[0] == "non-finite" for f in data.findings)
    assert "breaks its contract" in report.results["overfit"].reason
    assert "non-finite" in report.results["overfit"].reason


# ---------------------------------------------------------------------------------------------
# Data checks (no training: fast).


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_digits(return_standardizer=True)


def test_data_checks_pass_on_digits(digits):
    ds, std = digits
    r = D.data_checks(ds, num_outputs=10, standardizer=std)
    assert r.passed, r.report()
    assert not [f for f in r.findings if f[0] == "leakage"]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_data_checks_catch_a_split_standardized_with_its_own_statistics(digits, split):
    ds, std = digits
    x, y = getattr(ds, split)
    raw = np.asarray(std.inverse_transform(x))
    refit = np.asarray(data_lib.Standardizer.fit(raw).transform(raw))
    r = D.data_checks(ds._replace(**{split: (refit, y)}), num_outputs=10)
    assert not r.passed
    assert any(n == "leakage" and "own statistics" in m and split in m for n, _, m in r.findings)


def test_data_checks_catch_a_standardizer_fit_on_all_data(digits):
    ds, std = digits
    parts = [np.asarray(std.inverse_transform(s[0])) for s in ds]
    joint = data_lib.Standardizer.fit(np.concatenate(parts))
    leaked = data_lib.Splits(
        *((np.asarray(joint.transform(p)), s[1]) for p, s in zip(parts, ds, strict=True))
    )
    r = D.data_checks(leaked, num_outputs=10, standardizer=joint)
    assert not r.passed and any(name == "leakage" for name, _, _ in r.findings)


def test_data_checks_catch_labels_nan_unstandardized_and_imbalance(digits):
    ds, _ = digits
    x_train, y_train = (np.asarray(a) for a in ds.train)
    y = y_train.copy()
    y[:3] = 12
    r = D.data_checks(ds._replace(train=(x_train, y)), num_outputs=10)
    assert not r.passed and any(f[0] == "label range" for f in r.findings)
    r = D.data_checks(ds._replace(train=(_nan_inputs(x_train), y_train)), num_outputs=10)
    assert any(f[0] == "non-finite" for f in r.findings)
    r = D.data_checks(ds._replace(train=(x_train * 16 + 8, y_train)), num_outputs=10)
    assert any(f[0] == "standardize" for f in r.findings)
    keep = np.flatnonzero((y_train != 3) | (np.arange(len(y_train)) % 20 == 0))
    r = D.data_checks(ds._replace(train=(x_train[keep], y_train[keep])), num_outputs=10)
    assert not r.passed and any(f[0] == "imbalance" for f in r.findings)


def test_data_checks_on_regression_and_pytree_inputs():
    splits = jaxtune.load_diabetes()
    assert D.data_checks(splits).passed
    x, y = splits.train
    tree = data_lib.Splits(({"a": x, "b": x[:, :2]}, y), ({"a": x[:9], "b": x[:9, :2]}, y[:9]))
    assert D.data_checks(tree).passed


# ---------------------------------------------------------------------------------------------
# Signal propagation at init.


@pytest.mark.slow
def test_init_report_he_propagates_normal_explodes_or_vanishes(tmp_path):
    presets = ("he_normal", "normal(1.0)", "normal(0.01)")
    r = D.init_report(depth=20, width=128, batch=64, presets=presets, out_dir=tmp_path)
    hidden = r.act_ratio["he_normal"][:-1]
    assert len(hidden) == 20
    # Finite width drifts the scale slowly (about x0.3..x1 after 20 layers of width 128 across
    # seeds); the failures below are 6 orders of magnitude away.
    assert all(0.25 <= v <= 4.0 for v in hidden), hidden
    assert not r.flags["he_normal"]
    assert r.act_ratio["normal(1.0)"][-2] > 1e6 and r.flags["normal(1.0)"]
    assert r.act_ratio["normal(0.01)"][-2] < 1e-6 and r.flags["normal(0.01)"]
    assert not r.passed
    assert D.init_report(depth=20, width=128, batch=64, presets=presets, check=["he_normal"]).passed
    assert (tmp_path / "init_report.png").stat().st_size > 0


class _Deep(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        for _ in range(6):
            x = nn.relu(nn.Dense(48)(x))
        return nn.Dense(10)(x)


def test_init_report_on_a_user_linen_task_and_a_skip_without_layers():
    splits = data_lib.load_digits()
    model = jaxtune.from_linen(_Deep(), (64,))
    task = jaxtune.tasks.classification(model, splits)
    r = D.init_report({}, task=task, presets=("he_normal", "normal(1.0)"))
    assert r.presets[0] == "task init" and len(r.layers) == 7
    # flax's default Dense init (LeCun, variance 1/fan_in) under ReLU halves the signal's
    # variance at every layer: the report flags the task's own init and clears He.
    assert not r.passed and "vanishes" in r.verdict["task init"]
    assert r.act_ratio["task init"][5] < 0.1 and not r.flags["he_normal"]
    assert r.flags["normal(1.0)"]
    plain = task._replace(
        init=lambda key, hp: ({"w": jnp.zeros((64, 10))}, {}),
        apply=lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s),
    )
    skipped = D.init_report({}, task=plain)
    assert skipped.skipped and skipped.passed and "no Flax linen" in skipped.reason


class _Tokens(nn.Module):
    @nn.compact
    def __call__(self, ids, *, train):
        x = nn.Embed(256, 32)(ids).mean(axis=1)
        h = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(h)


def test_init_report_of_token_ids_measures_from_the_first_layers_input():
    """For a model of token ids the reference scale is what the embedding feeds the first
    Dense layer, not the ids (byte values, std ~70): the ratios equal the hand-computed stds of
    the model's own activations, and He's init is not flagged."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (300, 8)).astype(np.int32)
    labels = (ids[:, 0] % 10).astype(np.int32)
    splits = data_lib.Splits((ids[:200], labels[:200]), (ids[200:], labels[200:]))
    model = jaxtune.from_linen(_Tokens(), (8,), input_dtype=jnp.int32)
    task = jaxtune.tasks.classification(model, splits)
    r = D.init_report({"train": {"batch_size": 64}}, task=task, presets=("he_normal",), batch=64)
    assert r.layers == ["Dense_0", "Dense_1"]
    # By hand, on the same batch and the task's own parameters.
    subject = D.make_subject({"train": {"batch_size": 64}}, task=task)
    x, _ = subject.batch(64)
    params, _ = jax.jit(task.init)(subject.key, subject.hp)
    p = params.get("params", params)
    embedded = np.asarray(nn.Embed(256, 32).apply({"params": p["Embed_0"]}, x)).mean(axis=1)
    hidden = np.maximum(embedded @ np.asarray(p["Dense_0"]["kernel"]) + p["Dense_0"]["bias"], 0)
    logits = hidden @ np.asarray(p["Dense_1"]["kernel"]) + p["Dense_1"]["bias"]
    assert r.input_std == pytest.approx(np.std(embedded), rel=1e-4)
    want = [np.std(hidden) / np.std(embedded), np.std(logits) / np.std(embedded)]
    np.testing.assert_allclose(r.act_ratio["task init"], want, rtol=1e-4)
    assert np.std(x) > 50 and not r.flags["he_normal"]


def test_init_report_names_layers_by_their_path():
    """Two blocks' ``Dense_0`` are told apart: ``Block_0/Dense_0``, ``Block_1/Dense_0``."""

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.relu(nn.Dense(16)(x))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            x = Block()(x)
            x = Block()(x)
            return nn.Dense(10)(x)

    task = jaxtune.tasks.classification(jaxtune.from_linen(Net(), (64,)), data_lib.load_digits())
    r = D.init_report({}, task=task, presets=("he_normal",))
    assert r.layers == ["Block_0/Dense_0", "Block_1/Dense_0", "Dense_0"]


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


def test_gradient_health_refuses_a_sweep_run_without_the_norm():
    result = _fake_result(np.ones(5), clip_norm=1.0)
    result.config = result.config.replace({"train.grad_norm": False})
    with pytest.raises(ConfigError, match="train.grad_norm = false: run it with train.grad_norm"):
        D.gradient_health(result)


def test_the_checks_record_the_gradient_norm_whatever_the_config():
    subject = D.make_subject({"train": {"grad_norm": False}})
    assert subject.cfg.base["train.grad_norm"] is True
    state = subject.fns.init(subject.key, subject.hp)
    x, y = (jnp.asarray(a[:32]) for a in subject.task.data.train)
    _, m = subject.fns.train_step(state, subject.hp, (x, y), 0)

    # Independently: the norm of the gradient of the task's own mean loss.
    def loss(p):
        out, _ = subject.task.apply(p, state.model_state, x, train=True, key=None, mask=None)
        return jnp.mean(subject.task.loss(out, y, subject.hp))

    want = float(optax.tree.norm(jax.grad(loss)(state.params)))
    assert float(m["grad_norm"]) == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Normalization masking.


def test_normalization_masks_a_too_large_init_fast():
    cfg = _with(DIGITS, task={"widths": [16, 16, 16], "init_scale": 5.0})
    planted = D.normalization_masking(cfg, steps=20, normalizations=["none", "batch"])
    assert not planted.passed and planted.masked, planted.report()
    assert planted.growth[0] > 10


def test_normalization_masking_is_skipped_without_a_switch():
    r = D.normalization_masking({}, task=_digits_task())
    assert r.skipped and r.passed and "no task.normalization switch" in r.reason


@pytest.mark.slow
def test_normalization_masking_planted_and_healthy():
    cfg = _with(DIGITS, task={"widths": [32, 32, 32, 32]})
    planted = D.normalization_masking(
        _with(cfg, task={"init_scale": 4.0}), steps=50, normalizations=["none", "batch"]
    )
    assert not planted.passed and planted.masked, planted.report()
    healthy = D.normalization_masking(cfg, steps=50, normalizations=["none", "batch"])
    assert healthy.passed, healthy.report()


def test_no_training_loop_or_loss_inside_the_diagnostics():
    """Every check trains through the public step: no optimizer update or bundled loss here."""
    for path in (REPO / "jaxtune" / "diagnostics").glob("*.py"):
        text = path.read_text()
        for banned in ("apply_updates", "softmax_cross_entropy", ".update(grads"):
            assert banned not in text, f"{path.name} contains {banned!r}"


# ---------------------------------------------------------------------------------------------
# The command line, on the bundled config and on a user task from examples/.


def _add_config_arguments(parser):
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("--set", action="append", default=[], dest="set")
    parser.add_argument("--out", default=None)


def _run(argv):
    parser = argparse.ArgumentParser(prog="jaxtune")
    D.add_subcommands(parser.add_subparsers(dest="command"), _add_config_arguments)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def toml_config(tmp_path):
    from jaxtune.config import to_toml

    path = tmp_path / "digits.toml"
    path.write_text(to_toml(DIGITS))
    return path


def test_cli_check_routes_config_and_action(toml_config, monkeypatch):
    seen = {}

    def fake_run_checks(cfg, **kw):
        seen["cfg"] = cfg
        return D.CheckReport(False, "planted", {}, [])

    monkeypatch.setattr(D.cli, "run_checks", fake_run_checks)
    assert _run(["check", str(toml_config)]) == 1
    assert seen["cfg"].base["task.widths"] == (32, 32)
    assert _run(["check", "all", str(toml_config), "--set", "train.batch_size=32"]) == 1
    assert seen["cfg"].base["train.batch_size"] == 32
    with pytest.raises(SystemExit):
        _run(["check", "nonsense", str(toml_config)])


def test_cli_check_data_and_overfit(toml_config, capsys):
    assert _run(["check", "data", str(toml_config)]) == 0
    assert _run(["check", "overfit", str(toml_config), "--lrs", "0.1,1000", "--steps", "150"]) == 0
    assert "overfit check" in capsys.readouterr().out
    argv = ["check", "overfit", str(toml_config), "--set", "task.widths=[1]", "--steps", "150"]
    assert _run(argv) == 1


def test_cli_lr_find_vectorized(toml_config, tmp_path, capsys):
    lrs = ",".join(str(x) for x in SWEEP_LRS)
    argv = ["lr-find", str(toml_config), "--mode", "vectorized", "--lrs", lrs, "--steps", "40"]
    assert _run([*argv, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lr_find.png").exists()
    assert "suggestion best" in capsys.readouterr().out


def test_the_checks_run_on_configs_with_a_search_of_their_own(tmp_path, capsys):
    # The user task's config has a [sweep.grid], quasi_random.toml a [sweep.space]: each check
    # replaces the search whole (the gradient check's one trial, the LR finder's grid).
    from jaxtune.cli import main

    custom = str(REPO / "examples" / "custom_task.toml")
    argv = ["check", "grads", "--steps", "5", custom, "--set", "task.widths=[8]"]
    assert main(argv) == 0  # options between WHAT and CONFIG parse too
    assert "000-base" in capsys.readouterr().out
    space = str(REPO / "examples" / "quasi_random.toml")
    argv = ["lr-find", space, "--mode", "vectorized", "--lrs", "0.01,0.1", "--steps", "5"]
    assert main([*argv, "--set", "task.widths=[8]", "--out", str(tmp_path)]) == 0
    assert "suggestion best" in capsys.readouterr().out


def _check_all(*extra):
    cmd = [sys.executable, "-m", "jaxtune.cli", "check", "all"]
    cmd += [str(REPO / "examples" / "custom_task.toml"), "--fast", "--set", "task.widths=[16]"]
    cmd += ["--set", "optimizer.learning_rate=0.01"]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=900, cwd=REPO)


@pytest.mark.slow  # 90 s: `jaxtune check all` twice on the user task (pytest -m slow)
def test_check_all_on_the_user_task_from_examples_passes_and_catches_a_planted_fault():
    ok = _check_all()
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "SUMMARY: PASS" in ok.stdout
    assert "[SKIP] normalization masking" in ok.stdout  # the user factory has no switch
    assert "chance level skipped" in ok.stdout  # regression: no chance level
    bad = _check_all("--set", "optimizer.learning_rate=1000")
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert "SUMMARY: FAIL" in bad.stdout
    overfit = bad.stdout.split("overfit check:")[1].splitlines()[0]
    assert "too large" in overfit or "diverged" in overfit, overfit


@pytest.mark.slow
def test_debug_checklist_example_fast(tmp_path):
    script = REPO / "examples" / "debug_checklist.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--fast", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUMMARY: PASS" in proc.stdout
    assert (tmp_path / "checks.txt").read_text().rstrip().endswith(proc.stdout.rstrip()[-40:])


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
    for key in ("min/10", "steepest"):
        assert best / 10 <= classic.suggestions[key] <= best
