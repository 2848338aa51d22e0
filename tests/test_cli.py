"""The ``jaxtune`` command line end to end, with its TensorBoard logs, plots and progress display.

The main end-to-end test runs ``jaxtune sweep`` in a subprocess on a tiny synthetic 2x2 grid and
checks every output; the rest runs in-process on one tiny sweep (sharing its compiled program).
"""

import csv
import io
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tb_reader

from jaxtune import cli
from jaxtune import config as config_lib
from jaxtune.cli import main
from jaxtune.config import load_config, to_toml
from jaxtune.engine import Selection, SweepResult, TrialResult, run_sweep
from jaxtune.report import plots
from jaxtune.report.progress import ProgressBar, format_table
from jaxtune.report.tensorboard import TensorBoardLogger

REPO = Path(__file__).resolve().parents[1]

TINY = """\
[task]
dataset = "synthetic"
widths = [8]

[optimizer]
name = "momentum"
momentum = 0.9
clip_norm = 1.0

[train]
steps = 20
eval_every = 10
batch_size = 32

[checkpoint]
every = 10

[sweep.grid]
"optimizer.learning_rate" = [0.05, 0.5]
"train.batch_size" = [16, 32]
"""

# In-process sweep: one trial diverges (huge learning rate, no clipping).
INPROC = {
    "task": {"dataset": "synthetic", "widths": [8]},
    "optimizer": {"name": "sgd"},
    "train": {"steps": 20, "eval_every": 10, "batch_size": 32},
    "checkpoint": {"every": 10},
    "sweep": {"grid": {"optimizer.learning_rate": [0.1, 1e6]}},
}


def _jaxtune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxtune.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def _scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(pairs) for tag, pairs in tb_reader.scalars(run_dir).items()}


# ----------------------------------------------------------------------------------------------
# The end-to-end run (subprocess).


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "tiny.toml"
    cfg.write_text(TINY)
    out = d / "run"
    proc = _jaxtune("sweep", str(cfg), "--out", str(out), cwd=d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return out, cfg, proc


def test_sweep_prints_table_and_every_output(cli_run):
    out, _, proc = cli_run
    text = proc.stdout
    assert "rank" in text and "valid.accuracy" in text and "test.accuracy" in text
    names = [t["name"] for t in json.loads((out / "results.json").read_text())["trials"]]
    assert all(n in text for n in names)
    assert "diverged" in text
    for rel in (
        "results.json",
        "results.csv",
        "history.npz",
        "config.toml",
        "plots/lr_vs_metric.png",
        "plots/curves.png",
        "tb",
        "checkpoints",
    ):
        assert str(out / rel) in text, rel
        assert (out / rel).exists(), rel
    assert f"tensorboard --logdir {out / 'tb'}" in text
    # The divergence count is said once, in the summary under the table.
    assert "trials diverged" not in text and text.count("4 trials, 0 diverged; best by") == 1
    # The progress bar went to stderr and reached the end.
    assert "80/80" in proc.stderr


def test_results_json_schema(cli_run):
    out, _, _ = cli_run
    blob = json.loads((out / "results.json").read_text())
    assert set(blob) >= {"config", "trials", "timing"}
    assert load_config(out / "config.toml") == config_lib.SweepConfig.from_dict(blob["config"])
    assert [t["id"] for t in blob["trials"]] == [0, 1, 2, 3]
    for t in blob["trials"]:
        assert set(t["hparams"]) == {"optimizer.learning_rate", "train.batch_size"}
        assert set(t["final"]) == {
            "train.loss",
            "valid.loss",
            "valid.accuracy",
            "test.loss",
            "test.accuracy",
        }
        assert 0.0 <= t["final"]["valid.accuracy"] <= 1.0
        assert all(math.isfinite(v) for v in t["final"].values())
        assert isinstance(t["diverged"], bool)
        assert t["diverged_step"] is None or isinstance(t["diverged_step"], int)
    assert blob["timing"]["steps_done"] == 20
    assert blob["timing"]["compile_s"] > 0 and blob["timing"]["run_s"] > 0


def test_results_csv_rows(cli_run):
    out, _, _ = cli_run
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"id", "name", "optimizer.learning_rate", "train.batch_size", "valid.accuracy"} <= set(
        rows[0]
    )
    assert sorted(float(r["optimizer.learning_rate"]) for r in rows) == [0.05, 0.05, 0.5, 0.5]
    assert all(0.0 <= float(r["test.accuracy"]) <= 1.0 for r in rows)


def test_config_toml_loads_back_equal(cli_run):
    out, cfg, _ = cli_run
    written = load_config(out / "config.toml")
    assert written == load_config(cfg)
    assert config_lib.config_hash(written) == config_lib.config_hash(load_config(cfg))


def test_plots_are_readable_pngs(cli_run):
    import matplotlib.image as mpimg

    out, _, _ = cli_run
    for name in ("lr_vs_metric.png", "curves.png"):
        img = mpimg.imread(out / "plots" / name)
        assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 600
        assert float(np.std(img)) > 0.01  # not blank


def test_tensorboard_runs_scalars_and_hparams(cli_run):
    out, _, _ = cli_run
    blob = json.loads((out / "results.json").read_text())
    history = np.load(out / "history.npz")
    runs = sorted(p.name for p in (out / "tb").iterdir())
    assert runs == sorted(t["name"] for t in blob["trials"])
    for t in blob["trials"]:
        run = out / "tb" / t["name"]
        s = _scalars(run)
        for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/clip_rate"):
            assert sorted(s[tag]) == list(range(20)), tag
        np.testing.assert_allclose(
            [s["train/loss"][k] for k in range(20)], history["train.loss"][t["id"]], rtol=1e-6
        )
        assert all(
            v == pytest.approx(t["hparams"]["optimizer.learning_rate"], rel=1e-6)
            for v in s["train/learning_rate"].values()
        )
        assert all(0.0 <= v <= 1.0 for v in s["train/clip_rate"].values())
        for split in ("valid", "test"):
            assert sorted(s[f"{split}/accuracy"]) == [10, 20] and sorted(s[f"{split}/loss"]) == [
                10,
                20,
            ]
            want = t["final"][f"{split}.accuracy"]
            assert s[f"{split}/accuracy"][20] == pytest.approx(want, abs=1e-6)
        tags = tb_reader.tags(run)
        assert {
            "_hparams_/experiment",
            "_hparams_/session_start_info",
            "_hparams_/session_end_info",
        } <= tags
        assert s["hparams/valid_accuracy"][20] == pytest.approx(
            t["final"]["valid.accuracy"], abs=1e-6
        )
    best = max(blob["trials"], key=lambda t: (t["final"]["valid.accuracy"], -t["id"]))
    assert "valid/worst_examples" in tb_reader.tags(out / "tb" / best["name"])


def test_hparams_session_holds_the_trial_values(cli_run):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    out, _, _ = cli_run
    t = json.loads((out / "results.json").read_text())["trials"][3]
    for ev in tb_reader.events(out / "tb" / t["name"]):
        for v in ev.summary.value:
            if v.tag == "_hparams_/session_start_info":
                data = HParamsPluginData.FromString(v.metadata.plugin_data.content)
                hp = data.session_start_info.hparams
                assert hp["optimizer.learning_rate"].number_value == pytest.approx(0.5)
                assert hp["train.batch_size"].number_value == 32
                return
    pytest.fail("no session_start_info")


def test_checkpoints_written(cli_run):
    out, _, _ = cli_run
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [10, 20]


def test_show_and_plot(cli_run, capsys):
    out, _, _ = cli_run
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("rank")
    assert "4 trials, 0 diverged; best by valid.accuracy (max):" in text
    assert main(["show", str(out), "--top", "1"]) == 0
    assert "... 3 more" in capsys.readouterr().out

    for p in (out / "plots").glob("*.png"):
        p.unlink()
    assert main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "plots" / "lr_vs_metric.png"), str(out / "plots" / "curves.png")]
    assert all(Path(p).stat().st_size > 1000 for p in printed)


def test_existing_out_is_refused_without_resume(cli_run, capsys):
    out, cfg, _ = cli_run
    assert main(["sweep", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a sweep" in err and "--resume" in err


def test_show_without_results(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bad configurations: exit 2, one line on stderr, no traceback, before anything runs.


def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    tiny = tmp / "tiny.toml"
    tiny.write_text(TINY)
    syntax = tmp / "syntax.toml"
    syntax.write_text('[task]\ndataset = "synthetic"\nwidths = [8,\nmodel = = "mlp"\n')
    unknown = tmp / "unknown.toml"
    unknown.write_text(TINY.replace('name = "momentum"', 'nmae = "momentum"'))
    empty = tmp / "empty.toml"
    empty.write_text(TINY.replace("[0.05, 0.5]", "[]"))
    a_file = tmp / "a_file"
    a_file.write_text("")
    out = ["--out", str(tmp / "never")]
    return {
        "missing file": (["sweep", str(tmp / "nope.toml"), *out], "not found"),
        "toml syntax": (["sweep", str(syntax), *out], "line 4"),
        "unknown key in file": (["sweep", str(unknown), *out], "did you mean 'optimizer.name'"),
        "unknown key in --set": (
            ["sweep", str(tiny), "--set", "optimizer.learnig_rate=0.1", *out],
            "did you mean 'optimizer.learning_rate'",
        ),
        "wrong type": (["sweep", str(tiny), "--set", "train.steps=fast", *out], "train.steps"),
        "out of range": (
            ["sweep", str(tiny), "--set", "optimizer.momentum=1.5", *out],
            "optimizer.momentum",
        ),
        "batch size > training set": (
            ["sweep", str(tiny), "--set", "sweep.grid.train.batch_size=[16, 4096]", *out],
            "larger than the training set",
        ),
        "empty grid": (["sweep", str(empty), *out], "empty"),
        "out is a file": (["sweep", str(tiny), "--out", str(a_file)], "is a file"),
        "resume without out": (["sweep", str(tiny), "--resume"], "--resume needs --out"),
        "factory import fails": (
            ["sweep", str(tiny), "--set", "task.factory=no_such_module:make", *out],
            "task.factory = 'no_such_module:make' cannot be imported",
        ),
        "factory returns no task": (
            ["sweep", str(tiny), "--set", "task.factory=json:dumps", *out],
            "must return a jaxtune.Task",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "toml syntax",
        "unknown key in file",
        "unknown key in --set",
        "wrong type",
        "out of range",
        "batch size > training set",
        "empty grid",
        "out is a file",
        "resume without out",
        "factory import fails",
        "factory returns no task",
    ],
)
def test_bad_config_exits_2_with_one_line(case, tmp_path, capsys):
    argv, expected = _bad_cases(tmp_path)[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("jaxtune: error: ")
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not (tmp_path / "never").exists()  # nothing was created


def test_bad_config_in_a_subprocess(tmp_path):
    proc = _jaxtune("sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["toml syntax", "unknown key in --set", "empty grid", "out is a file"]
)
def test_bad_config_in_a_subprocess_slow(case, tmp_path):
    argv, expected = _bad_cases(tmp_path)[case]
    proc = _jaxtune(*argv)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# In-process: ProgressBar, TensorBoardLogger, format_table, interrupt and resume.


@pytest.fixture(scope="module")
def inproc(tmp_path_factory):
    d = tmp_path_factory.mktemp("inproc")
    buf = io.StringIO()
    bar = ProgressBar(file=buf, mininterval=0)
    logger = TensorBoardLogger(d / "tb")
    result = run_sweep(INPROC, callbacks=[bar, logger])
    return result, buf.getvalue(), d / "tb"


def test_progress_bar(inproc):
    result, text, _ = inproc
    assert "40/40" in text  # steps x trials
    assert "trial-step" in text
    assert "step 20/20" in text
    best = max(t.final["valid.accuracy"] for t in result.trials if not t.diverged)
    assert f"best valid.accuracy {best:.4g}" in text
    assert "diverged 1" in text


def test_logger_skips_nan_after_divergence(inproc):
    result, _, tb = inproc
    bad = next(t for t in result.trials if t.diverged)
    good = next(t for t in result.trials if not t.diverged)
    s = tb_reader.scalars(tb / bad.name)
    assert max(step for step, _ in s["train/loss"]) < bad.diverged_step
    assert all(math.isfinite(v) for _, v in s["train/loss"])
    assert s["hparams/diverged"] == [(20, 1.0)]
    assert len(tb_reader.scalars(tb / good.name)["train/loss"]) == 20
    # Clipping is off: the clip rate is 0 throughout.
    assert {v for _, v in tb_reader.scalars(tb / good.name)["train/clip_rate"]} == {0.0}
    # The image grid lives in the best trial's run.
    assert any(
        v.tag == "valid/worst_examples"
        for ev in tb_reader.events(tb / good.name)
        for v in ev.summary.value
    )


def test_format_table_of_a_live_result(inproc):
    result, _, _ = inproc
    text = format_table(result)
    lines = text.splitlines()
    assert lines[0].split()[:5] == [
        "rank",
        "name",
        "learning_rate",
        "train.loss",
        "valid.accuracy",
    ]
    bad = next(t for t in result.trials if t.diverged)
    assert bad.name in lines[-2] and lines[-2].split()[-1] == str(bad.diverged_step)
    assert lines[-1].startswith("2 trials, 1 diverged; best by valid.accuracy (max): ")


def _trial(i, acc, diverged=False, step=None):
    return TrialResult(
        id=i,
        name=f"{i:03d}-lr={i}",
        hparams={"optimizer.learning_rate": float(i + 1), "train.batch_size": 16 * (1 + i % 2)},
        final={
            "train.loss": 0.5,
            "valid.loss": 1.0 - (0 if math.isnan(acc) else acc),
            "valid.accuracy": acc,
            "test.accuracy": 1.0 - acc,
        },
        diverged=diverged,
        diverged_step=step,
        best_step=None,
        best=acc,
    )


def _fake_result(trials):
    cfg = config_lib.SweepConfig.from_dict({"train": {"steps": 4, "eval_every": 2}})
    n = len(trials)
    history = {
        "train.loss": np.array([[2.0, 1.5, np.nan, np.nan]] * n, np.float32),
        "grad_norm": np.ones((n, 4), np.float32),
        "clipped": np.zeros((n, 4), bool),
        "learning_rate": np.ones((n, 4), np.float32),
        "eval_step": np.array([2, 4], np.int32),
        "valid.loss": np.ones((n, 2), np.float32),
        "valid.accuracy": np.full((n, 2), 0.5, np.float32),
    }
    return SweepResult(cfg, trials, history, {"steps_done": 4}, Selection("valid.accuracy", "max"))


def test_format_table_ordering():
    result = _fake_result(
        [
            _trial(0, 0.5),
            _trial(1, 0.9),
            _trial(2, math.nan),
            _trial(3, 0.99, diverged=True, step=7),
            _trial(4, 0.7),
            _trial(5, 0.2, diverged=True, step=3),
        ]
    )
    assert [t.id for t in result.ranked()] == [1, 4, 0, 2, 3, 5]
    lines = format_table(result).splitlines()
    body = lines[2:-1]
    assert [int(line.split()[0]) for line in body] == [1, 2, 3, 4, 5, 6]
    assert [line.split()[1] for line in body] == [result.trials[i].name for i in (1, 4, 0, 2, 3, 5)]
    assert body[-2].split()[-1] == "7" and body[0].split()[-1] == "-"
    assert lines[-1] == (
        "6 trials, 2 diverged; best by valid.accuracy (max): 001-lr=1 (valid.accuracy 0.9; "
        "test.accuracy 0.1 (reported, not used to choose))"
    )
    top = format_table(result, top=2).splitlines()
    assert len(top) == 2 + 2 + 2 and top[-2] == "... 4 more"


def test_plots_of_a_synthetic_result_with_divergence(tmp_path):
    result = _fake_result(
        [_trial(0, 0.5), _trial(1, 0.9), _trial(2, 0.3, diverged=True, step=2), _trial(3, 0.6)]
    )
    paths = plots.write_plots(result, tmp_path)
    assert [p.name for p in paths] == ["lr_vs_metric.png", "curves.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    # A result without history draws only the learning-rate plot.
    result.history = {}
    assert [p.name for p in plots.write_plots(result, tmp_path / "b")] == ["lr_vs_metric.png"]


def test_curves_name_few_trials_and_key_many_by_the_learning_rate():
    from matplotlib import colormaps

    few = plots.curves_figure(_fake_result([_trial(i, 0.5 + i / 10) for i in range(4)]))
    (legend,) = [ax.get_legend() for ax in few.axes if ax.get_legend() is not None]
    assert [t.get_text() for t in legend.get_texts()] == [f"{i:03d}-lr={i}" for i in range(4)]

    result = _fake_result([_trial(i, 0.5) for i in range(12)])  # lr 1 .. 12
    fig = plots.curves_figure(result)
    assert len(fig.axes) == 3 and all(ax.get_legend() is None for ax in fig.axes)
    bar = fig.axes[2]
    assert bar.get_ylabel() == "optimizer.learning_rate (line colour)"
    assert bar.get_yscale() == "log" and bar.get_ylim() == pytest.approx((1.0, 12.0))
    lines = fig.axes[0].get_lines()
    viridis = colormaps["viridis"]
    np.testing.assert_allclose(lines[0].get_color(), viridis(0.0))
    np.testing.assert_allclose(lines[-1].get_color(), viridis(1.0))
    middle = math.log(6.0) / math.log(12.0)  # lr 6 on a log scale from 1 to 12
    np.testing.assert_allclose(lines[5].get_color(), viridis(middle), atol=1 / 255)

    for i, t in enumerate(result.trials):
        t.hparams = {"optimizer.name": ["sgd", "adam"][i % 2], "train.seed": i}
    fig = plots.curves_figure(result)
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert [t.get_text() for t in legend.get_texts()] == ["name=sgd", "name=adam"]
    lines = fig.axes[0].get_lines()
    assert lines[0].get_color() == lines[2].get_color() != lines[1].get_color()


@pytest.mark.slow
def test_interrupt_then_resume(tmp_path, capsys, monkeypatch, inproc):
    """Ctrl-C after the first chunk exits 130 with a resume hint; --resume finishes the sweep."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(config_lib.SweepConfig.from_dict(INPROC).to_dict()))
    out = tmp_path / "run"
    original = ProgressBar.on_chunk

    def interrupt(self, start, stop, history):
        original(self, start, stop, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(ProgressBar, "on_chunk", interrupt)
    assert main(["sweep", str(cfg), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"jaxtune sweep --out {out} --resume" in err and "Traceback" not in err
    assert json.loads((out / "results.json").read_text())["timing"]["steps_done"] == 10
    assert main(["show", str(out)]) == 0
    assert "interrupted at step 10 of 20" in capsys.readouterr().out

    monkeypatch.setattr(ProgressBar, "on_chunk", original)
    assert main(["sweep", "--out", str(out), "--resume"]) == 0  # CONFIG from out/config.toml
    capsys.readouterr()
    resumed = SweepResult.load(out)
    live, _, _ = inproc
    assert resumed.timing["steps_done"] == 20
    for a, b in zip(resumed.trials, live.trials, strict=True):
        assert a.diverged_step == b.diverged_step
        np.testing.assert_allclose(a.final["valid.accuracy"], b.final["valid.accuracy"])
    # The resumed runs purge and continue the TensorBoard curves.
    steps = sorted(
        {s for s, _ in tb_reader.scalars(out / "tb" / live.trials[0].name)["train/loss"]}
    )
    assert steps == list(range(20))
    # Resuming with a different configuration is refused before anything runs.
    assert main(["sweep", str(cfg), "--out", str(out), "--resume", "--set", "train.steps=30"]) == 2
    assert "train.steps" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Parser structure, TOML writer and the bundled examples.


def test_parser_is_extensible():
    parser = cli.build_parser()
    args = parser.parse_args(["sweep", "x.toml", "--set", "a=1", "--set", "b=2", "--out", "o"])
    assert (args.config, args.set, args.out, args.resume) == ("x.toml", ["a=1", "b=2"], "o", False)
    assert args.func is cli.cmd_sweep
    import argparse

    other = cli.add_config_arguments(argparse.ArgumentParser())
    assert other.parse_args([]).config is None


def test_the_version_has_one_source(capsys):
    import ast

    import jaxtune

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "jaxtune.__version__"
    # setuptools reads the literal statically; it must be the one the package reports.
    tree = ast.parse((REPO / "jaxtune" / "__init__.py").read_text())
    (literal,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]
    ]
    assert literal == jaxtune.__version__
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxtune {jaxtune.__version__}"


def test_to_toml_round_trips():
    data = {
        "a": {
            "s": 'q"uo\\te\n\x7f',
            "i": -3,
            "f": 1e-05,
            "g": 3.0,
            "h": 0.1,
            "b": True,
            "l": [1, 2],
            "ll": [[8], [16, 16]],
            "none": None,
        },
        "sweep": {
            "method": "grid",
            "grid": {"optimizer.learning_rate": [0.001, 1e30], "task.widths": [[8], [16]]},
            "space": {"x.y": {"distribution": "log_uniform", "low": 0.001, "high": 3.0}},
            "trials": [{"optimizer.learning_rate": 0.1}, {"optimizer.learning_rate": 0.2}],
        },
    }
    back = tomllib.loads(to_toml(data))
    expected = json.loads(json.dumps(data))
    del expected["a"]["none"]
    assert back == expected


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_examples_load(path):
    if path.name == "tune.toml":  # its [tune] table is read by `jaxtune tune`
        from jaxtune.search.tune_config import load_tune_config

        cfg, _ = load_tune_config(path)
        assert cfg.base["train.steps"] > 0
        return
    cfg = load_config(path)
    trials = config_lib.expand_trials(cfg)
    assert 2 <= len(trials) <= 32
    if path.name == "default.toml":
        assert cfg == config_lib.default_config()
    if path.name == "cnn_batchnorm.toml":
        assert {t["task.normalization"] for t in trials} == {"none", "batch"}
    if path.name == "quasi_random.toml":
        assert cfg.method == "quasi_random" and len(trials) == 16
