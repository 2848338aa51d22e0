#!/usr/bin/env python
"""Streaming from the host against device-resident data, side by side in one run.

Two comparisons, each in interleaved rounds (every round runs both sides once, after one
untimed run of each that compiles; the ratio is the median over rounds of the round's ratio of
training rates, ``timing["trial_steps_per_s"]``, which leaves compilation out):

1. ``digits``: the digits MLP 64-256-256-10, batch 128, an N-point learning-rate sweep of momentum
   SGD (one seed: the trials share their batches), ``data.placement = "host"`` against
   ``"device"``. The digits are small, so this measures what streaming itself costs: the host
   gathers and stacks each chunk's batches and copies them to the device, one chunk ahead.
2. ``memmap``: synthetic 32x32x3 images (class templates under random cyclic shifts and noise,
   as ``jaxtune.workloads.images``), written at benchmark time into an ``np.memmap`` of about
   ``--gib`` GiB (deleted afterwards), trained with ``data.device_bytes`` set to a quarter of
   its size so that ``data.placement = "auto"`` streams it; against the same sweep on a
   device-resident subset of ``--subset`` examples held in memory. Both train the same model
   for the same steps; only where the batches come from differs. While the memmap sweep runs, a
   thread samples the process's resident memory (``RssAnon``: the heap; ``RssFile``: pages of
   the memmap the kernel has mapped in, which it can drop at will), and the peaks are reported
   beside the dataset's size.

Run::

    python benchmarks/streaming.py --quick        # small memmap, a smoke run
    python benchmarks/streaming.py --out benchmarks/results/streaming_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxtune
from jaxtune.workloads import images

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def rss() -> dict[str, int]:
    """The process's resident memory by kind, in bytes (Linux ``/proc/self/status``)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Samples :func:`rss` every ``interval`` seconds in a thread; keeps the peaks."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, v in rss().items():
                self.peak[k] = max(v, self.peak.get(k, 0))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rounds(sides: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Runs every side once untimed (compiles), then ``repeats`` interleaved rounds."""
    for name, run in sides.items():
        log(f"  compile {name}")
        run()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, Any] = {}
    for r in range(repeats):
        for name, run in sides.items():
            results[name] = run()
            rates[name].append(results[name].timing["trial_steps_per_s"])
            log(f"  round {r}: {name} {rates[name][-1]:.1f} trial-steps/s")
    return {"rates": rates, "results": results}


def ratio(rates: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    per_round = [a / b for a, b in zip(rates[num], rates[den], strict=True)]
    q = np.quantile(per_round, [0.25, 0.75])
    return {"median": statistics.median(per_round), "q25": float(q[0]), "q75": float(q[1])}


def digits(args) -> dict[str, Any]:
    lrs = [float(v) for v in 0.1 * np.geomspace(1 / 3, 3, args.n)]

    def sweep(placement: str):
        return lambda: jaxtune.run_sweep(
            {
                "optimizer": {"name": "momentum", "momentum": 0.9},
                "train": {"steps": args.steps, "eval_every": 50, "batch_size": 128},
                "data": {"placement": placement},
                "sweep": {"grid": {"optimizer.learning_rate": lrs}},
            }
        )

    log(f"digits MLP, N={args.n}, {args.steps} steps")
    out = rounds({"device": sweep("device"), "host": sweep("host")}, args.repeats)
    host, device = out["results"]["host"], out["results"]["device"]
    same = all(  # NaN-aware: a diverged trial's final metrics are NaN on both sides
        np.array_equal(
            [a.final[k] for k in sorted(a.final)],
            [b.final[k] for k in sorted(b.final)],
            equal_nan=True,
        )
        for a, b in zip(host.trials, device.trials, strict=True)
    )
    return {
        "n": args.n,
        "steps": args.steps,
        "rates": out["rates"],
        "host_over_device": ratio(out["rates"], "host", "device"),
        "placement": {k: r.timing["data"] for k, r in out["results"].items()},
        "execution": {k: r.timing["execution"] for k, r in out["results"].items()},
        "finals_equal": same,
    }


def write_memmap(path: Path, n: int, *, block: int = 8192, seed: int = 0):
    """``n`` images and labels; the images written into ``path`` (a .npy memmap) block by block,
    so the host never holds more than one block."""
    templates = images.class_templates(10, seed=seed).astype(np.float32)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 32, 32, 3))
    labels = np.empty((n,), np.int32)
    rng = np.random.default_rng(seed + 1)
    for lo in range(0, n, block):
        x[lo : lo + block], labels[lo : lo + block] = sample(templates, min(block, n - lo), rng)
    x.flush()
    del x
    return np.load(path, mmap_mode="r"), labels, templates


def sample(templates: np.ndarray, n: int, rng: np.random.Generator, noise: float = 1.5):
    """``n`` images: a class template cyclically shifted by up to 8 pixels, plus pixel noise."""
    y = rng.integers(0, len(templates), size=n).astype(np.int32)
    dy, dx = rng.integers(-8, 9, size=(2, n))
    rows = (np.arange(32)[None, :] - dy[:, None]) % 32
    cols = (np.arange(32)[None, :] - dx[:, None]) % 32
    x = templates[y[:, None, None], rows[:, :, None], cols[:, None, :]]
    x += noise * rng.standard_normal(x.shape, dtype=np.float32)
    return x / np.float32(np.sqrt(1.0 + noise**2)), y


def memmap(args) -> dict[str, Any]:
    n = int(args.gib * 2**30 // (32 * 32 * 3 * 4))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        log(f"writing {n} images ({n * 12288 / 2**30:.2f} GiB) into a memmap")
        t = time.perf_counter()
        x, y, templates = write_memmap(Path(tmp) / "train.npy", n)
        write_s = time.perf_counter() - t
        valid = sample(templates, 500, np.random.default_rng(7))
        subset = (np.array(x[: args.subset]), y[: args.subset])
        model = jaxtune.cnn(num_outputs=10, input_shape=(32, 32, 3), channels=(8, 16, 32))
        lrs = [1e-3, 3e-3, 1e-2, 3e-2][: args.trials]

        def sweep(train, device_bytes):
            task = jaxtune.tasks.classification(model, jaxtune.Splits(train, valid, None))
            cfg = {
                "optimizer": {"name": "adam"},
                "train": {"steps": args.cnn_steps, "eval_every": args.cnn_steps, "batch_size": 64},
                "sweep": {"grid": {"optimizer.learning_rate": lrs}},
            }
            if device_bytes:
                cfg["data"] = {"device_bytes": device_bytes}
            return lambda: jaxtune.run_sweep(cfg, task=task)

        before = rss()
        log(f"CNN, {len(lrs)} trials, {args.cnn_steps} steps: memmap (streamed) vs subset")
        with PeakMemory() as peak:
            out = rounds(
                {"memmap": sweep((x, y), x.nbytes // 4), "subset": sweep(subset, 0)},
                args.repeats,
            )
        placements = {k: r.timing["data"] for k, r in out["results"].items()}
        return {
            "examples": n,
            "dataset_bytes": int(x.nbytes),
            "subset_examples": args.subset,
            "write_s": write_s,
            "trials": len(lrs),
            "steps": args.cnn_steps,
            "rates": out["rates"],
            "memmap_over_subset": ratio(out["rates"], "memmap", "subset"),
            "placement": placements,
            "execution": {k: r.timing["execution"] for k, r in out["results"].items()},
            "rss_before": before,
            "rss_peak": peak.peak,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32, help="digits trials")
    p.add_argument("--steps", type=int, default=400, help="digits steps")
    p.add_argument("--gib", type=float, default=4.0, help="size of the memmap")
    p.add_argument("--subset", type=int, default=20_000, help="device-resident examples")
    p.add_argument("--trials", type=int, default=4, help="CNN trials (at most 4)")
    p.add_argument("--cnn-steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tmp", default=None, help="folder for the memmap (default: the system's)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.quick:
        args.n, args.steps, args.gib, args.subset = 8, 100, 0.1, 2000
        args.trials, args.cnn_steps, args.repeats = 2, 10, 1
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "backend": jax.default_backend(),
            "devices": jax.device_count(),
            "jax": jax.__version__,
        },
        "args": vars(args),
        "digits": digits(args),
        "memmap": memmap(args),
    }
    d, m = report["digits"], report["memmap"]
    gib = 2**30
    print(
        f"digits MLP N={d['n']}: host / device placement "
        f"{d['host_over_device']['median']:.2f}x (finals equal: {d['finals_equal']})"
    )
    peak, before = m["rss_peak"], m["rss_before"]
    print(
        f"memmap {m['dataset_bytes'] / gib:.2f} GiB, streamed / device-resident subset of "
        f"{m['subset_examples']}: {m['memmap_over_subset']['median']:.2f}x; peak RssAnon "
        f"{peak.get('RssAnon', 0) / gib:.2f} GiB (before {before['RssAnon'] / gib:.2f}), "
        f"peak RssFile {peak.get('RssFile', 0) / gib:.2f} GiB"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
