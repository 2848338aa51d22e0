"""A learning-rate sweep on digits: 8 log-spaced learning rates x 2 seeds in one compiled program.

`jaxtune.run_sweep` turns every numeric hyperparameter (here the learning rate and the seed) into
a traced array with a leading trial axis, so all 16 trials below train at once as a single
compiled program (for this dense model, ``jit(scan(vmap(train_step)))``). A trial whose loss
turns non-finite is frozen at its last finite state and marked diverged, without disturbing the
others.

The example prints

* the per-trial table, ranked by final validation accuracy (the selection metric), with the
  test accuracy beside it (reported, never used to choose),
* ``result.best()``: the non-diverged trial with the best final validation accuracy, and
* ``result.aggregate(over="train.seed")``: mean, std and a 95% Student-t interval of the
  validation accuracy per learning rate, across the seeds.

Run::

    python examples/lr_sweep.py           # full run: 600 steps per trial
    python examples/lr_sweep.py --fast    # a few steps with a tiny model (used by the tests)
"""

from __future__ import annotations

import argparse

import numpy as np

import jaxtune


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="few steps, tiny model (for tests)")
    parser.add_argument("--steps", type=int, help="steps per trial (default 600; 20 with --fast)")
    parser.add_argument("--widths", type=int, nargs="+", help="hidden widths (default 128 128)")
    parser.add_argument("--num-lrs", type=int, default=8, help="points of the log grid")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per learning rate")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    steps = args.steps or (20 if args.fast else 600)
    widths = args.widths or ([16] if args.fast else [128, 128])
    # 1e-3 ... 3: wide enough to see both "too slow" and "diverges".
    lrs = [float(f"{lr:.3g}") for lr in np.logspace(-3, np.log10(3.0), args.num_lrs)]

    config = {
        "task": {"dataset": "digits", "model": "mlp", "widths": widths},
        "optimizer": {"name": "momentum", "momentum": 0.9},
        "train": {"steps": steps, "batch_size": 64, "eval_every": max(1, steps // 4)},
        "sweep": {"grid": {"optimizer.learning_rate": lrs}, "seeds": args.seeds},
    }
    result = jaxtune.run_sweep(config)
    t = result.timing
    print(
        f"{len(result.trials)} trials x {steps} steps: compile {t['compile_s']:.1f}s, "
        f"run {t['run_s']:.1f}s ({t['trial_steps_per_s']:.0f} trial-steps/s)\n"
    )

    print("Trials ranked by final validation accuracy (diverged trials last):")
    header = f"{'rank':>4}  {'lr':>8}  {'seed':>4}  {'valid_acc':>9}  {'test_acc':>8}"
    print(f"{header}  {'train_loss':>10}  diverged")
    for rank, tr in enumerate(result.ranked(), 1):
        diverged = f"at step {tr.diverged_step}" if tr.diverged else "-"
        print(
            f"{rank:>4}  {tr.hparams['optimizer.learning_rate']:>8.3g}  "
            f"{tr.hparams['train.seed']:>4}  {tr.final['valid.accuracy']:>9.4f}  "
            f"{tr.final['test.accuracy']:>8.4f}  {tr.final['train.loss']:>10.4f}  {diverged}"
        )

    best = result.best()
    print(
        f"\nbest: {best.name}  valid accuracy {best.final['valid.accuracy']:.4f} "
        f"(best during training {best.best:.4f} at step {best.best_step}); "
        f"its test accuracy, reported once: {best.final['test.accuracy']:.4f}"
    )

    print("\nAcross seeds (result.aggregate(over='train.seed')):")
    print(f"{'lr':>8}  {'n':>2}  {'mean_acc':>8}  {'std':>6}  {'95% interval':>17}  diverged")
    for row in result.aggregate(over="train.seed"):
        acc = row["valid.accuracy"]
        lo, hi = acc["ci95"]
        print(
            f"{row['optimizer.learning_rate']:>8.3g}  {row['n']:>2}  {acc['mean']:>8.4f}  "
            f"{acc['std']:>6.4f}  [{lo:>6.3f}, {hi:>6.3f}]  {row['diverged']}"
        )


if __name__ == "__main__":
    main()
