"""``jaxtune sweep`` end to end: one subprocess run of a tiny synthetic 2x2 grid and every output
it writes (results, table, config, plots, TensorBoard runs, checkpoints), then ``show`` and
``plot`` on it."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tb_reader
from cli_common import TINY, run_cli

from jaxtune import config as config_lib
from jaxtune.cli import main
from jaxtune.config import load_config


def _scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(pairs) for tag, pairs in tb_reader.scalars(run_dir).items()}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "tiny.toml"
    cfg.write_text(TINY)
    out = d / "run"
    proc = run_cli("sweep", str(cfg), "--out", str(out), cwd=d)
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


@pytest.mark.parametrize("text", ["{not json", "[1]", '{"config": 3, "trials": []}'])
def test_show_of_a_file_that_is_not_a_results_file(text, tmp_path, capsys):
    (tmp_path / "results.json").write_text(text)
    assert main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a jaxtune results file" in err and "Traceback" not in err
