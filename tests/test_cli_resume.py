"""``jaxtune sweep`` interrupted with Ctrl-C, then ``--resume``: the same results as an
uninterrupted run, TensorBoard curves continued without repeats, a changed configuration
refused."""

import json

import numpy as np
import pytest
import tb_reader
from cli_common import INPROC

from jaxtune import config as config_lib
from jaxtune.cli import main
from jaxtune.config import to_toml
from jaxtune.engine import SweepResult, run_sweep
from jaxtune.report.progress import ProgressBar


@pytest.mark.slow
def test_interrupt_then_resume(tmp_path, capsys, monkeypatch):
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
    live = run_sweep(INPROC)
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


FACTORY = """
import jax.numpy as jnp
import jaxtune
from jaxtune.tasks import make_regression_data

def make(structure):
    return jaxtune.Task(
        init=lambda key, hp: ({"w": jnp.zeros((4,))}, {}),
        apply=lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s),
        loss=lambda out, y, hp: (out - y) ** 2,
        metrics=lambda out, y: {"mae": jnp.abs(out - y)},
        data=make_regression_data(num_features=4),
    )
"""


def test_resume_without_config_imports_the_factory_from_the_first_runs_folder(
    tmp_path, capsys, monkeypatch
):
    """``jaxtune sweep --out DIR --resume`` (the command an interrupted sweep prints) finds a
    ``task.factory`` that lives beside the original config, not in DIR; the resumed sweep
    ends where an uninterrupted one does."""
    import sys

    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir(), elsewhere.mkdir()
    (proj / "resume_factory_task.py").write_text(FACTORY)
    d = {
        "task": {"factory": "resume_factory_task:make"},
        "optimizer": {"name": "sgd"},
        "train": {"steps": 20, "eval_every": 10, "batch_size": 16},
        "select": {"metric": "valid.mae", "mode": "min"},
        "checkpoint": {"every": 10},
        "log": {"tensorboard": False, "plots": False},
        "sweep": {"grid": {"optimizer.learning_rate": [0.01, 0.05]}},
    }
    (proj / "cfg.toml").write_text(to_toml(d))
    monkeypatch.chdir(elsewhere)
    original = ProgressBar.on_chunk

    def interrupt(self, start, stop, history):
        original(self, start, stop, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(ProgressBar, "on_chunk", interrupt)
    assert main(["sweep", "../proj/cfg.toml", "--out", "runs/a"]) == 130
    assert "jaxtune sweep --out runs/a --resume" in capsys.readouterr().err
    monkeypatch.setattr(ProgressBar, "on_chunk", original)
    monkeypatch.delitem(sys.modules, "resume_factory_task")  # imported again on resume
    assert main(["sweep", "--out", "runs/a", "--resume"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    resumed = SweepResult.load(elsewhere / "runs" / "a")
    monkeypatch.delitem(sys.modules, "resume_factory_task")
    assert main(["sweep", "../proj/cfg.toml", "--out", "runs/whole"]) == 0
    whole = SweepResult.load(elsewhere / "runs" / "whole")
    assert resumed.timing["steps_done"] == 20
    for a, b in zip(resumed.trials, whole.trials, strict=True):
        assert a.final["valid.mae"] == b.final["valid.mae"]
