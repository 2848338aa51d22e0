"""``jaxtune check`` and ``jaxtune lr-find``: the checklist from the command line.

Both take the same ``CONFIG``, ``--set key=value`` and ``--out DIR`` as ``jaxtune sweep``, so a
user task runs through ``task.factory`` (the config file's folder is searched first). A check
that fails exits 1; a bad configuration or task exits 2 (raised as ``ConfigError``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.config import SweepConfig, load_config
from jaxtune.diagnostics.checklist import CHECKS, run_checks
from jaxtune.diagnostics.data_checks import data_checks
from jaxtune.diagnostics.lr_find import lr_range_test, lr_sweep_test, plot_lr_find
from jaxtune.diagnostics.normalization import normalization_masking
from jaxtune.diagnostics.overfit import overfit_check
from jaxtune.diagnostics.signal import DEFAULT_PRESETS, init_report
from jaxtune.diagnostics.subject import make_subject

__all__ = ["add_subcommands"]

ACTIONS = ("all", *CHECKS)


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated numbers, e.g. 0.01,0.1,1"
        ) from None


def _load(args: argparse.Namespace) -> tuple[SweepConfig, list[Path]]:
    config = getattr(args, "config", None)
    search = [Path(config).resolve().parent] if config else []
    return load_config(config, getattr(args, "set", None) or []), search


def _check_handler(args: argparse.Namespace) -> int:
    what, config = args.what, getattr(args, "config", None)
    if what is not None and what not in ACTIONS:
        if config is not None:
            args._check_parser.error(
                f"argument what: invalid choice {what!r} (choose from {', '.join(ACTIONS)})"
            )
        what, args.config = "all", what
    what = what or "all"
    cfg, search = _load(args)
    out = getattr(args, "out", None)
    steps = args.steps
    if what in ("all", "grads"):
        checks = CHECKS if what == "all" else ("grads",)
        rep = run_checks(
            cfg,
            out_dir=out,
            checks=checks,
            steps=steps or 200,
            overfit_lrs=args.lrs,
            fast=args.fast,
            search=search,
        )
        print(rep.report() if what == "all" else rep.results["grads"].report())
        return 0 if rep.passed else 1
    if what == "data":
        subject = make_subject(cfg, search=search, check=False)
        r = data_checks(subject.task.data, num_outputs=_outputs(subject))
    elif what == "overfit":
        off = {"task.dropout": 0.0, "optimizer.weight_decay": 0.0}
        subject = make_subject(cfg, overrides=off, search=search)
        r = overfit_check(subject=subject, steps=steps or 300, lrs=args.lrs)
    elif what == "init":
        if args.depth is not None:
            base = cfg.base
            r = init_report(
                depth=args.depth,
                width=args.width,
                activation=base["task.activation"],
                model=base["task.model"],
                normalization=base["task.normalization"],
                presets=list(dict.fromkeys([base["task.init"], *DEFAULT_PRESETS])),
                check=[base["task.init"]],
                out_dir=out,
            )
        else:
            r = init_report(subject=make_subject(cfg, search=search), out_dir=out)
    elif what == "norm":
        r = normalization_masking(subject=make_subject(cfg, search=search), steps=steps or 200)
    else:
        overrides = {"schedule.name": "constant"} if not cfg.base["optimizer.factory"] else None
        r = lr_range_test(
            subject=make_subject(cfg, overrides=overrides, search=search), steps=steps or 100
        )
        plot_lr_find(r, out_dir=out)
    print(r.report())
    return 0 if r.passed else 1


def _outputs(subject: Any) -> int | None:
    try:
        return subject.num_outputs() if subject.labels() is not None else None
    except Exception:
        return None


def _lr_find_handler(args: argparse.Namespace) -> int:
    cfg, search = _load(args)
    found = []
    if args.mode in ("classic", "both"):
        overrides = {"schedule.name": "constant"} if not cfg.base["optimizer.factory"] else None
        subject = make_subject(cfg, overrides=overrides, search=search)
        found.append(
            lr_range_test(subject=subject, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
        )
    if args.mode in ("vectorized", "both"):
        lrs = args.lrs or list(np.geomspace(args.min_lr, args.max_lr, args.num_lrs))
        subject = make_subject(cfg, search=search, check=False)
        found.append(
            lr_sweep_test(
                cfg,
                task=subject.task_source,
                optimizer=subject.optimizer_source,
                lrs=lrs,
                steps=args.steps,
            )
        )
    for r in found:
        print(r.report())
    path = plot_lr_find(*found, out_dir=getattr(args, "out", None))
    if path:
        print(f"plot: {path}")
    return 0 if all(r.passed for r in found) else 1


def add_subcommands(
    subparsers: Any, add_config_arguments: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``check`` and ``lr-find`` to a CLI's subparsers.

    ``jaxtune check [WHAT] [CONFIG]``: ``WHAT`` is ``all`` (default) or one of :data:`CHECKS`; a
    first positional that is not a check name is read as the CONFIG, so ``jaxtune check
    sweep.toml`` and ``jaxtune check overfit sweep.toml`` both work. ``jaxtune lr-find [CONFIG]
    --mode classic|vectorized|both``. Handlers return 0 when the checks pass, 1 otherwise.
    """
    check = subparsers.add_parser(
        "check",
        help="run the tuning checklist (data, init, overfit, lr, norm, grads) on a config",
        description="Run the tuning diagnostics on a configuration's base trial (a user task "
        "through task.factory too). WHAT is one of: " + ", ".join(ACTIONS) + " (default all).",
    )
    check.add_argument(
        "what", nargs="?", metavar="WHAT", default=None, help=f"{', '.join(ACTIONS)}"
    )
    add_config_arguments(check)
    check.add_argument(
        "--lrs", type=_parse_floats, default=None, help="overfit: learning rates tried at once"
    )
    check.add_argument("--steps", type=int, default=None, help="step budget of the short runs")
    check.add_argument("--depth", type=int, default=None, help="init: a synthetic net this deep")
    check.add_argument("--width", type=int, default=256, help="init: its hidden width")
    check.add_argument("--fast", action="store_true", help="all: a smaller budget")
    check.set_defaults(func=_check_handler, _check_parser=check)

    lr = subparsers.add_parser(
        "lr-find", help="suggest a learning rate (LR range test and/or vectorized sweep)"
    )
    add_config_arguments(lr)
    lr.add_argument("--mode", choices=("classic", "vectorized", "both"), default="both")
    lr.add_argument("--min-lr", type=float, default=1e-4)
    lr.add_argument("--max-lr", type=float, default=10.0)
    lr.add_argument("--steps", type=int, default=100)
    lr.add_argument("--num-lrs", type=int, default=11, help="vectorized: number of lrs")
    lr.add_argument(
        "--lrs", type=_parse_floats, default=None, help="vectorized: explicit learning rates"
    )
    lr.set_defaults(func=_lr_find_handler)
