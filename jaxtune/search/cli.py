"""``jaxtune tune [CONFIG] [--set key=value ...] [--out DIR] [--resume]``: the tuning order.

Runs the stages of :mod:`jaxtune.search.tune` on a configuration (the bundled default without
CONFIG; a user task through ``task.factory``, the config file's folder searched first), prints
the summary and writes it to ``DIR/summary.md``. ``--set tune.<stage>.<key>=value`` changes a
tune setting. A bad setting exits 2 with one line naming the key; Ctrl-C exits 130 after saying
how to resume.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_subcommands"]


def _resume_hint(args: argparse.Namespace, out: Path) -> str:
    config = f"{args.config} " if args.config else ""
    return f"jaxtune tune {config}--out {out} --resume"


def _tune_handler(args: argparse.Namespace) -> int:
    from jaxtune.report import ProgressBar, TensorBoardLogger
    from jaxtune.run_folders import make_out_dir, resumable_run
    from jaxtune.search.tune import run_tune
    from jaxtune.search.tune_config import FOLDERS, STAGES, load_tune_config

    out, search, stored = resumable_run(args, "tune run", "tune.json")
    document = {**stored["config"], **stored["tune"]} if stored is not None else None
    cfg, settings = load_tune_config(args.config, list(args.set or ()), document=document)
    make_out_dir(out)
    bar = ProgressBar()

    def callbacks(stage: str) -> list[Any]:
        n = STAGES.index(stage) + 1
        print(f"jaxtune tune: stage {n} {stage} -> {out / FOLDERS[stage]}", file=sys.stderr)
        cbs: list[Any] = [bar]
        if cfg.base["log.tensorboard"]:
            # No worst-examples grid for the halving stage: SweepResult.best() may name a trial
            # stopped early, whose trained state the result does not carry.
            cbs.append(TensorBoardLogger(num_examples=0 if stage == "lr_batch" else 16))
        return cbs

    t0 = time.perf_counter()
    try:
        result = run_tune(
            cfg,
            settings,
            out_dir=out,
            resume=args.resume,
            callbacks=callbacks,
            search_path=search,
            notes={"search_path": [str(Path(p).resolve()) for p in search]},
        )
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\njaxtune tune: interrupted; resume with: {_resume_hint(args, out)}",
            file=sys.stderr,
        )
        return 130
    bar.close()
    print()
    print(result.summary)
    print(f"tune: {time.perf_counter() - t0:.0f} s; summary: {out / 'summary.md'}")
    return 0


def add_subcommands(
    subparsers: Any, add_config_arguments: Callable[[argparse.ArgumentParser], Any]
) -> None:
    """Add ``tune`` to a CLI's subparsers."""
    p = subparsers.add_parser(
        "tune",
        help="tune in order: LR range test, lr x batch size, schedule/clip/wd, seeds",
        description="The tuning order as staged sweeps: (1) an LR range test picks a band; "
        "(2) learning rate x batch size, quasi-random in the band, with successive halving; "
        "(3) schedule, clipping and weight decay around the best; (4) the chosen setting over "
        "seeds with a confidence interval on the validation metric, and the test metric "
        "reported once. Settings: the [tune] table of CONFIG, or --set tune.<stage>.<key>=...",
    )
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the tune run in --out DIR: finished stages are skipped, an interrupted "
        "one resumes from its checkpoints (CONFIG defaults to the one the run started with)",
    )
    p.set_defaults(func=_tune_handler)
