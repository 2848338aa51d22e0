"""Host gather throughput: an in-memory array vs an ``np.memmap`` vs a grain source.

What a streamed training chunk costs on the host: the rows of ``--steps`` random batches of
``--batch`` rows each, read with :func:`jaxtune.data.stack_batches` (distinct rows read once, in
increasing order, then expanded to ``[steps, batch, ...]``) from a temporary float32 file of
``--mb`` MB. Sources:

* ``array``: the file read into memory (``np.fromfile``);
* ``memmap[warm]``: ``np.memmap`` of the file, pages already in the OS cache;
* ``memmap[cold]``: the same after ``posix_fadvise(DONTNEED)`` drops the file's cached pages
  before each chunk (a first read from disk; where the OS ignores the advice, it reads warm);
* ``grain``: ``grain.MapDataset.source`` over the memmap, one item read per index (no batched
  read), so the cost of a per-item source shows.

Prints one line per source (rows/s and MB/s, the median of ``--repeats`` chunks, after one
warm-up) and writes them as JSON (``--out``, default ``benchmarks/results/host_gather_cpu.json``).

Run::

    python benchmarks/host_gather.py            # 256 MB file, 16 x 256-row batches a chunk
    python benchmarks/host_gather.py --mb 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxtune import data as data_lib

ROW = (3, 32, 32)  # one float32 image a row: 12 KiB


class Rows:
    """A per-item data source over a memmap (``__len__`` and ``__getitem__`` only)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.array[i])


def _drop_cache(path: Path) -> None:
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _time(source, n: int, args, seed: int, before=None) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    times, unique = [], []
    for r in range(args.repeats + 1):
        idx = rng.integers(0, n, size=(args.steps, args.batch))
        if before is not None:
            before()
        start = time.perf_counter()
        chunk = data_lib.stack_batches(source, idx)
        elapsed = time.perf_counter() - start
        assert chunk.shape == (args.steps, args.batch, *ROW)
        if r:  # the first chunk is a warm-up
            times.append(elapsed)
            unique.append(len(np.unique(idx)))
    t = statistics.median(times)
    rows = args.steps * args.batch
    row_mb = np.prod(ROW) * 4 / 1e6
    return {
        "seconds_per_chunk": t,
        "rows_per_s": rows / t,
        "mb_per_s": rows * row_mb / t,
        "distinct_rows_per_chunk": statistics.median(unique),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="size of the temporary file")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16, help="batches in one chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/host_gather_cpu.json")
    args = parser.parse_args()

    row_bytes = int(np.prod(ROW)) * 4
    n = args.mb * 2**20 // row_bytes
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.f32"
        writer = np.memmap(path, np.float32, mode="w+", shape=(n, *ROW))
        rng = np.random.default_rng(0)
        for start in range(0, n, 4096):
            stop = min(n, start + 4096)
            writer[start:stop] = rng.standard_normal((stop - start, *ROW), np.float32)
        writer.flush()
        del writer
        memmap = np.memmap(path, np.float32, mode="r", shape=(n, *ROW))
        in_memory = np.fromfile(path, np.float32).reshape(n, *ROW)
        sources = {
            "array": (in_memory, None),
            "memmap[warm]": (memmap, None),
            "memmap[cold]": (memmap, lambda: _drop_cache(path)),
        }
        try:
            import grain

            sources["grain"] = (grain.MapDataset.source(Rows(memmap)), None)
        except ImportError:
            print("grain is not installed: no grain source (pip install 'jaxtune[grain]')")
        for name, (source, before) in sources.items():
            results[name] = _time(source, n, args, seed=1, before=before)
            r = results[name]
            print(
                f"{name:>13}: {r['rows_per_s']:>12,.0f} rows/s {r['mb_per_s']:>9,.1f} MB/s "
                f"({r['seconds_per_chunk'] * 1e3:.1f} ms a chunk of {args.steps}x{args.batch})"
            )
        del memmap
    record = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "file_mb": args.mb,
        "rows": n,
        "row_shape": list(ROW),
        "row_dtype": "float32",
        "steps": args.steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
