"""Tests for jaxtune.data: standardization, loaders, validation, subsets and batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits as sklearn_load_digits
from sklearn.model_selection import train_test_split

from jaxtune.data import (
    DATASET_NAMES,
    Dataset,
    Standardizer,
    batch_indices,
    input_shape,
    load_dataset,
    load_digits,
    make_classification,
    num_classes,
    padded_batch_indices,
    subset,
    validate_dataset,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def raw_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unstandardized digits split computed independently of jaxtune."""
    x, y = sklearn_load_digits(return_X_y=True)
    return train_test_split(x.astype(np.float64), y, test_size=0.2, stratify=y, random_state=0)


# ------------------------------------------------------------------------------------------
# Standardizer
# ------------------------------------------------------------------------------------------


def test_standardizer_train_stats_and_constant_features() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 5.0, size=(200, 5))
    x[:, 2] = 7.25  # constant feature
    s = Standardizer.fit(x)
    z = np.asarray(s.transform(x), dtype=np.float64)
    assert s.mean.dtype == jnp.float32 and s.std.dtype == jnp.float32
    assert np.all(np.isfinite(z))
    np.testing.assert_array_equal(z[:, 2], 0.0)
    live = [0, 1, 3, 4]
    np.testing.assert_allclose(z[:, live].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[:, live].std(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.inverse_transform(z)), x, rtol=1e-5, atol=1e-5)
    # A constant feature keeps scale 1 elsewhere: an unseen value is not blown up.
    assert float(s.std[2]) == 1.0
    np.testing.assert_allclose(np.asarray(s.transform(x[:1] + 1.0))[0, 2], 1.0, rtol=1e-6)


def test_standardizer_is_pytree_and_jittable() -> None:
    x = np.arange(12.0).reshape(4, 3)
    s = Standardizer.fit(x, min_std=0.5)
    leaves = jax.tree_util.tree_leaves(s)
    assert len(leaves) == 2
    jitted = jax.jit(lambda st_, v: st_.transform(v))(s, x)
    np.testing.assert_allclose(np.asarray(jitted), (x - x.mean(0)) / x.std(0), rtol=1e-6)
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, s)
    assert isinstance(doubled, Standardizer)
    np.testing.assert_allclose(np.asarray(doubled.mean), 2 * x.mean(0))


def test_standardizer_rejects_bad_min_std() -> None:
    with pytest.raises(ValueError, match="min_std"):
        Standardizer.fit(np.ones((3, 2)), min_std=0.0)


# ------------------------------------------------------------------------------------------
# Digits
# ------------------------------------------------------------------------------------------


def test_digits_train_is_standardized(digits: Dataset, raw_split) -> None:
    x_train_raw = raw_split[0]
    live = x_train_raw.std(axis=0) > 0
    const = ~live
    assert live.sum() > 50 and const.sum() >= 1  # digits has constant pixels
    z = digits.x_train.astype(np.float64)
    np.testing.assert_allclose(z[:, live].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, live].std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(z[:, const], 0.0)
    assert np.all(np.isfinite(digits.x_train)) and np.all(np.isfinite(digits.x_test))


def test_digits_test_uses_train_statistics(digits: Dataset, raw_split) -> None:
    x_train_raw, x_test_raw, y_train_raw, y_test_raw = raw_split
    mean = x_train_raw.mean(axis=0)
    std = x_train_raw.std(axis=0)
    std[std < 1e-6] = 1.0  # constant pixels keep scale 1 (as sklearn's StandardScaler)
    np.testing.assert_allclose(digits.x_train, (x_train_raw - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(digits.x_test, (x_test_raw - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(digits.y_train, y_train_raw)
    np.testing.assert_array_equal(digits.y_test, y_test_raw)
    # The test split was not standardized with its own statistics.
    live = x_train_raw.std(axis=0) > 0
    assert np.abs(digits.x_test[:, live].astype(np.float64).mean(axis=0)).max() > 1e-2
    assert np.abs(digits.x_test).max() <= 16.0 / std[std > 0].min() + 1e-3


def test_digits_return_standardizer(raw_split) -> None:
    ds, s = load_digits(return_standardizer=True)
    np.testing.assert_allclose(np.asarray(s.mean), raw_split[0].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.transform(raw_split[1])), ds.x_test, rtol=1e-6)


def test_digits_shapes_dtypes_and_labels(digits: Dataset) -> None:
    assert digits.x_train.shape == (1437, 64) and digits.x_test.shape == (360, 64)
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int32 and digits.y_test.dtype == np.int32
    for y in (digits.y_train, digits.y_test):
        assert y.min() >= 0 and y.max() < 10
    assert num_classes(digits) == 10
    assert input_shape(digits) == (64,)
    images = load_digits(flat=False)
    assert images.x_train.shape == (1437, 8, 8, 1) and images.x_test.shape == (360, 8, 8, 1)
    assert images.x_train.dtype == np.float32 and images.y_train.dtype == np.int32
    assert input_shape(images) == (8, 8, 1)
    np.testing.assert_allclose(images.x_train.reshape(1437, 64), digits.x_train, atol=1e-6)
    np.testing.assert_allclose(images.x_test.reshape(360, 64), digits.x_test, atol=1e-6)


def test_digits_is_stratified(digits: Dataset) -> None:
    p_train = np.bincount(digits.y_train, minlength=10) / len(digits.y_train)
    p_test = np.bincount(digits.y_test, minlength=10) / len(digits.y_test)
    np.testing.assert_allclose(p_train, p_test, atol=0.01)
    assert abs(len(digits.y_test) / 1797 - 0.2) < 0.01


def test_digits_seed_changes_split() -> None:
    a, b = load_digits(seed=0), load_digits(seed=1)
    assert not np.array_equal(a.y_train, b.y_train)


# ------------------------------------------------------------------------------------------
# Synthetic data and dispatch
# ------------------------------------------------------------------------------------------


def test_make_classification_deterministic_and_standardized() -> None:
    a = make_classification(seed=3)
    b = make_classification(seed=3)
    c = make_classification(seed=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape == (512, 16) and a.x_test.shape == (256, 16)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
    assert set(np.unique(a.y_train)) == {0, 1, 2, 3}
    z = a.x_train.astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)


def test_make_classification_is_learnable() -> None:
    ds = make_classification(seed=0)
    centroids = np.stack([ds.x_train[ds.y_train == k].mean(axis=0) for k in range(4)])
    dist = ((ds.x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(axis=1) == ds.y_test).mean()
    assert accuracy > 0.9


def test_make_classification_image_forms() -> None:
    ds = make_classification(n_train=32, n_test=8, image_shape=(4, 6, 3), num_classes=3)
    assert ds.x_train.shape == (32, 4, 6, 3) and ds.x_test.shape == (8, 4, 6, 3)
    np.testing.assert_allclose(ds.x_train.astype(np.float64).mean(axis=0), 0.0, atol=1e-5)
    square = make_classification(n_train=16, n_test=8, flat=False)
    assert square.x_train.shape == (16, 4, 4, 1)
    with pytest.raises(ValueError, match="square"):
        make_classification(num_features=10, flat=False)


def test_load_dataset_dispatch() -> None:
    assert set(DATASET_NAMES) == {"digits", "synthetic"}
    syn = load_dataset("synthetic", seed=2, n_train=20, n_test=10)
    np.testing.assert_array_equal(
        syn.x_train, make_classification(seed=2, n_train=20, n_test=10).x_train
    )
    assert load_dataset("digits", flat=False).x_train.shape == (1437, 8, 8, 1)
    with pytest.raises(ValueError, match="'digits', 'synthetic'"):
        load_dataset("mnist")


# ------------------------------------------------------------------------------------------
# Validation and subsets
# ------------------------------------------------------------------------------------------


def _tiny() -> Dataset:
    x = np.zeros((6, 3), np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    return Dataset(x, y, x[:4].copy(), y[:4].copy())


def test_validate_accepts_good_data() -> None:
    validate_dataset(_tiny(), num_classes=3)
    validate_dataset(_tiny())


def test_validate_catches_non_finite_inputs() -> None:
    ds = _tiny()
    x_test = ds.x_test.copy()
    x_test[0, 0], x_test[2, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"x_test contains 2 non-finite"):
        validate_dataset(ds._replace(x_test=x_test))


def test_validate_catches_bad_labels() -> None:
    ds = _tiny()
    with pytest.raises(ValueError, match=r"y_train labels must lie in \[0, 2\)"):
        validate_dataset(ds, num_classes=2)
    with pytest.raises(ValueError, match="y_test"):
        validate_dataset(ds._replace(y_test=np.array([0, -1, 0, 0], np.int32)))
    with pytest.raises(ValueError, match="integers"):
        validate_dataset(ds._replace(y_train=ds.y_train.astype(np.float32)))


def test_validate_catches_length_and_shape_mismatch() -> None:
    ds = _tiny()
    with pytest.raises(ValueError, match="length mismatch in train"):
        validate_dataset(ds._replace(y_train=ds.y_train[:5]))
    with pytest.raises(ValueError, match="feature shape mismatch"):
        validate_dataset(ds._replace(x_test=np.zeros((4, 2), np.float32)))


def test_subset(digits: Dataset) -> None:
    small = subset(digits, 100, n_test=50, seed=1)
    assert small.x_train.shape == (100, 64) and small.x_test.shape == (50, 64)
    np.testing.assert_array_equal(small.x_test, digits.x_test[:50])
    again = subset(digits, 100, n_test=50, seed=1)
    np.testing.assert_array_equal(small.x_train, again.x_train)
    # Every subset row is a distinct row of the original training split, label attached.
    rows = {tuple(r): int(lab) for r, lab in zip(digits.x_train, digits.y_train, strict=True)}
    keys = {tuple(r) for r in small.x_train}
    assert len(keys) == 100
    for r, lab in zip(small.x_train, small.y_train, strict=True):
        assert rows[tuple(r)] == int(lab)
    assert not np.array_equal(subset(digits, 100, seed=2).y_train, small.y_train)
    assert subset(digits, 100).x_test.shape == digits.x_test.shape


@pytest.mark.parametrize("n", [0, -1, 1438])
def test_subset_bounds(digits: Dataset, n: int) -> None:
    with pytest.raises(ValueError, match=rf"n={n}.*\[1, 1437\]"):
        subset(digits, n)


def test_subset_test_bounds(digits: Dataset) -> None:
    with pytest.raises(ValueError, match=r"n_test=361.*\[1, 360\]"):
        subset(digits, 10, n_test=361)


# ------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------

# Every distinct ``n`` (and vmapped batch of keys) costs one permutation compile, so the tests
# below share N and a vmap width of 3 to keep the file fast.
KEY = jax.random.key(42)
N = 96


def test_batches_cover_each_epoch_exactly_once() -> None:
    b = 16  # divides N: 6 steps per epoch
    epochs = [
        np.stack([np.asarray(batch_indices(KEY, e * 6 + s, b, N)) for s in range(6)])
        for e in range(3)
    ]
    for batches in epochs:
        assert batches.shape == (6, 16) and batches.dtype == np.int32
        np.testing.assert_array_equal(np.sort(batches.ravel()), np.arange(N))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_batches_disjoint_when_not_dividing() -> None:
    b = 20  # 4 steps per epoch, 16 examples dropped
    batches = np.stack([np.asarray(batch_indices(KEY, 4 + s, b, N)) for s in range(4)])
    flat = batches.ravel()
    assert len(np.unique(flat)) == 80 and flat.min() >= 0 and flat.max() < N
    # Step 8 starts a new epoch and may reuse examples of the previous one.
    nxt = np.asarray(batch_indices(KEY, 8, b, N))
    assert not np.array_equal(nxt, batches[0])


def test_batches_match_reference_slicing() -> None:
    b, step = 7, 28  # 13 steps per epoch: step 28 is batch 2 of epoch 2
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, 2), N))
    np.testing.assert_array_equal(np.asarray(batch_indices(KEY, step, b, N)), perm[14:21])


def test_batches_deterministic_and_key_dependent() -> None:
    a = np.asarray(batch_indices(KEY, 5, 8, N))
    np.testing.assert_array_equal(a, np.asarray(batch_indices(KEY, 5, 8, N)))
    assert not np.array_equal(a, np.asarray(batch_indices(jax.random.key(7), 5, 8, N)))


def test_batches_under_jit_and_vmap() -> None:
    b = 16
    # One compile covers both: a traced step under jit and a vmap over keys.
    fn = jax.jit(jax.vmap(batch_indices, in_axes=(0, None, None, None)), static_argnums=(2, 3))
    keys = jax.random.split(KEY, 3)
    for step in (0, 9, 17):
        out = np.asarray(fn(keys, jnp.int32(step), b, N))
        assert out.shape == (3, b) and out.dtype == np.int32
        for i in range(3):
            np.testing.assert_array_equal(out[i], np.asarray(batch_indices(keys[i], step, b, N)))
        assert len({tuple(r) for r in out}) == 3


@pytest.mark.parametrize(("batch_size", "n"), [(0, 10), (11, 10), (2.0, 10), (True, 10), (4, 0)])
def test_batch_indices_rejects_bad_sizes(batch_size, n) -> None:
    with pytest.raises(ValueError, match=r"(batch_size|n)\b.*\[1, "):
        batch_indices(KEY, 0, batch_size, n)


def test_batch_indices_rejects_traced_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size.*concrete"):
        jax.jit(lambda b: batch_indices(KEY, 0, b, 10))(4)


MAX_B = 50
# vmapped over (key, step, batch_size) and jitted once; both padded tests reuse the compile.
PADDED = jax.jit(jax.vmap(lambda k, s, b: padded_batch_indices(k, s, b, N, MAX_B)))


def _check_padded(keys, steps, sizes) -> None:
    idx, mask = (np.asarray(a) for a in PADDED(keys, jnp.array(steps), jnp.array(sizes)))
    assert idx.shape == (3, MAX_B) and idx.dtype == np.int32 and mask.dtype == np.bool_
    assert idx.min() >= 0 and idx.max() < N
    for row, (step, b) in enumerate(zip(steps, sizes, strict=True)):
        expected = np.asarray(batch_indices(keys[row], step, b, N))
        np.testing.assert_array_equal(idx[row, :b], expected)
        assert mask[row].sum() == b and mask[row, :b].all()


def test_padded_batches_vmapped_over_batch_size() -> None:
    keys = jnp.stack([KEY] * 3)
    for step in (0, 2, 5, 30):  # step 2 is in epoch 1 for b=50 but in epoch 0 for b=8
        _check_padded(keys, [step] * 3, [8, 32, 50])


def test_padded_batches_vmapped_over_keys_and_steps() -> None:
    _check_padded(jax.random.split(KEY, 3), [0, 5, 11], [3, 17, 50])


def test_padded_batch_rejects_bad_concrete_sizes() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        padded_batch_indices(KEY, 0, 9, 20, 8)
    with pytest.raises(ValueError, match="max_batch_size"):
        padded_batch_indices(KEY, 0, 4, 20, 21)


# ``n`` comes from a short list because each new ``n`` compiles a new permutation.
@settings(max_examples=20, deadline=None, database=None)
@given(
    n=st.sampled_from([13, N]),
    batch_frac=st.floats(0.0, 1.0),
    step=st.integers(0, 10_000),
)
def test_batch_indices_property(n: int, batch_frac: float, step: int) -> None:
    batch_size = 1 + int(batch_frac * (n - 1))
    idx = np.asarray(batch_indices(KEY, step, batch_size, n))
    steps_per_epoch = n // batch_size
    epoch, within = divmod(step, steps_per_epoch)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, epoch), n))
    assert sorted(perm.tolist()) == list(range(n))
    start = within * batch_size
    np.testing.assert_array_equal(idx, perm[start : start + batch_size])
    assert idx.dtype == np.int32 and len(np.unique(idx)) == batch_size
    padded, mask = padded_batch_indices(KEY, jnp.int32(step), jnp.int32(batch_size), n, n)
    padded, mask = np.asarray(padded), np.asarray(mask)
    np.testing.assert_array_equal(padded[:batch_size], idx)
    assert int(mask.sum()) == batch_size and not mask[batch_size:].any()
    assert padded.min() >= 0 and padded.max() < n
