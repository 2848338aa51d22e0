"""``jaxtune check`` and ``jaxtune lr-find``: the checklist from the command line.

Both take the same ``CONFIG``, ``--set key=value`` and ``--out DIR`` as ``jaxtune sweep``, so a
user task runs through ``task.factory`` (the config file's folder is searched first). A check
that fails exits 1; a bad configuration or task exits 2 (raised as ``ConfigError``), and so does a
bad flag value: argparse rejects a non-positive ``--steps``, ``--width``, ``--depth``,
``--num-lrs``, ``--min-lr`` or ``--max-lr`` and an empty or non-positive ``--lrs`` naming the
flag, and the handlers reject ``--min-lr`` not below ``--max-lr`` and a ``--steps`` below the
LR range test's minimum with a ``ConfigError`` naming the flags.
"""

from __future__ import annotations

import argparse
import math
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
from jaxtune.errors import ConfigError

__all__ = ["add_subcommands"]

ACTIONS = ("all", *CHECKS)


#: The fewest steps of the LR range test (:func:`lr_range_test`), run by ``check lr``, ``check
#: all`` and ``lr-find --mode classic|both``.
MIN_LR_TEST_STEPS = 5


def _positive(convert: type, allowed: str, example: str) -> Any:
    """An argparse type: ``convert(text)``, finite and > 0 (argparse names the flag when it
    raises)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected {allowed}{example}")
        return value

    return parse


_positive_int = _positive(int, "an integer >= 1", ", e.g. 100")
_positive_float = _positive(float, "a finite number > 0", ", e.g. 0.01")


def _parse_floats(text: str) -> list[float]:
    """An argparse type: a non-empty comma-separated list of learning rates, each finite and
    > 0."""
    parts = [v.strip() for v in text.split(",") if v.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"{text!r} is invalid: expected one or more comma-separated learning rates > 0, "
            "e.g. 0.01,0.1,1"
        )
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is invalid: expected comma-separated numbers > 0, e.g. 0.01,0.1,1"
        ) from None
    bad = [p for p, v in zip(parts, values, strict=True) if not (math.isfinite(v) and v > 0)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"{text!r} is invalid: learning rate {bad[0]} is not a finite number > 0"
        )
    return values


def _check_lr_test_steps(steps: int, where: str) -> None:
    if steps < MIN_LR_TEST_STEPS:
        raise ConfigError(
            f"--steps {steps} is invalid for {where}: the LR range test needs an integer "
            f">= {MIN_LR_TEST_STEPS}"
        )


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
    if what in ("all", "lr") and args.steps is not None:
        _check_lr_test_steps(args.steps, f"check {what}")
    cfg, search = _load(args)
    out = getattr(args, "out", None)
    steps = args.steps
    if what in ("all", "grads"):
        checks = CHECKS if what == "all" else ("grads",)
        rep = run_checks(
            cfg,
            out_dir=out,
            checks=checks,
            steps=steps if steps is not None else 200,
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
        r = overfit_check(subject=subject, steps=steps if steps is not None else 300, lrs=args.lrs)
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
        r = normalization_masking(
            subject=make_subject(cfg, search=search), steps=steps if steps is not None else 200
        )
    else:
        overrides = {"schedule.name": "constant"} if not cfg.base["optimizer.factory"] else None
        r = lr_range_test(
            subject=make_subject(cfg, overrides=overrides, search=search),
            steps=steps if steps is not None else 100,
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
    if not args.min_lr < args.max_lr:
        raise ConfigError(
            f"--min-lr {args.min_lr:g} and --max-lr {args.max_lr:g} are invalid: expected "
            "--min-lr < --max-lr (the range the learning rate grows over)"
        )
    if args.mode in ("classic", "both"):
        _check_lr_test_steps(args.steps, f"lr-find --mode {args.mode}")
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
    check.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help=f"step budget of the short runs (>= 1; >= {MIN_LR_TEST_STEPS} for all and lr)",
    )
    check.add_argument(
        "--depth", type=_positive_int, default=None, help="init: a synthetic net this deep"
    )
    check.add_argument("--width", type=_positive_int, default=256, help="init: its hidden width")
    check.add_argument("--fast", action="store_true", help="all: a smaller budget")
    check.set_defaults(func=_check_handler, _check_parser=check)

    lr = subparsers.add_parser(
        "lr-find", help="suggest a learning rate (LR range test and/or vectorized sweep)"
    )
    add_config_arguments(lr)
    lr.add_argument("--mode", choices=("classic", "vectorized", "both"), default="both")
    lr.add_argument("--min-lr", type=_positive_float, default=1e-4, help="> 0, below --max-lr")
    lr.add_argument("--max-lr", type=_positive_float, default=10.0)
    lr.add_argument(
        "--steps",
        type=_positive_int,
        default=100,
        help=f"steps of each run (>= {MIN_LR_TEST_STEPS} for classic and both)",
    )
    lr.add_argument("--num-lrs", type=_positive_int, default=11, help="vectorized: number of lrs")
    lr.add_argument(
        "--lrs", type=_parse_floats, default=None, help="vectorized: explicit learning rates"
    )
    lr.set_defaults(func=_lr_find_handler)
