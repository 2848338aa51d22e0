"""Run the tuning checklist on the digits MLP: data, init, overfit, LR range test, norm, grads.

Usage::

    python examples/debug_checklist.py            # full budget
    python examples/debug_checklist.py --fast     # a small budget (smoke test)
    python examples/debug_checklist.py --out runs/checks   # also write PNG plots + checks.txt

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from jaxtune import diagnostics

DIGITS_MLP = {
    "task": {"dataset": "digits", "model": "mlp", "widths": [64, 64], "init": "he_normal"},
    "optimizer": {"name": "momentum", "momentum": 0.9, "learning_rate": 0.05},
    "train": {"batch_size": 64, "steps": 300, "eval_every": 100},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small budget, for tests")
    parser.add_argument("--out", default=None, help="directory for plots and checks.txt")
    args = parser.parse_args(argv)
    config, checks = DIGITS_MLP, ("data", "init", "overfit", "lr", "norm", "grads")
    if args.fast:  # smaller net, shorter runs, no with/without-normalization comparison
        config = {**DIGITS_MLP, "task": {**DIGITS_MLP["task"], "widths": [32, 32]}}
        checks = ("data", "init", "overfit", "lr", "grads")
    report = diagnostics.run_checks(config, out_dir=args.out, checks=checks, fast=args.fast)
    print(report.report())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
