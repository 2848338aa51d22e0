"""Initialization presets and normalization layers: what they do to a network's signal.

Three small demonstrations:

1. **Init presets.** Every name in `jaxtune.INITIALIZERS` is a variance-scaling rule
   (``he_normal``: std = sqrt(2 / fan_in), ``glorot_*``: sqrt(1 / fan_avg), ...). We draw a
   kernel with `jaxtune.get_initializer` and compare its empirical std with the closed form
   `jaxtune.initializers.expected_std`; then `jaxtune.reinitialize` re-draws every kernel of a
   model's params with another preset (and zeroes the biases).
2. **Signal propagation.** The std of the activations through a deep ReLU MLP built by
   `jaxtune.mlp`: ``he_normal`` keeps it roughly constant, ``normal(1.0)`` makes it explode
   (x sqrt(width / 2) per layer) and ``normal(0.01)`` makes it vanish.
3. **Normalization.** ``none | batch | layer | group`` trained briefly on digits in one
   `jaxtune.run_sweep`, with ``task.normalization`` (a structural key: one compiled program per
   value) crossed with two learning rates (traced: vmapped inside each program).

Run::

    python examples/init_and_norm.py           # full run
    python examples/init_and_norm.py --fast    # tiny sizes and a few steps (used by the tests)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxtune
from jaxtune.initializers import expected_std


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny sizes, few steps (for tests)")
    parser.add_argument("--depth", type=int, help="layers of the deep MLP (default 20; 6 fast)")
    parser.add_argument("--width", type=int, help="width of the deep MLP (default 256; 32 fast)")
    parser.add_argument("--steps", type=int, help="training steps (default 300; 10 with --fast)")
    return parser.parse_args()


def init_presets(shape: tuple[int, int]) -> None:
    print(f"1. Kernel std of each preset for a dense {shape} kernel (fan_in, fan_out)")
    print(f"   {'preset':<16} {'empirical':>10} {'closed form':>12}")
    key = jax.random.key(0)
    for i, name in enumerate(jaxtune.INITIALIZERS):
        kernel = jaxtune.get_initializer(name)(jax.random.fold_in(key, i), shape)
        print(f"   {name:<16} {float(jnp.std(kernel)):>10.5f} {expected_std(name, shape):>12.5f}")

    model = jaxtune.mlp(num_outputs=10, input_shape=(64,), widths=(shape[1],))
    params, _ = model.init(jax.random.key(1))
    params = jaxtune.reinitialize(params, "glorot_uniform", jax.random.key(2))
    print("   reinitialize(params, 'glorot_uniform', key) on a 64 -> width -> 10 MLP:")
    for layer, leaves in params.items():
        kernel, bias = leaves["kernel"], leaves["bias"]
        print(
            f"   {layer}: kernel {tuple(kernel.shape)} std {float(jnp.std(kernel)):.4f} "
            f"(closed form {expected_std('glorot_uniform', kernel.shape):.4f}), "
            f"bias max |b| = {float(jnp.max(jnp.abs(bias)))}"
        )


def signal_propagation(depth: int, width: int) -> None:
    print(
        f"\n2. Activation std through a {depth}-layer ReLU MLP of width {width} (inputs ~ N(0, 1))"
    )
    x0 = jax.random.normal(jax.random.key(3), (512, width))
    show = sorted({1, 2, depth // 4, depth // 2, depth} - {0})
    print(f"   {'init':<14}" + "".join(f"{'layer ' + str(i):>12}" for i in show))
    for init in ("he_normal", "normal(1.0)", "normal(0.01)"):
        model = jaxtune.mlp(
            num_outputs=10, input_shape=(width,), widths=(width,) * depth, init=init
        )
        params, _ = model.init(jax.random.key(4))
        x, stds = x0, {}
        for i in range(depth):  # hidden layers Dense_0 .. Dense_{depth-1}: Dense -> ReLU
            layer = params[f"Dense_{i}"]
            x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
            stds[i + 1] = float(np.std(np.asarray(x, np.float64)))  # float64: no overflow
        print(f"   {init:<14}" + "".join(f"{stds[i]:>12.3g}" for i in show))


def normalization_sweep(steps: int, widths: list[int]) -> None:
    lrs = [0.03, 0.3]
    print(f"\n3. Normalization on digits: MLP widths={widths}, {steps} steps, lr in {lrs}")
    config = {
        "task": {"dataset": "digits", "model": "mlp", "widths": widths},
        "optimizer": {"name": "momentum", "momentum": 0.9},
        "train": {"steps": steps, "batch_size": 64, "eval_every": max(1, steps // 4)},
        "sweep": {
            "grid": {
                "task.normalization": ["none", "batch", "layer", "group"],
                "optimizer.learning_rate": lrs,
            }
        },
    }
    result = jaxtune.run_sweep(config)
    print(
        f"   {len(result.trials)} trials in {len(result.timing['groups'])} programs: "
        f"compile {result.timing['compile_s']:.1f}s, run {result.timing['run_s']:.1f}s"
    )
    print(f"   {'normalization':<14}" + "".join(f"{'val@lr=' + str(lr):>14}" for lr in lrs))
    acc: dict[str, dict[float, float]] = {}
    for tr in result.trials:
        norm, lr = tr.hparams["task.normalization"], tr.hparams["optimizer.learning_rate"]
        acc.setdefault(norm, {})[lr] = np.nan if tr.diverged else tr.final["valid.accuracy"]
    for norm, row in acc.items():
        print(f"   {norm:<14}" + "".join(f"{row[lr]:>14.4f}" for lr in lrs))
    best = result.best()
    print(f"   best: {best.name} with valid accuracy {best.final['valid.accuracy']:.4f}")


def main() -> None:
    args = parse_args()
    depth = args.depth or (6 if args.fast else 20)
    width = args.width or (32 if args.fast else 256)
    steps = args.steps or (10 if args.fast else 300)
    init_presets((64, 128) if args.fast else (512, 256))
    signal_propagation(depth, width)
    # GroupNorm uses min(32, width) groups: keep width > 32 so each group has > 1 feature.
    normalization_sweep(steps, [64] if args.fast else [128, 128, 128])


if __name__ == "__main__":
    main()
