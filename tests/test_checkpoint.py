"""Orbax checkpoints: kill-and-resume is bit-identical, wrong configs and corrupt checkpoints."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxtune
from jaxtune.checkpoint import CheckpointWarning

CFG = {
    "task": {"dataset": "synthetic", "widths": [16], "normalization": "batch"},
    "optimizer": {"clip_norm": 1.0},
    "train": {"steps": 120, "eval_every": 10, "batch_size": 16},
    "checkpoint": {"every": 20, "max_to_keep": 3},
    "sweep": {"grid": {"optimizer.learning_rate": [0.01, 0.1], "train.batch_size": [16, 32]}},
}

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jaxtune

    class Slow(jaxtune.SweepCallback):
        def on_chunk(self, start, stop, history):
            print("chunk", stop, flush=True)
            time.sleep(0.3)

    cfg = {cfg!r}
    jaxtune.run_sweep(cfg, out_dir=sys.argv[1], resume=sys.argv[2] == "1", callbacks=[Slow()])
    print("done", flush=True)
    """
)


def _assert_same_run(a: Path, b: Path, n_trials: int) -> None:
    ra, rb = jaxtune.SweepResult.load(a), jaxtune.SweepResult.load(b)
    assert [t.final for t in ra.trials] == [t.final for t in rb.trials]
    for k in ra.history:
        assert np.array_equal(ra.history[k], rb.history[k], equal_nan=True), k
    for i in range(n_trials):
        va, vb = jaxtune.export_trial(a, i), jaxtune.export_trial(b, i)
        for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb), strict=True):
            assert np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    jaxtune.run_sweep(CFG, out_dir=out)
    return out


def _start(tmp_path):
    """Start the slowed-down sweep in a subprocess; returns (process, script, out dir)."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(cfg=CFG))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, script, out


@pytest.mark.accelerator
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference):
    proc, script, out = _start(tmp_path)
    with proc:
        for line in proc.stdout:
            if line.strip() == "chunk 50":
                break
        assert (out / "checkpoints" / "40").is_dir()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "results.json").exists()
    done = subprocess.run(
        [sys.executable, str(script), str(out), "1"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chunk 50\n" in done.stdout and "chunk 30\n" not in done.stdout
    _assert_same_run(out, reference, 4)


@pytest.mark.slow
def test_ctrl_c_stops_at_a_chunk_boundary_with_a_final_checkpoint(tmp_path, reference):
    proc, script, out = _start(tmp_path)
    with proc:
        for line in proc.stdout:
            if line.strip() == "chunk 30":
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] % 10 == 0 and 30 <= steps[-1] < 120
    interrupted = jaxtune.SweepResult.load(out)
    assert interrupted.timing["interrupted"] and interrupted.timing["steps_done"] == steps[-1]
    done = subprocess.run(
        [sys.executable, str(script), str(out), "1"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_run(out, reference, 4)


def test_resume_with_a_different_config_is_refused(tmp_path):
    cfg = {**CFG, "train": {**CFG["train"], "steps": 20}}
    jaxtune.run_sweep(cfg, out_dir=tmp_path)
    written = (tmp_path / "config.toml").read_text()
    changed = {**cfg, "optimizer": {"clip_norm": 2.0}, "train": {**cfg["train"], "seed": 3}}
    with pytest.raises(
        jaxtune.ConfigError, match=r"optimizer.clip_norm \(stored 1.0, now 2.0\), train.seed"
    ):
        jaxtune.run_sweep(changed, out_dir=tmp_path, resume=True)
    # A fresh run into a directory with checkpoints would overwrite them: refused too.
    with pytest.raises(jaxtune.ConfigError, match="already holds checkpoints"):
        jaxtune.run_sweep({**changed, "train": cfg["train"]}, out_dir=tmp_path)
    # Neither refused call rewrote the run's configuration (`--resume` without CONFIG reads it).
    assert (tmp_path / "config.toml").read_text() == written


# Orbax's restore of a damaged file fails (as it should); the tensorstore reads still in flight
# then call back into the event loop Orbax already closed, which pytest reports as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    class StopAt(jaxtune.SweepCallback):
        def on_chunk(self, start, stop, history):
            if stop == 60:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jaxtune.run_sweep(CFG, out_dir=tmp_path, callbacks=[StopAt()])
    latest = tmp_path / "checkpoints" / "60"
    assert latest.is_dir()
    files = sorted(p for p in (latest / "state").rglob("*") if p.is_file() and p.stat().st_size)
    victim = max(files, key=lambda p: p.stat().st_size)
    blob = bytearray(victim.read_bytes())
    for i in range(0, len(blob), 7):
        blob[i] ^= 0xFF
    victim.write_bytes(bytes(blob))
    with pytest.warns(CheckpointWarning, match="step 60"):
        jaxtune.run_sweep(CFG, out_dir=tmp_path, resume=True)
    _assert_same_run(tmp_path, reference, 4)


def test_half_written_checkpoint_is_ignored(tmp_path, reference):
    class StopAt(jaxtune.SweepCallback):
        def on_chunk(self, start, stop, history):
            if stop == 40:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jaxtune.run_sweep(CFG, out_dir=tmp_path, callbacks=[StopAt()])
    # What a crash during a write leaves: Orbax's temporary directory, never renamed.
    partial = tmp_path / "checkpoints" / "60.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    t0 = time.time()
    jaxtune.run_sweep(CFG, out_dir=tmp_path, resume=True)
    assert time.time() - t0 < 300
    _assert_same_run(tmp_path, reference, 4)


def test_a_format_1_checkpoint_is_refused_naming_the_format(tmp_path):
    """A checkpoint folder as jaxtune 0.2 wrote it (Orbax items ``state``, ``history`` and a
    JSON ``meta``; the configuration in ``sweep.json``): resuming it names both formats and
    leaves the checkpoints as they were."""
    import json

    import orbax.checkpoint as ocp

    cfg = {**CFG, "train": {**CFG["train"], "steps": 20}}
    ckpt = tmp_path / "checkpoints"
    manager = ocp.CheckpointManager(
        ckpt,
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
        item_names=("state", "history", "meta"),
    )
    manager.save(
        20,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave([[np.zeros((4, 3), np.float32)]]),
            history=ocp.args.StandardSave({"train.loss": np.zeros((4, 20), np.float32)}),
            meta=ocp.args.JsonSave({"layout": [], "members": [[0, 1, 2, 3]], "digest": "0"}),
        ),
    )
    manager.wait_until_finished()
    manager.close()
    stored = jaxtune.SweepConfig.from_dict(cfg).to_dict()
    (ckpt / "sweep.json").write_text(json.dumps({"config": stored}))
    before = sorted((p.relative_to(ckpt), p.stat().st_size) for p in ckpt.rglob("*"))
    with pytest.raises(jaxtune.ConfigError, match="format 1") as err:
        jaxtune.run_sweep(cfg, out_dir=tmp_path, resume=True)
    assert "format 2" in str(err.value)
    after = sorted((p.relative_to(ckpt), p.stat().st_size) for p in ckpt.rglob("*"))
    assert after == before


def test_an_error_of_the_caller_while_restoring_leaves_the_checkpoint_intact(tmp_path):
    """Only a checkpoint that fails to read is moved aside as corrupt: an error of the code
    that rebuilds what it is restored into (out of memory, a failing compile, a user factory)
    propagates, and the checkpoint stays where it was."""
    from jaxtune.checkpoint import SweepCheckpointer

    cfg = jaxtune.SweepConfig.from_dict(CFG)
    state = {"params": {"w": np.arange(4, dtype=np.float32)}}
    history = {"train.loss": np.ones((1, 4), np.float32)}
    ckpt = SweepCheckpointer(tmp_path / "checkpoints", cfg)
    ckpt.save(10, [state], history, [[0]])
    ckpt.close()

    def failing(extra):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")

    again = SweepCheckpointer(tmp_path / "checkpoints", cfg, resume=True)
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        again.restore_latest(failing)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "metadata"]
    step, states, restored, _ = again.restore_latest(lambda extra: ([state], [[0]]))
    again.close()
    assert step == 10
    np.testing.assert_array_equal(states[0]["params"]["w"], state["params"]["w"])


def test_a_second_ctrl_c_while_the_states_change_writes_no_checkpoint(tmp_path, monkeypatch):
    """A Ctrl-C that lands inside a dispatch leaves the states a chunk ahead of the recorded
    history: the sweep stops without checkpointing them, and resuming from the last good
    checkpoint gives the uninterrupted run."""
    from jaxtune.engine import loop

    cfg = {**CFG, "train": {**CFG["train"], "steps": 40}}
    whole = jaxtune.run_sweep(cfg)
    original = loop._dispatch

    def torn(population, start, length):
        chunk = original(population, start, length)
        if start == 30:  # the states now hold step 40; the chunk [20, 30) is not yet recorded
            raise KeyboardInterrupt
        return chunk

    monkeypatch.setattr(loop, "_dispatch", torn)
    with pytest.raises(KeyboardInterrupt):
        jaxtune.run_sweep(cfg, out_dir=tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [20]
    monkeypatch.setattr(loop, "_dispatch", original)
    resumed = jaxtune.run_sweep(cfg, out_dir=tmp_path, resume=True)
    for k in whole.history:
        np.testing.assert_array_equal(resumed.history[k], whole.history[k], err_msg=k)
