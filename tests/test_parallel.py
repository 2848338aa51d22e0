"""Trials sharded over several devices (forced CPU devices in a subprocess)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

CFG = {
    "task": {"dataset": "synthetic", "widths": [16], "normalization": "batch"},
    "optimizer": {"clip_norm": 1.0},
    "train": {"steps": 40, "eval_every": 10, "batch_size": 16},
    "checkpoint": {"every": 20},
    "sweep": {
        "seeds": 2,
        "grid": {"optimizer.learning_rate": [0.01, 0.1, 0.3], "train.batch_size": [16, 24]},
    },
}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    import jaxtune

    out, devices, resume, stop_at = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    cfg = json.loads(sys.argv[5])
    cfg["parallel"] = {{"devices": int(devices)}}

    class StopAt(jaxtune.SweepCallback):
        def on_chunk(self, start, stop, history):
            if stop == stop_at:
                raise KeyboardInterrupt

    try:
        r = jaxtune.run_sweep(cfg, out_dir=out, resume=resume, callbacks=[StopAt()])
    except KeyboardInterrupt:
        print("stopped")
        raise SystemExit(0)
    if jax.process_index() != 0:
        raise SystemExit(0)  # process 0 reports for everyone
    params = {{t.id: [np.asarray(x).tolist() for x in jax.tree.leaves(r.trial_state(t.id).params)]
              for t in r.trials if t.stopped_step is None}}
    print(json.dumps({{"devices": r.timing["devices"], "groups": r.timing["groups"],
                      "local": len(jax.devices()), "params": params,
                      "placement": r.timing["data"][0]["placement"],
                      "rungs": r.search.get("rungs")}}))
    """
)


def _run(tmp_path, out, devices, *, resume=False, stop_at=-1, forced=4, cfg=CFG):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format())
    # Forced host devices are CPU devices: JAX_PLATFORMS=cpu keeps a GPU or TPU out of the mesh.
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={forced}",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(out),
            str(devices),
            "1" if resume else "0",
            str(stop_at),
            json.dumps(cfg),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return None if last == "stopped" else json.loads(last)


def _in_process(out, cfg=CFG):
    """The sweep on this process's one CPU device, reported as the script reports it."""
    import jax

    import jaxtune

    assert jax.device_count() == 1
    r = jaxtune.run_sweep(cfg, out_dir=out)
    params = {
        str(t.id): [np.asarray(x).tolist() for x in jax.tree.leaves(r.trial_state(t.id).params)]
        for t in r.trials
        if t.stopped_step is None
    }
    return {"devices": r.timing["devices"], "params": params, "rungs": r.search.get("rungs")}


def _close(a, b):
    for trial in a["params"]:
        for x, y in zip(a["params"][trial], b["params"][trial], strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


@pytest.mark.accelerator
def test_sharded_sweep_equals_single_device_and_resumes_on_fewer_devices(tmp_path):
    one = _in_process(tmp_path / "one")
    four = _run(tmp_path, tmp_path / "four", 4)
    assert one["devices"] == 1 and four["devices"] == 4 and four["local"] == 4
    # 12 trials over 4 devices: the call is padded to a multiple of 4 and the padding dropped.
    assert all(g["trials_per_call"] % 4 == 0 for g in four["groups"])
    assert len(four["params"]) == 12
    _close(one, four)
    # Streamed from the host, checkpointed on 4 devices at step 20, resumed on 2: the same
    # trials as device-resident data on one device.
    host = {**CFG, "data": {"placement": "host"}}
    assert _run(tmp_path, tmp_path / "elastic", 4, stop_at=20, cfg=host) is None
    two = _run(tmp_path, tmp_path / "elastic", 2, resume=True, cfg=host)
    assert two["devices"] == 2 and two["placement"] == "host"
    _close(one, two)


@pytest.mark.slow
@pytest.mark.accelerator
def test_halving_survivors_are_repadded_to_the_devices_and_resume(tmp_path):
    """Rungs of 12 -> 4 -> 2 trials over 4 devices (then 1 trial padded to 4) equal one device,
    and a sweep killed mid-rung on 4 devices resumes on 2."""
    cfg = {
        **CFG,
        "halving": {"eta": 3.0, "min_steps": 10},
        "sweep": {**CFG["sweep"], "strategy": "halving"},
    }
    one = _run(tmp_path, tmp_path / "one", 1, cfg=cfg)
    four = _run(tmp_path, tmp_path / "four", 4, cfg=cfg)
    assert four["devices"] == 4 and [len(r["trials"]) for r in four["rungs"]] == [12, 4]
    assert four["rungs"] == one["rungs"]
    _close(one, four)
    assert _run(tmp_path, tmp_path / "elastic", 4, stop_at=20, cfg=cfg) is None
    two = _run(tmp_path, tmp_path / "elastic", 2, resume=True, cfg=cfg)
    assert two["rungs"] == one["rungs"]
    _close(one, two)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost_equal_one_process(tmp_path):
    one = _run(tmp_path, tmp_path / "one", 1, forced=1)
    script = tmp_path / "run.py"
    port = _free_port()
    cfg = dict(CFG)
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            JAX_PLATFORMS="cpu",  # one CPU device per process, gloo collectives
        )
        env.pop("XLA_FLAGS", None)
        args = [sys.executable, str(script), str(tmp_path / "multi"), "2", "0", "-1"]
        procs.append(
            subprocess.Popen(
                [*args, json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outs = [p.communicate(timeout=900) for p in procs]
    errors = "\n".join(f"process {i}: {err[-2000:]}" for i, (_, err) in enumerate(outs))
    assert all(p.returncode == 0 for p in procs), errors
    first = json.loads(outs[0][0].strip().splitlines()[-1])
    assert first["devices"] == 2 and first["local"] == 2
    _close(one, first)
    # Process 0 wrote the results; checkpoints were written by both through Orbax.
    assert (tmp_path / "multi" / "results.json").exists()
    assert (tmp_path / "multi" / "checkpoints" / "40").is_dir()
