"""Runs every example in ``--fast`` mode as a subprocess and checks what it prints.

compose_optimizer and custom_task's TOML through ``jaxtune sweep`` run by default; lr_sweep,
custom_task.py, init_and_norm and batch_size_sweep (several programs each) are marked slow
(``pytest -m slow``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 300) -> str:
    """Runs ``examples/<name> --fast [args]``; returns its stdout (fails with its stderr)."""
    cmd = [sys.executable, str(EXAMPLES / name), "--fast", *args]
    try:
        proc = subprocess.run(
            cmd, check=True, timeout=timeout, capture_output=True, text=True, cwd=EXAMPLES.parent
        )
    except subprocess.CalledProcessError as err:
        pytest.fail(f"{name} exited with {err.returncode}:\n{err.stdout}\n{err.stderr[-4000:]}")
    return proc.stdout


def test_compose_optimizer() -> None:
    out = run_example("compose_optimizer.py")
    assert "max |update(by hand) - update(make_optimizer)| over 12 steps: 0\n" in out
    assert "equals make_optimizer" in out
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
    # 40 steps of a 16-unit MLP: far from converged, but well above chance (10%).
    assert 0.3 < accuracy <= 1.0, out


@pytest.mark.slow
def test_lr_sweep() -> None:
    out = run_example("lr_sweep.py", "--num-lrs", "4")
    assert "8 trials x 20 steps" in out
    table = out.split("Trials ranked")[1].split("best:")[0]
    rows = [line for line in table.splitlines() if re.match(r"\s+\d+\s", line)]
    assert len(rows) == 8, out
    accs = [float(row.split()[3]) for row in rows]
    non_diverged = [acc for acc, row in zip(accs, rows, strict=True) if row.endswith("-")]
    assert non_diverged == sorted(non_diverged, reverse=True), "table is not ranked"
    assert re.search(r"best: \d{3}-lr=[0-9.e-]+,seed=\d\s+valid accuracy 0\.\d{4}", out), out
    aggregate = out.split("result.aggregate(over='train.seed')")[1]
    rows = [line for line in aggregate.splitlines() if re.match(r"\s+[0-9.]+\s+2\s", line)]
    assert len(rows) == 4, out  # one row per learning rate, n = 2 seeds each


@pytest.mark.slow
def test_init_and_norm() -> None:
    out = run_example("init_and_norm.py", timeout=600)
    section1 = out.split("2. Activation std")[0]
    presets = re.findall(r"^\s+(\w+)\s+([0-9.]+)\s+([0-9.]+)$", section1, flags=re.MULTILINE)
    assert [p[0] for p in presets] == [
        "he_normal",
        "he_uniform",
        "glorot_normal",
        "glorot_uniform",
        "lecun_normal",
        "lecun_uniform",
        "normal",
    ]
    for name, empirical, closed in presets:
        assert float(empirical) == pytest.approx(float(closed), rel=0.05), name
    assert "bias max |b| = 0.0" in out
    stds = {
        m.group(1): [float(v) for v in m.group(2).split()]
        for m in re.finditer(r"^\s+(he_normal|normal\(1\.0\)|normal\(0\.01\))\s+(.+)$", out, re.M)
    }
    assert 0.3 < stds["he_normal"][-1] < 3  # preserved
    assert stds["normal(1.0)"][-1] > 1e3  # explodes
    assert stds["normal(0.01)"][-1] < 1e-3  # vanishes
    for norm in ("none", "batch", "layer", "group"):
        assert re.search(rf"^\s+{norm}(\s+([0-9.]+|nan)){{2}}$", out, re.M), norm
    assert "8 trials in 4 programs" in out


@pytest.mark.slow
def test_batch_size_sweep() -> None:
    out = run_example("batch_size_sweep.py", timeout=600)
    assert "batch sizes [32, 64, 128] gathered at 128, batch utilization 58%" in out
    assert "batch sizes [16] gathered at 16, batch utilization 100%" in out
    rows = re.findall(r"^\s+(16|32|64|128)\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)", out, re.M)
    assert len(rows) == 12, out
    assert "best: " in out


@pytest.mark.slow
def test_custom_task() -> None:
    out = run_example("custom_task.py")
    assert "12 trials x 30 steps in 1 compiled group(s)" in out, out
    header = out.splitlines()[2].split()
    assert header[:6] == ["rank", "name", "learning_rate", "huber_delta", "beta2", "train.loss"]
    assert header[6] == "valid.mse"  # the selection metric comes first
    assert re.search(r"chosen on valid.mse: \d{3}-\S+ \(valid.mse [0-9.]+\); its test.mse", out)


def test_custom_task_toml_through_the_command_line(tmp_path: Path) -> None:
    """``task.factory`` / ``optimizer.factory`` from TOML: user hparams reach results, the
    table and TensorBoard's hparams; ``show`` reads it back."""
    import json

    from tb_reader import events as read_events
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxtune.cli", "sweep", str(EXAMPLES / "custom_task.toml")]
    cmd += ["--out", str(out), "--set", "train.steps=20", "--set", "train.eval_every=10"]
    cmd += ["--set", "checkpoint.every=10", "--set", "task.widths=[8]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "choosing on valid.mse (min)" in proc.stderr
    blob = json.loads((out / "results.json").read_text())
    assert blob["select"]["metric"] == "valid.mse"
    assert set(blob["trials"][0]["hparams"]) == {
        "optimizer.learning_rate",
        "hparams.huber_delta",
        "hparams.beta2",
    }
    assert "huber_delta" in proc.stdout.splitlines()[1]
    run = out / "tb" / blob["trials"][5]["name"]
    starts = [
        v
        for ev in read_events(run)
        for v in ev.summary.value
        if v.tag == "_hparams_/session_start_info"
    ]
    hp = HParamsPluginData.FromString(starts[0].metadata.plugin_data.content)
    recorded = hp.session_start_info.hparams["hparams.huber_delta"].number_value
    assert recorded == blob["trials"][5]["hparams"]["hparams.huber_delta"]
    show = subprocess.run(
        [sys.executable, "-m", "jaxtune.cli", "show", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0 and "best by valid.mse (min)" in show.stdout


def test_streaming_streams_a_memmap_larger_than_the_device_budget() -> None:
    out = run_example("streaming.py")
    assert "placement: host" in out and "on the host: train" in out
    assert out.count("valid.accuracy") == 3
