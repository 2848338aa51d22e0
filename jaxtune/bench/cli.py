"""``jaxtune bench CONFIG [--set key=value ...] [--out DIR] [--resume]``: an optimizer benchmark.

Runs :func:`jaxtune.bench.run_benchmark` on the ``[bench]`` table of CONFIG (its folder is
searched first for ``task.factory`` / ``optimizer.factory``), with a progress bar over the
studies; prints the summary and writes it to ``DIR/bench.md``. ``--set bench.<key>=value``
changes a bench setting, ``--set section.key=value`` the base configuration. A bad setting
exits 2 with one line naming the key; Ctrl-C exits 130 after saying how to resume.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxtune.errors import ConfigError

__all__ = ["add_subcommands"]


def _bench_handler(args: argparse.Namespace) -> int:
    from jaxtune.bench.config import load_bench_config
    from jaxtune.bench.runner import run_benchmark
    from jaxtune.run_folders import make_out_dir, resumable_run

    out, search, state = resumable_run(args, "benchmark", "bench.json", prefix="bench-")
    stored = out / "bench.json"
    document = state["config"] if state is not None else None
    if document is None and args.config is None:
        raise ConfigError("jaxtune bench needs CONFIG.toml: a file with a [bench] table")
    cfg = load_bench_config(args.config, list(args.set or ()), document=document)
    make_out_dir(out)
    callbacks = []
    if cfg.base["log"]["tensorboard"]:
        from jaxtune.report import TensorBoardLogger

        callbacks.append(TensorBoardLogger(num_examples=0))  # DIR/<submission>/<workload>/...
    t0 = time.perf_counter()
    try:
        result = run_benchmark(
            cfg,
            out_dir=out,
            resume=args.resume,
            callbacks=callbacks,
            progress=True,
            search_path=search,
            notes={"search_path": [str(Path(p).resolve()) for p in search]},
        )
    except KeyboardInterrupt:
        config = f"{args.config} " if args.config else ""
        print(
            f"\njaxtune bench: interrupted; finished studies are in {stored}. Resume with: "
            f"jaxtune bench {config}--out {out} --resume",
            file=sys.stderr,
        )
        return 130
    print()
    print(result.summary)
    print(f"\nbench: {time.perf_counter() - t0:.0f} s")
    print("outputs:")
    for label, path in [
        ("record", out / "bench.json"),
        ("summary", out / "bench.md"),
        ("plot", out / "plots" / "profiles.png"),
    ]:
        print(f"  {label + ':':<9}{path}")
    return 0


def add_subcommands(
    subparsers: Any, add_config_arguments: Callable[[argparse.ArgumentParser], Any]
) -> None:
    """Add ``bench`` to a CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark optimizers AlgoPerf-style: time to target, performance profiles",
        description="Submissions (optimizers with search spaces) x workloads (a validation "
        "target and a step budget) x studies x quasi-random trials; every study is one "
        "vectorized sweep. Reports each trial's steps and time to target and the AlgoPerf "
        "score (the integrated performance profile). Settings: the [bench] table of CONFIG, "
        "or --set bench.<key>=...",
    )
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the benchmark in --out DIR: finished studies are kept, an unfinished "
        "one resumes from its checkpoints (CONFIG defaults to the one it started with)",
    )
    p.set_defaults(func=_bench_handler)
