"""Bring your own task: a user Flax model, loss, metrics and optax chain, swept in one program.

The task is regression on scikit-learn's bundled diabetes data (standardized on the training
split). Everything trial-specific is the user's:

* the model is a linen module written here (a residual MLP with LayerNorm), wrapped with
  ``jaxtune.from_linen``; its hidden widths come from the structure key ``task.widths``, so a
  structure sweep over widths works with this code unchanged;
* the loss is a Huber loss whose ``delta`` is a user hyperparameter, ``hparams.huber_delta``;
* the metrics are ``mse`` and ``mae`` per example (the engine takes every mean);
* the optimizer is an optax chain (clipping, Adam scaling with a swept ``hparams.beta2``, the
  learning rate) built from the trial's traced hyperparameters.

Every number in ``hp`` is traced, so the 12 trials below (3 learning rates x 2 Huber deltas x
2 beta2 values) train as one compiled program. The Huber loss changes with its delta, so the
trials are compared on ``valid.mse`` (``select.metric``), not on their training loss; the test
split is reported once for the chosen trial.

The same task runs from the command line through ``task.factory`` (see ``custom_task.toml``)::

    jaxtune sweep examples/custom_task.toml

Run::

    python examples/custom_task.py           # full run: 600 steps per trial
    python examples/custom_task.py --fast    # a few steps (used by the tests)
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxtune


class ResidualMLP(nn.Module):
    """Dense -> [LayerNorm -> ReLU -> Dense (+ skip)] x len(widths) -> Dense(1)."""

    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Dense(self.widths[0])(x)
        for width in self.widths:
            h = nn.Dense(width)(nn.relu(nn.LayerNorm()(x)))
            x = h + (x if x.shape[-1] == width else nn.Dense(width)(x))
        return nn.Dense(1)(x)[..., 0]


def huber(outputs: jax.Array, targets: jax.Array, hp: Mapping[str, Any]) -> jax.Array:
    """Per-example Huber loss with the trial's ``hparams.huber_delta``."""
    return optax.huber_loss(outputs, targets, delta=hp["hparams.huber_delta"])


def errors(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    err = outputs - targets
    return {"mse": err**2, "mae": jnp.abs(err)}


def make_task(structure: Mapping[str, Any]) -> jaxtune.Task:
    """The task of one structure group (``structure`` is the flat config minus numeric keys)."""
    splits = jaxtune.load_diabetes()
    widths = tuple(structure["task.widths"] or (64, 64))
    model = jaxtune.from_linen(ResidualMLP(widths), splits.train[0].shape[1:], num_outputs=1)
    return jaxtune.Task(
        init=lambda key, hp: model.init(key),
        apply=model.apply,
        loss=huber,
        metrics=errors,
        data=splits,
    )


def make_optimizer(hp: Mapping[str, Any]) -> optax.GradientTransformation:
    """A research chain built from the trial's traced hyperparameters."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(b2=hp["hparams.beta2"]),
        optax.scale_by_learning_rate(hp["optimizer.learning_rate"]),
    )


def config(steps: int, widths: list[int]) -> dict[str, Any]:
    return {
        "task": {"widths": widths},
        "hparams": {"huber_delta": 1.0, "beta2": 0.999},
        "select": {"metric": "valid.mse", "mode": "min"},
        "train": {"steps": steps, "batch_size": 32, "eval_every": max(1, steps // 6)},
        "sweep": {
            "grid": {
                "optimizer.learning_rate": [3e-4, 1e-3, 3e-3],
                "hparams.huber_delta": [0.5, 2.0],
                "hparams.beta2": [0.99, 0.999],
            }
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="few steps, small model (for tests)")
    parser.add_argument("--steps", type=int, help="steps per trial (default 600; 30 with --fast)")
    args = parser.parse_args()
    steps = args.steps or (30 if args.fast else 600)
    widths = [16] if args.fast else [64, 64]
    result = jaxtune.run_sweep(config(steps, widths), task=make_task, optimizer=make_optimizer)
    t = result.timing
    print(
        f"{len(result.trials)} trials x {steps} steps in {len(t['groups'])} compiled group(s): "
        f"compile {t['compile_s']:.1f}s, run {t['run_s']:.1f}s\n"
    )
    print(jaxtune.report.format_table(result))
    best = result.best()
    print(
        f"\nchosen on valid.mse: {best.name} (valid.mse {best.final['valid.mse']:.4f}); "
        f"its test.mse, reported once: {best.final['test.mse']:.4f}"
    )


if __name__ == "__main__":
    main()
