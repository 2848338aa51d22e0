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

    class StopAt(jaxtune.SweepCallback):
        def __init__(self, stop_at):
            self.stop_at = stop_at

        def on_chunk(self, start, stop, history):
            if stop == self.stop_at:
                raise KeyboardInterrupt

    def run(out, devices, resume, stop_at, cfg):
        cfg = {**cfg, "parallel": {"devices": devices}}
        try:
            r = jaxtune.run_sweep(cfg, out_dir=out, resume=resume, callbacks=[StopAt(stop_at)])
        except KeyboardInterrupt:
            return "stopped"
        if jax.process_index() != 0:
            return "other process"  # process 0 reports for everyone
        leaves = lambda t: jax.tree.leaves(r.trial_state(t.id).params)
        params = {t.id: [np.asarray(x).tolist() for x in leaves(t)]
                  for t in r.trials if t.stopped_step is None}
        return {"devices": r.timing["devices"], "groups": r.timing["groups"],
                "local": len(jax.devices()), "params": params,
                "diverged": {str(t.id): t.diverged_step for t in r.trials},
                "placement": r.timing["data"][0]["placement"],
                "rungs": r.search.get("rungs")}

    # One process runs the jobs in order (one JAX start-up, one in-memory compile cache).
    for job in json.loads(sys.argv[1]):
        print(json.dumps(run(**job)), flush=True)
    """
)


def _runs(tmp_path, jobs, *, forced=4):
    """Run ``jobs`` (``(out, devices, resume, stop_at, cfg)``) in order in one subprocess with
    ``forced`` CPU devices; each job's report (None for a job stopped at ``stop_at``)."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    # Forced host devices are CPU devices: JAX_PLATFORMS=cpu keeps a GPU or TPU out of the mesh.
    env = dict(
        os.environ,
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={forced}".strip(),
        JAX_PLATFORMS="cpu",
    )
    payload = [
        {"out": str(o), "devices": d, "resume": r, "stop_at": s, "cfg": c} for o, d, r, s, c in jobs
    ]
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()[-len(jobs) :]
    return [None if line == '"stopped"' else json.loads(line) for line in lines]


def _run(tmp_path, out, devices, *, resume=False, stop_at=-1, forced=4, cfg=CFG):
    return _runs(tmp_path, [(out, devices, resume, stop_at, cfg)], forced=forced)[0]


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
    return {
        "devices": r.timing["devices"],
        "params": params,
        "rungs": r.search.get("rungs"),
        "diverged": {str(t.id): t.diverged_step for t in r.trials},
    }


def _close(a, b):
    """Every trial's parameters equal. A diverged trial's (one of learning rate 1e30, which
    amplifies the last-bit differences of summation orders 1e30-fold) only to their scale:
    its last finite state, not its starting one (~0.1) and not a non-finite one."""
    for trial in a["params"]:
        for x, y in zip(a["params"][trial], b["params"][trial], strict=True):
            x, y = np.asarray(x), np.asarray(y)
            if a.get("diverged", {}).get(trial) is None:
                np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
                continue
            assert np.isfinite(x).all() and np.isfinite(y).all()
            scale = np.log10(np.abs(x).max() + 1e-30) - np.log10(np.abs(y).max() + 1e-30)
            assert abs(scale) < 1, (trial, np.abs(x).max(), np.abs(y).max())


#: CFG with a learning rate that diverges in the first chunk: its trials are replayed
#: (jaxtune/engine/quarantine.py) on the sharded state of a device-resident run.
DIVERGING = {
    **CFG,
    "sweep": {
        **CFG["sweep"],
        "grid": {**CFG["sweep"]["grid"], "optimizer.learning_rate": [0.01, 0.1, 0.3, 1e30]},
    },
}


#: A conv net's seed sweep driven from the host: every trial shuffles its own batches, and
#: the shuffle program's outputs must be split over the devices as the steps program takes them.
CNN_SEEDS = {
    "task": {"dataset": "synthetic", "model": "cnn", "widths": [4]},
    "optimizer": {"name": "sgd"},
    "train": {"steps": 20, "eval_every": 10, "batch_size": 16, "execution": "host/vmap"},
    "sweep": {"seeds": 2, "grid": {"optimizer.learning_rate": [0.01, 0.1]}},
}


@pytest.mark.accelerator
def test_sharded_sweep_equals_single_device_and_resumes_on_fewer_devices(tmp_path):
    one = _in_process(tmp_path / "one", cfg=DIVERGING)
    one_cnn = _in_process(tmp_path / "one_cnn", cfg=CNN_SEEDS)
    # Streamed from the host, checkpointed on 4 devices at step 20, resumed on 2 (a mesh of
    # two of the four devices): the same trials as device-resident data on one device.
    host = {**DIVERGING, "data": {"placement": "host"}}
    four, stopped, two, cnn = _runs(
        tmp_path,
        [
            (tmp_path / "four", 4, False, -1, DIVERGING),
            (tmp_path / "elastic", 4, False, 20, host),
            (tmp_path / "elastic", 2, True, -1, host),
            (tmp_path / "cnn", 2, False, -1, CNN_SEEDS),
        ],
    )
    assert cnn["devices"] == 2
    _close(one_cnn, cnn)
    assert one["devices"] == 1 and four["devices"] == 4 and four["local"] == 4
    # 16 trials over 4 devices: the call is padded to a multiple of 4 and the padding dropped.
    assert all(g["trials_per_call"] % 4 == 0 for g in four["groups"])
    assert len(four["params"]) == 16
    diverged = {k: v for k, v in one["diverged"].items() if v is not None}
    assert len(diverged) == 4 and all(v < 10 for v in diverged.values())
    assert min(np.abs(np.asarray(x)).max() for x in one["params"][next(iter(diverged))]) > 1e6
    assert four["diverged"] == two["diverged"] == one["diverged"]
    _close(one, four)
    assert stopped is None
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
        job = {"out": str(tmp_path / "multi"), "devices": 2, "resume": False, "stop_at": -1}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), json.dumps([{**job, "cfg": cfg}])],
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
