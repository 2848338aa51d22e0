"""What the chunk benchmarks share (quarantine.py, scan_unroll.py, folded_eval.py): timing
variants in rounds that alternate their order, median ratios, and the JSON they write."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax


def time_rounds(
    names: Sequence[str], run: Callable[[str, int], None], rounds: int, chunks: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process CPU seconds of ``chunks`` calls ``run(variant, c)`` per variant and
    round (chunks 0 and 1 compile and warm up first); every other round runs in reverse."""
    for v in names:
        run(v, 0)
        run(v, 1)
    wall: dict[str, list[float]] = {v: [] for v in names}
    cpu: dict[str, list[float]] = {v: [] for v in names}
    for r in range(rounds):
        for v in names if r % 2 == 0 else list(names)[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            for c in range(2, 2 + chunks):
                run(v, c)
            wall[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
    return wall, cpu


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of ``a``'s time over ``b``'s in the same round."""
    return statistics.median([x / y for x, y in zip(times[a], times[b], strict=True)])


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> list[float]:
    """The ``level`` confidence interval of the ratio ``a / b`` of two variants timed in the
    same rounds: the paired Student t interval (``scipy.stats.ttest_rel``) of the mean
    per-round log ratio, exponentiated. Rounds pair the two, so the machine's drift over the
    run cancels. NaN with fewer than 2 rounds.

    Example:
      >>> lo, hi = paired_interval([1.1, 1.0, 1.2, 1.05], [1.0, 0.95, 1.1, 1.0])
      >>> bool(lo < 1.07 < hi)
      True
    """
    from scipy import stats

    if len(a) < 2:
        return [math.nan, math.nan]
    logs_a, logs_b = [math.log(x) for x in a], [math.log(y) for y in b]
    ci = stats.ttest_rel(logs_a, logs_b).confidence_interval(level)
    return [math.exp(ci.low), math.exp(ci.high)]


def machine() -> dict[str, Any]:
    """The backend, the CPU model and its last-level cache: ratios between the engine and a
    hand-written baseline have moved with the CPU model before, so every result names it."""
    from jaxtune.engine.compile import _last_level_cache_bytes

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "last_level_cache_mib": _last_level_cache_bytes() / 2**20,
        "jax": jax.__version__,
    }


def write_rows(path: str | None, settings: Any, rows: list[dict]) -> None:
    """Write the rows, the settings and the machine as JSON to ``path`` (None: nothing)."""
    if not path:
        return
    doc = {
        "machine": machine(),
        "settings": vars(settings),
        "rows": rows,
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def parser(description: str, cases: str, case_help: str, *, rounds: int, chunk: int):
    """The command line the chunk benchmarks share: ``--cases``, ``--chunk``, ``--rounds``,
    ``--chunks`` and ``--out``."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cases", default=cases, help=case_help)
    ap.add_argument("--chunk", type=int, default=chunk, help="steps per chunk")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--chunks", type=int, default=4, help="chunks per variant and round")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    return ap


def run_cases(args: Any, measure: Callable[..., dict], *extra: Any) -> int:
    """``measure(workload, n, third, *extra, chunk, rounds, chunks)`` for every
    ``WORKLOAD:N:THIRD`` of ``--cases``; the rows go to ``--out``."""
    rows = []
    for text in args.cases.split(","):
        name, n, third = text.split(":", 2)
        rows.append(measure(name, int(n), third, *extra, args.chunk, args.rounds, args.chunks))
    write_rows(args.out, args, rows)
    return 0
