"""A sweep over a training split larger than the device budget, streamed from a memmap.

The example writes synthetic 32x32x3 images (the class templates of
``jaxtune.workloads.images`` under random shifts and noise) into an ``np.memmap`` on disk, a
block at a time, so the host never holds the whole split in memory. The sweep then trains a
small CNN at three learning rates with ``data.device_bytes`` set below the dataset's size:
``data.placement = "auto"`` keeps the training split on the host and streams each chunk's
batches (the same batches a device-resident sweep would train: the indices are the engine's
own), built one chunk ahead in a background thread. The validation split is small and goes on
the device.

Run::

    python examples/streaming.py           # 40,000 training images (~490 MB on disk)
    python examples/streaming.py --fast    # 2,000 images, a few steps (used by the tests)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import jaxtune
from jaxtune.workloads import images


def examples(templates: np.ndarray, n: int, rng: np.random.Generator, noise: float = 1.5):
    """``n`` images: each its class's template, cyclically shifted up to 8 px, plus noise."""
    y = rng.integers(0, len(templates), size=n).astype(np.int32)
    shifts = rng.integers(-8, 9, size=(n, 2))
    x = np.stack(
        [np.roll(templates[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts, strict=True)]
    )
    x = x + noise * rng.standard_normal(x.shape, dtype=np.float32)
    return (x / np.sqrt(1.0 + noise**2)).astype(np.float32), y


def write_memmap(path: Path, templates: np.ndarray, n: int, *, block: int = 2000):
    """``n`` training images and labels, written into ``path`` (a .npy memmap) block by block."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 32, 32, 3))
    labels = np.empty((n,), np.int32)
    rng = np.random.default_rng(1)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        x[lo:hi], labels[lo:hi] = examples(templates, hi - lo, rng)
    x.flush()
    return np.load(path, mmap_mode="r"), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="small data, few steps (for tests)")
    parser.add_argument("--n", type=int, help="training images (default 40000; 2000 with --fast)")
    args = parser.parse_args()
    n = args.n or (2000 if args.fast else 40_000)
    steps = 20 if args.fast else 300
    with tempfile.TemporaryDirectory() as tmp:
        templates = images.class_templates(10, seed=0).astype(np.float32)
        x, y = write_memmap(Path(tmp) / "train.npy", templates, n)
        valid = examples(templates, 500, np.random.default_rng(2))
        splits = jaxtune.Splits(train=(x, y), valid=valid, test=None)
        model = jaxtune.cnn(num_outputs=10, input_shape=(32, 32, 3), channels=(8, 16, 32))
        task = jaxtune.tasks.classification(model, splits)
        print(f"training split: {x.nbytes / 2**20:.0f} MiB memmap at {x.filename}")
        result = jaxtune.run_sweep(
            {
                "optimizer": {"name": "adam"},
                "train": {"steps": steps, "eval_every": steps // 4, "batch_size": 32},
                "data": {"device_bytes": x.nbytes // 4},  # below the data: "auto" streams
                "sweep": {"grid": {"optimizer.learning_rate": [1e-3, 3e-3, 1e-2]}},
            },
            task=task,
        )
        (data,) = result.timing["data"]
        print(
            f"placement: {data['placement']} (data {data['data_bytes'] / 2**20:.0f} MiB, device "
            f"budget {data['device_budget_bytes'] / 2**20:.0f} MiB; on the host: "
            f"{', '.join(data['host_splits'])})"
        )
        for t in result.ranked():
            print(f"  {t.name:24s} valid.accuracy {t.final['valid.accuracy']:.3f}")
        print(f"{result.timing['trial_steps_per_s']:.1f} trial-steps/s")


if __name__ == "__main__":
    main()
