"""On-device augmentation: the transformations themselves, and the engine applying them to each
trial's batch with that trial's documented key."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import mlp_forward, optax_loop

import jaxtune
from jaxtune import data as data_lib
from jaxtune.augment import image_augment

OFF = {"augment.shift": 0.0, "augment.noise": 0.0, "augment.cutout": 0.0}


def test_shift_moves_pixels_and_fills_zeros():
    x = jnp.arange(1.0, 37.0).reshape(1, 6, 6, 1)
    for seed in range(6):
        out = np.asarray(image_augment(jax.random.PRNGKey(seed), x, {**OFF, "augment.shift": 2.0}))
        img, src = out[0, ..., 0], np.asarray(x)[0, ..., 0]
        kept = img[img > 0]
        # Every surviving value sits at its source position moved by one (dy, dx) in [-2, 2].
        (r, c), (r0, c0) = np.argwhere(img == kept[0])[0], np.argwhere(src == kept[0])[0]
        dy, dx = r - r0, c - c0
        assert abs(dy) <= 2 and abs(dx) <= 2
        expected = np.zeros_like(src)
        for i in range(6):
            for j in range(6):
                if 0 <= i - dy < 6 and 0 <= j - dx < 6:
                    expected[i, j] = src[i - dy, j - dx]
        np.testing.assert_array_equal(img, expected)


def test_cutout_noise_and_flat_inputs():
    x = jnp.ones((64, 8, 8, 3))
    cut = np.asarray(image_augment(jax.random.PRNGKey(0), x, {**OFF, "augment.cutout": 3.0}))
    zeros = (cut == 0).all(-1).sum(axis=(1, 2))
    assert zeros.max() == 9 and zeros.min() >= 3  # a 3x3 square, clipped at the borders
    noisy = np.asarray(image_augment(jax.random.PRNGKey(1), x, {**OFF, "augment.noise": 0.5}))
    assert np.std(noisy - 1.0) == pytest.approx(0.5, rel=0.05)
    flat = jnp.arange(32.0).reshape(2, 16)
    out = image_augment(jax.random.PRNGKey(2), flat, {**OFF, "augment.cutout": 2.0})
    assert out.shape == (2, 16) and int((out == 0).sum()) >= 6
    np.testing.assert_array_equal(image_augment(jax.random.PRNGKey(3), flat, OFF), flat)
    with pytest.raises(ValueError, match="perfect square"):
        image_augment(jax.random.PRNGKey(0), jnp.ones((2, 10)), OFF)


def test_each_trial_gets_the_augmentation_of_its_own_key():
    hp = {"augment.shift": 1.0, "augment.noise": 0.3, "augment.cutout": 2.0}
    steps, bs, lr = 12, 32, 0.05
    result = jaxtune.run_sweep(
        {
            "task": {"dataset": "synthetic", "widths": [16]},
            "optimizer": {"name": "sgd", "learning_rate": lr},
            "augment": {"shift": 1.0, "noise": 0.3, "cutout": 2.0},
            "train": {"steps": steps, "eval_every": 6, "batch_size": bs},
            "sweep": {"grid": {"train.seed": [0, 5]}},
        }
    )
    assert result.trial_task(0)[0].augment is image_augment
    train = data_lib.make_classification().train
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(16,))
    for t in result.trials:
        params, _, _ = optax_loop(
            model,
            train,
            optax.sgd(lr),
            steps=steps,
            batch_size=bs,
            seed=t.hparams["train.seed"],
            forward=mlp_forward,
            augment=lambda key, x: image_augment(key, x, hp),
        )
        mine = result.trial_state(t.id).params
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_augmentation_is_off_by_default():
    result = jaxtune.run_sweep(
        {"task": {"dataset": "synthetic", "widths": [8]}, "train": {"steps": 2, "eval_every": 2}}
    )
    assert result.trial_task(0)[0].augment is None
