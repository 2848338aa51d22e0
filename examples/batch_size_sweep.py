"""A batch-size x learning-rate sweep on digits, and how the engine packs batch sizes into programs.

Batch size is a *numeric* hyperparameter in jaxtune: trials with different batch sizes can share
one compiled program. Each batch is gathered at the program's largest batch size and masked, so
a trial with batch size ``b`` sees exactly the batches of a solo run with batch size ``b``; the
price is wasted compute on the masked rows. With ``train.batch_grouping = "auto"`` (the default)
the engine splits batch sizes into sub-groups whenever masking would waste more than half of the
gathered rows. ``result.timing["groups"]`` reports, per compiled program, which batch sizes it
holds and its *batch utilization* (real rows / gathered rows).

With batch sizes [16, 32, 64, 128] x 3 learning rates, "auto" packs 128, 64 and 32 together
(utilization (128 + 64 + 32) / (3 * 128) = 58%) and gives 16 its own program (adding it would drop
utilization to 47%). Every trial runs the same number of steps, so larger batches see more
epochs.

Run::

    python examples/batch_size_sweep.py                       # full run
    python examples/batch_size_sweep.py --grouping pad        # one program for all batch sizes
    python examples/batch_size_sweep.py --fast                # a few steps (used by the tests)
"""

from __future__ import annotations

import argparse

import jaxtune


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="few steps, tiny model (for tests)")
    parser.add_argument("--steps", type=int, help="steps per trial (default 400; 10 with --fast)")
    parser.add_argument("--widths", type=int, nargs="+", help="hidden widths (default 128 128)")
    parser.add_argument("--grouping", choices=("auto", "pad", "split"), default="auto")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    steps = args.steps or (10 if args.fast else 400)
    widths = args.widths or ([16] if args.fast else [128, 128])
    batch_sizes = [16, 32, 64, 128]
    lrs = [0.01, 0.03, 0.1]

    config = {
        "task": {"dataset": "digits", "model": "mlp", "widths": widths},
        "optimizer": {"name": "momentum", "momentum": 0.9},
        # The final train.loss of a trial is its mean over the last eval_every steps.
        "train": {
            "steps": steps,
            "eval_every": max(1, steps // 4),
            "batch_grouping": args.grouping,
        },
        "sweep": {
            "grid": {"train.batch_size": batch_sizes, "optimizer.learning_rate": lrs},
        },
    }
    result = jaxtune.run_sweep(config)
    timing = result.timing

    print(f'Compiled programs (batch_grouping = "{args.grouping}"), from result.timing["groups"]:')
    for i, group in enumerate(timing["groups"]):
        print(
            f"  program {i}: {group['trials']} trials, batch sizes {group['batch_sizes']} "
            f"gathered at {group['gathered_batch']}, "
            f"batch utilization {group['batch_utilization']:.0%}"
        )
    print(
        f"compile {timing['compile_s']:.1f}s, run {timing['run_s']:.1f}s "
        f"({timing['trial_steps_per_s']:.0f} trial-steps/s)\n"
    )

    print(f"{len(result.trials)} trials x {steps} steps, widths={widths}:")
    print(f"{'batch':>5}  {'lr':>6}  {'epochs':>6}  {'valid_acc':>9}  {'train_loss':>10}  diverged")
    n_train = len(jaxtune.load_digits().train[1])  # to convert steps into epochs
    for tr in sorted(
        result.trials,
        key=lambda t: (t.hparams["train.batch_size"], t.hparams["optimizer.learning_rate"]),
    ):
        bs, lr = tr.hparams["train.batch_size"], tr.hparams["optimizer.learning_rate"]
        print(
            f"{bs:>5}  {lr:>6.3g}  {steps * bs / n_train:>6.1f}  "
            f"{tr.final['valid.accuracy']:>9.4f}  {tr.final['train.loss']:>10.4f}  "
            f"{'yes' if tr.diverged else '-'}"
        )
    best = result.best()
    print(
        f"\nbest: {best.name} with valid accuracy {best.final['valid.accuracy']:.4f} "
        f"(test accuracy, reported once: {best.final['test.accuracy']:.4f})"
    )


if __name__ == "__main__":
    main()
