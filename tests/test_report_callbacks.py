"""The callbacks of a live sweep, in process: the progress bar, the TensorBoard logger and the
ranked table of the result (one tiny sweep in which one trial diverges)."""

import io
import math

import pytest
import tb_reader
from cli_common import INPROC

from jaxtune.engine import run_sweep
from jaxtune.report.progress import ProgressBar, format_table
from jaxtune.report.tensorboard import TensorBoardLogger


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
    assert "valid/worst_examples" in tb_reader.tags(tb / good.name)


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


@pytest.mark.parametrize("stop_at", [10, 30])
def test_a_resumed_sweep_logs_every_step_exactly_once(stop_at, tmp_path):
    """Interrupted by a callback before the first checkpoint (the resume starts again from
    step 0 over the earlier logs), or in the last chunk (the checkpoint already holds every
    step, so the resume trains nothing): TensorBoard shows each step once, none missing."""
    from interrupts import StopAt

    cfg = {**INPROC, "train": {**INPROC["train"], "steps": 40}, "checkpoint": {"every": 20}}
    out, tb = tmp_path / "run", tmp_path / "run" / "tb"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out_dir=out, callbacks=[StopAt(stop_at), TensorBoardLogger(tb)])
    result = run_sweep(cfg, out_dir=out, resume=True, callbacks=[TensorBoardLogger(tb)])
    trial = result.trials[0]
    shown = tb_reader.visible_scalars(tb / trial.name)
    assert [s for s, _ in shown["train/loss"]] == list(range(40))
    assert [s for s, _ in shown["valid/loss"]] == [10, 20, 30, 40]
    assert shown["train/loss"][-1][1] == pytest.approx(float(result.history["train.loss"][0, -1]))


def test_one_logger_serves_sweeps_in_turn_each_in_its_own_folder(tmp_path):
    """Without ``log_dir``, a logger passed to several sweeps (as ``jaxtune bench`` passes one
    to every study) writes each sweep's runs under that sweep's own ``out_dir/tb``."""
    cfg = {**INPROC, "train": {**INPROC["train"], "steps": 10}, "checkpoint": {"every": 0}}
    logger = TensorBoardLogger(num_examples=0)
    results = [run_sweep(cfg, out_dir=tmp_path / d, callbacks=[logger]) for d in ("a", "b")]
    for d, result in zip(("a", "b"), results, strict=True):
        for trial in result.trials:
            shown = tb_reader.visible_scalars(tmp_path / d / "tb" / trial.name)
            steps = [s for s, _ in shown["train/loss"]]
            assert steps == sorted(set(steps)) and len(steps) >= 1, (d, trial.name)
