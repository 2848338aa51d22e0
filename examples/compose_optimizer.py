"""Compose an optimizer from jaxtune's parts, check it against `make_optimizer`, and train with it.

`jaxtune.make_optimizer` is nothing more than an `optax.chain` of small, reusable parts::

    clip(clip_norm) -> [weight decay] -> scale_by_optimizer(name) -> scale_by_lr(learning_rate)

This example

1. builds that chain by hand from `jaxtune.optimizers` (gradient clipping, heavy-ball
   momentum, a step-decay learning rate),
2. checks that it produces exactly the same updates as
   ``jaxtune.make_optimizer("momentum", schedule, momentum=0.9, clip_norm=1.0)``, and
3. trains the digits MLP with it in your own fully jitted `jax.lax.scan` loop around jaxtune's
   public per-trial step (``jaxtune.make_train_step``; no sweep engine) and reports the test
   accuracy (> 95% in full mode).

Run::

    python examples/compose_optimizer.py           # full run: 1000 steps, ~30 s on a CPU
    python examples/compose_optimizer.py --fast    # a few steps, tiny model (used by the tests)
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune
from jaxtune.optimizers import clip, scale_by_lr, scale_by_optimizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="few steps, tiny model (for tests)")
    parser.add_argument("--steps", type=int, help="training steps (default 1000; 40 with --fast)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", help="hidden widths (default 256 256)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_optimizers(decay_every: int) -> tuple[optax.GradientTransformation, ...]:
    """The same optimizer twice: composed by hand, and from `make_optimizer`."""
    schedule = jaxtune.step_decay(0.1, 0.5, every=decay_every)  # 0.1, halved every `decay_every`
    by_hand = optax.chain(
        clip(1.0),  # clip the global gradient norm to 1
        scale_by_optimizer("momentum", momentum=0.9),  # heavy-ball momentum (optax.trace)
        scale_by_lr(schedule),  # multiply by -learning_rate(step)
    )
    built = jaxtune.make_optimizer("momentum", schedule, momentum=0.9, clip_norm=1.0)
    return by_hand, built


def check_equal(a: optax.GradientTransformation, b: optax.GradientTransformation) -> float:
    """Feeds both optimizers the same random gradients; returns the max update difference."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    state_a, state_b = a.init(params), b.init(params)
    update_a, update_b = jax.jit(a.update), jax.jit(b.update)  # one compile each, not per op
    max_diff = 0.0
    for step in range(12):
        # Gradients of norm well above and below the clip threshold of 1.
        scale = 3.0 if step % 2 == 0 else 0.05
        grads = jax.tree.map(lambda p: scale * rng.standard_normal(p.shape, np.float32), params)
        upd_a, state_a = update_a(grads, state_a, params)
        upd_b, state_b = update_b(grads, state_b, params)
        diffs = jax.tree.map(
            lambda x, y: np.max(np.abs(np.asarray(x) - np.asarray(y))), upd_a, upd_b
        )
        max_diff = max(max_diff, *map(float, jax.tree.leaves(diffs)))
        params = optax.apply_updates(params, upd_a)
    return max_diff


def train(
    model: jaxtune.Model,
    tx: optax.GradientTransformation,
    splits: jaxtune.Splits,
    *,
    steps: int,
    batch_size: int,
    seed: int,
) -> tuple[float, float]:
    """Trains with jaxtune's public per-trial step in one jitted `lax.scan` over all steps.

    Returns (mean train loss of the last 50 steps, test accuracy).
    """
    task = jaxtune.tasks.classification(model, splits)
    fns = jaxtune.make_train_step(task, lambda hp: tx, rng=False)
    hp: dict = {}
    root = jax.random.PRNGKey(seed)
    _, data_key, _, _ = jaxtune.engine.trial_keys(root)
    x_train, y_train = (jnp.asarray(a) for a in splits.train)
    n_train = x_train.shape[0]

    def step_fn(state, step):
        # Epoch-wise shuffling without replacement, as the sweep engine does it.
        idx = jaxtune.batch_indices(data_key, step, batch_size, n_train)
        state, metrics = fns.train_step(state, hp, (x_train[idx], y_train[idx]), step)
        return state, metrics["loss"]

    @jax.jit
    def run(state):
        return jax.lax.scan(step_fn, state, jnp.arange(steps, dtype=jnp.int32))

    state, losses = run(fns.init(root, hp))
    test = fns.evaluate(state, hp, splits.test)
    return float(jnp.mean(losses[-min(50, steps) :])), float(test["accuracy"])


def main() -> None:
    args = parse_args()
    steps = args.steps or (40 if args.fast else 1000)
    widths = tuple(args.widths or ((16,) if args.fast else (256, 256)))

    by_hand, built = build_optimizers(decay_every=max(1, steps // 3))
    max_diff = check_equal(by_hand, built)
    print(f"max |update(by hand) - update(make_optimizer)| over 12 steps: {max_diff:.3g}")
    assert max_diff == 0.0, "the two chains should be bit-for-bit identical"
    print("the hand-composed chain equals make_optimizer('momentum', ..., clip_norm=1.0)")

    ds = jaxtune.load_digits()
    model = jaxtune.mlp(num_outputs=10, input_shape=ds.train[0].shape[1:], widths=widths)
    start = time.perf_counter()
    loss, accuracy = train(
        model, by_hand, ds, steps=steps, batch_size=args.batch_size, seed=args.seed
    )
    elapsed = time.perf_counter() - start
    print(
        f"digits MLP widths={widths}, {steps} steps of batch {args.batch_size} "
        f"({elapsed:.1f}s incl. compile): train loss {loss:.4f}"
    )
    print(f"test accuracy: {accuracy:.4f}")
    if not args.fast:
        assert accuracy > 0.95, f"expected > 95% test accuracy, got {accuracy:.2%}"


if __name__ == "__main__":
    main()
