"""The ``jaxtune`` command line.

Subcommands:

* ``jaxtune sweep [CONFIG.toml] [--set key=value ...] [--out DIR] [--resume]``: run a sweep (the
  bundled default without CONFIG), with a progress bar, TensorBoard logs, PNG plots, Orbax
  checkpoints and a ranked table; every output path is printed at the end.
* ``jaxtune show DIR``: reprint the ranked table of a finished or interrupted sweep.
* ``jaxtune plot DIR``: redraw a sweep's plots.
* ``jaxtune --version``: the installed version.

A configuration problem (missing file, TOML syntax error, unknown key, bad value, an output folder
that cannot be used) exits with status 2 and one line on stderr; Ctrl-C exits with status 130
after saying how to resume.

Other modules add subcommands through :func:`build_parser`: ``jaxtune.diagnostics`` (``check``,
``lr-find``) and ``jaxtune.search.cli`` (``tune``) define
``add_subcommands(subparsers, add_config_arguments)``, called when present. A subcommand sets
``func`` (``func(args) -> int``) with ``set_defaults``; :func:`main` turns a ``ConfigError`` raised
by it into exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jaxtune
from jaxtune import checkpoint
from jaxtune import config as config_lib
from jaxtune.config import ConfigError, SweepConfig
from jaxtune.run_folders import (
    SearchPathRecorder,
    check_output_dir,
    default_out,
    read_search_path,
    search_path,
)

__all__ = ["add_config_arguments", "build_parser", "main", "search_path"]

PROG = "jaxtune"


# ----------------------------------------------------------------------------------------------
# Parser.


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``CONFIG`` (optional positional), ``--set key=value`` (repeatable) and ``--out DIR``."""
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        metavar="CONFIG.toml",
        help="a sweep configuration file (default: the bundled default sweep)",
    )
    parser.add_argument(
        "--set",
        dest="set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set optimizer.learning_rate=0.1 or "
        "--set 'sweep.grid.train.batch_size=[32, 64]' (repeatable; values are TOML)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: runs/<YYYYmmdd-HHMMSS>)",
    )
    return parser


def load_config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The configuration named by ``add_config_arguments``' options (raises ``ConfigError``)."""
    return config_lib.load_config(args.config, list(args.set or ()))


class _Banner:
    """Says in one line, when a sweep starts, what runs where."""

    def on_start(self, info: dict[str, Any]) -> None:
        from jaxtune.report import progress

        groups = info["groups"]
        print(
            f"{PROG}: {info['num_trials']} trial(s) in {len(groups)} compiled group(s) on "
            f"{info['devices']} {info['backend']} device(s), run as "
            f"{progress.execution_text(info.get('execution', []))}; choosing on "
            f"{info['selection'].metric} ({info['selection'].mode})",
            file=sys.stderr,
            flush=True,
        )

    def on_chunk(self, start: int, stop: int, history: Any) -> None:
        pass

    def on_end(self, result: Any) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxtune`` argument parser; each subcommand sets ``func(args) -> int``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Vectorized hyperparameter sweeps for JAX models.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {jaxtune.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True

    p = subparsers.add_parser(
        "sweep",
        help="run a sweep",
        description="Run a sweep: every trial of the search space, vectorized, with a progress "
        "bar, TensorBoard logs, plots, checkpoints and a ranked table.",
    )
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out DIR from its latest checkpoint (CONFIG defaults to "
        "DIR/config.toml)",
    )
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("show", help="print the ranked table of a sweep's results")
    p.add_argument("dir", metavar="DIR", help="a sweep's output folder (with results.json)")
    p.add_argument(
        "--top", type=_at_least_one, default=None, metavar="N", help="show only the best N (>= 1)"
    )
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("plot", help="redraw a sweep's plots")
    p.add_argument("dir", metavar="DIR", help="a sweep's output folder (with results.json)")
    p.set_defaults(func=cmd_plot)

    _add_plugin_subcommands(subparsers)
    return parser


#: Modules that add subcommands (``add_subcommands(subparsers, add_config_arguments)``).
_PLUGINS = ("jaxtune.diagnostics", "jaxtune.search.cli", "jaxtune.bench.cli")


def _at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag when it raises)."""
    value = int(text) if text.strip().lstrip("+-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected an integer >= 1, e.g. 5")
    return value


def _add_plugin_subcommands(subparsers: Any) -> None:
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            if getattr(e, "name", None) in (name, None):
                continue  # not installed: nothing to add
            raise  # the module exists but one of its own imports failed: show it
        add = getattr(module, "add_subcommands", None)
        if callable(add):
            add(subparsers, add_config_arguments)


# ----------------------------------------------------------------------------------------------
# Checks done before anything runs.


def _check_resume(cfg: SweepConfig, out: Path) -> None:
    if cfg.base["checkpoint.every"] <= 0:
        raise ConfigError("--resume needs checkpoints: set checkpoint.every to a positive number")
    stored = checkpoint.stored_config(out / "checkpoints")
    if stored is not None:
        config_lib.check_same(stored, cfg, f"the checkpointed sweep in {out}")


# ----------------------------------------------------------------------------------------------
# Subcommands.


def _check_set_keys(cfg: SweepConfig, settings: Sequence[str]) -> None:
    """Refuse ``--set KEY=VALUE`` on a key the sweep varies: every trial would override it."""
    varied = {
        **{k: "sweep.grid" for k in cfg.grid},
        **{k: "sweep.space" for k in cfg.space},
        **{k: "sweep.trials" for t in cfg.trials for k in t},
    }
    for text in settings:
        key, value = config_lib.parse_override(text)
        if key in varied:
            raise ConfigError(
                f"--set {key} = {value!r} has no effect: the sweep varies {key} "
                f"({varied[key]}); set the values there, e.g. --set '{varied[key]}.{key}=[...]'"
                if varied[key] != "sweep.trials"
                else f"--set {key} = {value!r} has no effect: sweep.trials sets {key}"
            )


def _resume_hint(out: Path) -> str:
    return f"{PROG} sweep --out {out} --resume"


def cmd_sweep(args: argparse.Namespace) -> int:
    """``jaxtune sweep``: validate, run, plot and report."""
    from jaxtune import engine
    from jaxtune.report import progress, tensorboard

    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out DIR: the folder of the sweep to continue")
    out = Path(args.out) if args.out is not None else default_out()
    if args.resume and not out.exists():
        raise ConfigError(
            f"--resume: {out} does not exist, so there is no sweep to continue; check --out, "
            "or leave --resume out to start a new sweep there"
        )
    search = search_path(args)
    if args.config is None and args.resume and (out / "config.toml").is_file():
        args.config = str(out / "config.toml")
        # The factories come from where the first run found them, not from DIR.
        stored = read_search_path(out)
        search = search_path(args) if stored is None else stored
    cfg = load_config_from_args(args)
    _check_set_keys(cfg, args.set or ())
    check_output_dir(out, resume=args.resume)
    if args.resume:
        _check_resume(cfg, out)

    base = cfg.base
    callbacks: list[engine.SweepCallback] = [
        _Banner(),
        progress.ProgressBar(),
        SearchPathRecorder(out, search),
    ]
    if base["log.tensorboard"]:
        callbacks.append(tensorboard.TensorBoardLogger(out / "tb"))
    try:
        result = engine.run_sweep(
            cfg,
            out_dir=out,
            resume=args.resume,
            callbacks=callbacks,
            search_path=search,
        )
    except KeyboardInterrupt:
        print(file=sys.stderr)
        print(_interrupted_message(out, base), file=sys.stderr)
        return 130
    _report(result, out, base)
    return 0


def _interrupted_message(out: Path, base: dict[str, Any]) -> str:
    """What an interrupted sweep tells the user: how to resume it, or why it cannot be."""
    if checkpoint.holds_checkpoints(out / "checkpoints"):
        msg = (
            f"{PROG}: interrupted; the sweep was checkpointed in {out / 'checkpoints'}. "
            f"Resume it with: {_resume_hint(out)}"
        )
    elif base["checkpoint.every"] <= 0:
        msg = (
            f"{PROG}: interrupted; no checkpoint was written (checkpoint.every = 0), so the "
            "sweep cannot be resumed; set checkpoint.every to make it resumable"
        )
    else:
        msg = (
            f"{PROG}: interrupted before the first checkpoint; run the same command again "
            "to start over"
        )
    if (out / "results.json").exists():
        msg += f" (partial results: {PROG} show {out})"
    return msg


def _report(result: Any, out: Path, base: dict[str, Any]) -> None:
    """Plot, print the table and the timing line, and list what the sweep wrote."""
    from jaxtune.report import plots, progress

    written: list[Path] = plots.write_plots(result, out) if base["log.plots"] else []
    print()
    print(progress.format_table(result))
    print("\n" + progress.timing_line(result))
    outputs = [
        ("results", out / "results.json"),
        ("table", out / "results.csv"),
        ("history", out / "history.npz"),
        ("config", out / "config.toml"),
    ]
    outputs += [("plot", p) for p in written]
    if base["log.tensorboard"]:
        outputs.append(("tensorboard", out / "tb"))
    if base["checkpoint.every"] > 0:
        outputs.append(("checkpoints", out / "checkpoints"))
    print("\noutputs:")
    for label, path in outputs:
        print(f"  {label + ':':<13}{path}")
    if base["log.tensorboard"]:
        print(f"\nview the curves with: tensorboard --logdir {out / 'tb'}")


def _load_result(directory: str) -> Any:
    from jaxtune.engine import SweepResult

    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{d} is not a directory")
    if not (d / "results.json").is_file():
        hint = ""
        if checkpoint.holds_checkpoints(d / "checkpoints"):
            hint = f"; it holds checkpoints: resume it with {_resume_hint(d)}"
        raise ConfigError(f"no results.json in {d}{hint}")
    try:
        return SweepResult.load(d)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError included
        raise ConfigError(
            f"{d / 'results.json'} is not a jaxtune results file ({type(e).__name__}: {e})"
        ) from None


def cmd_show(args: argparse.Namespace) -> int:
    """``jaxtune show DIR``: reprint the ranked table from ``results.json``."""
    from jaxtune.report import progress

    result = _load_result(args.dir)
    print(progress.format_table(result, top=args.top))
    t = result.timing
    steps = result.config.base["train.steps"]
    done = t.get("steps_done", steps)
    if t.get("interrupted") or done < steps:
        print(
            f"(interrupted at step {done} of {steps}; resume with: {_resume_hint(Path(args.dir))})"
        )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``jaxtune plot DIR``: redraw ``plots/*.png``."""
    from jaxtune.report import plots

    result = _load_result(args.dir)
    for p in plots.write_plots(result, args.dir):
        print(p)
    return 0


# ----------------------------------------------------------------------------------------------
# Entry point.


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def use_every_cpu_core(environ: dict[str, str] | None = None) -> None:
    """Give XLA one CPU device per core, unless ``XLA_FLAGS`` already sets a device count.

    Trials sharded over one CPU device per core ran faster than one device using every core
    for its matrix products (benchmarks/sweep_throughput.py, 2 cores: 2.2x for a small MLP,
    1.2x for the digits MLP). Only the command line does this, before JAX starts its backend;
    GPU and TPU runs are unaffected (their devices stay the default). Set
    ``--xla_force_host_platform_device_count=1`` in ``XLA_FLAGS`` to opt out.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count or 1}".strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxtune`` command line; returns the exit status."""
    use_every_cpu_core()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse leaves a CONFIG after an option unparsed (``jaxtune check data --steps 5 CONFIG``)
    if len(extra) == 1 and not extra[0].startswith("-") and getattr(args, "config", "") is None:
        args.config, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except ConfigError as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
