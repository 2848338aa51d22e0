"""Tests for jaxtune.data: standardization, splits, loaders, validation, subsets and batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_diabetes as sklearn_load_diabetes
from sklearn.datasets import load_digits as sklearn_load_digits
from sklearn.model_selection import train_test_split

from jaxtune.data import (
    Splits,
    Standardizer,
    batch_indices,
    check_classification,
    check_splits,
    input_shape,
    load_diabetes,
    load_digits,
    make_classification,
    num_classes,
    padded_batch_indices,
    subset,
    with_validation,
)
from jaxtune.errors import TaskError


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_digits()


@pytest.fixture(scope="module")
def raw_split() -> tuple[np.ndarray, ...]:
    """Unstandardized digits train/valid/test computed independently of jaxtune: 20% test,
    then 10% of all examples as validation out of the rest, both stratified."""
    x, y = sklearn_load_digits(return_X_y=True)
    x_rest, x_te, y_rest, y_te = train_test_split(
        x.astype(np.float64), y, test_size=0.2, stratify=y, random_state=0
    )
    x_tr, x_va, y_tr, y_va = train_test_split(
        x_rest, y_rest, test_size=0.125, stratify=y_rest, random_state=0
    )
    return x_tr, x_va, x_te, y_tr, y_va, y_te


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


def test_standardizer_rejects_bad_min_std_and_non_finite_inputs() -> None:
    with pytest.raises(ValueError, match="min_std"):
        Standardizer.fit(np.ones((3, 2)), min_std=0.0)
    x = np.ones((4, 3))
    x[1, 2], x[3, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"x_train contains 2 non-finite value\(s\)"):
        Standardizer.fit(x)


# ------------------------------------------------------------------------------------------
# Digits and diabetes
# ------------------------------------------------------------------------------------------


def test_digits_train_is_standardized(digits: Splits, raw_split) -> None:
    live = raw_split[0].std(axis=0) > 0
    const = ~live
    assert live.sum() > 50 and const.sum() >= 1  # digits has constant pixels
    z = digits.train[0].astype(np.float64)
    np.testing.assert_allclose(z[:, live].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, live].std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(z[:, const], 0.0)
    assert all(np.all(np.isfinite(s[0])) for s in digits)


def test_digits_valid_and_test_use_train_statistics(digits: Splits, raw_split) -> None:
    x_tr, x_va, x_te, y_tr, y_va, y_te = raw_split
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std < 1e-6] = 1.0  # constant pixels keep scale 1 (as sklearn's StandardScaler)
    for split, x, y in zip(digits, (x_tr, x_va, x_te), (y_tr, y_va, y_te), strict=True):
        np.testing.assert_allclose(split[0], (x - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(split[1], y)
    # The held-out splits were not standardized with their own statistics.
    live = x_tr.std(axis=0) > 0
    for split in (digits.valid, digits.test):
        assert np.abs(split[0][:, live].astype(np.float64).mean(axis=0)).max() > 1e-2


def test_digits_return_standardizer(raw_split) -> None:
    splits, s = load_digits(return_standardizer=True)
    np.testing.assert_allclose(np.asarray(s.mean), raw_split[0].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.transform(raw_split[2])), splits.test[0], rtol=1e-6)


def test_digits_shapes_dtypes_and_labels(digits: Splits) -> None:
    assert [s[0].shape for s in digits] == [(1257, 64), (180, 64), (360, 64)]
    assert all(s[0].dtype == np.float32 and s[1].dtype == np.int32 for s in digits)
    assert all(s[1].min() >= 0 and s[1].max() < 10 for s in digits)
    assert num_classes(digits) == 10
    assert input_shape(digits) == (64,)
    images = load_digits(flat=False)
    assert [s[0].shape for s in images] == [(1257, 8, 8, 1), (180, 8, 8, 1), (360, 8, 8, 1)]
    assert input_shape(images) == (8, 8, 1)
    for a, b in zip(images, digits, strict=True):
        np.testing.assert_allclose(a[0].reshape(-1, 64), b[0], atol=1e-6)


def test_digits_is_stratified(digits: Splits) -> None:
    p = [np.bincount(s[1], minlength=10) / len(s[1]) for s in digits]
    np.testing.assert_allclose(p[0], p[2], atol=0.01)
    np.testing.assert_allclose(p[0], p[1], atol=0.02)
    assert abs(len(digits.test[1]) / 1797 - 0.2) < 0.01
    assert abs(len(digits.valid[1]) / 1797 - 0.1) < 0.01


def test_digits_seed_and_fractions() -> None:
    a, b = load_digits(seed=0), load_digits(seed=1)
    assert not np.array_equal(a.train[1], b.train[1])
    c = load_digits(valid_fraction=0.3, test_fraction=0.1)
    assert [len(s[1]) for s in c] == [1078, 539, 180]
    with pytest.raises(ValueError, match="valid_fraction"):
        load_digits(valid_fraction=0.0)
    with pytest.raises(ValueError, match="leaves no training data"):
        load_digits(valid_fraction=0.5, test_fraction=0.5)


def test_diabetes_inputs_and_targets_standardized_on_train() -> None:
    splits, (sx, sy) = load_diabetes(return_standardizer=True)
    x, y = sklearn_load_diabetes(return_X_y=True, scaled=False)
    assert sum(len(s[1]) for s in splits) == 442
    assert [s[0].shape[1] for s in splits] == [10, 10, 10]
    x_tr, y_tr = splits.train
    np.testing.assert_allclose(x_tr.astype(np.float64).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y_tr.astype(np.float64).std(), 1.0, atol=1e-5)
    # Raw targets come back through the target standardizer and are diabetes targets.
    raw = np.asarray(sy.inverse_transform(splits.test[1]), np.float64)
    assert np.all(np.isin(np.round(raw), y))
    assert y_tr.dtype == np.float32 and y_tr.ndim == 1


# ------------------------------------------------------------------------------------------
# Synthetic data
# ------------------------------------------------------------------------------------------


def test_make_classification_deterministic_and_standardized() -> None:
    a = make_classification(seed=3)
    b = make_classification(seed=3)
    c = make_classification(seed=4)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.train[0], c.train[0])
    assert [s[0].shape for s in a] == [(512, 16), (128, 16), (256, 16)]
    assert a.train[0].dtype == np.float32 and a.train[1].dtype == np.int32
    assert set(np.unique(a.train[1])) == {0, 1, 2, 3}
    z = a.train[0].astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)


def test_make_classification_is_learnable() -> None:
    s = make_classification(seed=0)
    x, y = s.train
    centroids = np.stack([x[y == k].mean(axis=0) for k in range(4)])
    for xs, ys in (s.valid, s.test):
        dist = ((xs[:, None, :] - centroids[None]) ** 2).sum(-1)
        assert (dist.argmin(axis=1) == ys).mean() > 0.9


def test_make_classification_image_forms() -> None:
    s = make_classification(n_train=32, n_valid=4, n_test=8, image_shape=(4, 6, 3), num_classes=3)
    assert s.train[0].shape == (32, 4, 6, 3) and s.test[0].shape == (8, 4, 6, 3)
    np.testing.assert_allclose(s.train[0].astype(np.float64).mean(axis=0), 0.0, atol=1e-5)
    square = make_classification(n_train=16, n_test=8, flat=False)
    assert square.train[0].shape == (16, 4, 4, 1)
    with pytest.raises(ValueError, match="square"):
        make_classification(num_features=10, flat=False)


# ------------------------------------------------------------------------------------------
# Splits: validation, carving, subsets
# ------------------------------------------------------------------------------------------


def _tiny() -> Splits:
    x = np.zeros((6, 3), np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    return Splits((x, y), (x[:4].copy(), y[:4].copy()), (x[:2].copy(), y[:2].copy()))


def test_check_splits_accepts_good_data_and_pytrees() -> None:
    check_splits(_tiny())
    check_classification(_tiny(), num_classes=3)
    x = {"a": np.zeros((5, 2)), "b": np.zeros((5, 7), np.int32)}
    y = np.zeros((5, 3), np.float32)
    check_splits(Splits((x, y), (x, y)))


def test_check_splits_names_the_split() -> None:
    s = _tiny()
    bad = s.test[0].copy()
    bad[0, 0], bad[1, 1] = np.nan, np.inf
    with pytest.raises(TaskError, match=r"data.test inputs contain 2 non-finite"):
        check_splits(s._replace(test=(bad, s.test[1])))
    with pytest.raises(TaskError, match="data.valid is empty"):
        check_splits(s._replace(valid=(s.valid[0][:0], s.valid[1][:0])))
    with pytest.raises(TaskError, match="data.valid is None"):
        check_splits(s._replace(valid=None))
    with pytest.raises(TaskError, match="data.train: inputs and targets disagree"):
        check_splits(s._replace(train=(s.train[0], s.train[1][:5])))
    with pytest.raises(TaskError, match="data.test does not match data.train"):
        check_splits(s._replace(test=(np.zeros((2, 2), np.float32), s.test[1])))
    with pytest.raises(TaskError, match="must be a jaxtune.Splits"):
        check_splits((s.train, s.valid))


def test_check_classification_labels() -> None:
    s = _tiny()
    with pytest.raises(TaskError, match=r"data.train labels must lie in \[0, 2\)"):
        check_classification(s, num_classes=2)
    with pytest.raises(TaskError, match="data.test"):
        check_classification(s._replace(test=(s.test[0], np.array([0, -1], np.int32))))
    with pytest.raises(TaskError, match="integer labels"):
        check_classification(s._replace(train=(s.train[0], s.train[1].astype(np.float32))))


def test_with_validation_carves_from_train_only() -> None:
    x = np.arange(40.0).reshape(20, 2)
    y = np.arange(20)
    s = with_validation(Splits((x, y), None, (x[:3], y[:3])), 0.25, seed=1)
    assert len(s.train[1]) == 15 and len(s.valid[1]) == 5
    assert sorted(np.concatenate([s.train[1], s.valid[1]]).tolist()) == list(range(20))
    assert np.all(np.diff(s.train[1]) > 0)  # original order kept
    np.testing.assert_array_equal(s.test[1], y[:3])
    assert with_validation(s, 0.5) is s  # an existing validation split is kept


def test_subset(digits: Splits) -> None:
    small = subset(digits, 100, n_eval=50, seed=1)
    assert small.train[0].shape == (100, 64) and small.test[0].shape == (50, 64)
    np.testing.assert_array_equal(small.valid[0], digits.valid[0][:50])
    again = subset(digits, 100, n_eval=50, seed=1)
    np.testing.assert_array_equal(small.train[0], again.train[0])
    # Every subset row is a distinct row of the original training split, label attached.
    rows = {tuple(r): int(lab) for r, lab in zip(*digits.train, strict=True)}
    assert len({tuple(r) for r in small.train[0]}) == 100
    for r, lab in zip(*small.train, strict=True):
        assert rows[tuple(r)] == int(lab)
    assert not np.array_equal(subset(digits, 100, seed=2).train[1], small.train[1])
    assert subset(digits, 100).test[0].shape == digits.test[0].shape


@pytest.mark.parametrize("n", [0, -1, 1258])
def test_subset_bounds(digits: Splits, n: int) -> None:
    with pytest.raises(ValueError, match=rf"n = {n}.*\[1, 1257\]"):
        subset(digits, n)
    with pytest.raises(ValueError, match=r"n_eval = 181.*\[1, 180\]"):
        subset(digits, 10, n_eval=181)


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
