"""Train / validation / test splits of ``(inputs, targets)`` pairs.

A split is a pair ``(inputs, targets)`` whose leaves are arrays with a leading example axis:
plain arrays, or pytrees of arrays (several inputs, token ids with masks, multi-output targets).
A split may also be read on the host (:mod:`jaxtune.data.sources`): a pair with ``np.memmap`` or
random-access sources among its leaves, a :class:`~jaxtune.data.HostSource`, or a source whose
items are ``(inputs, targets)`` pairs. :class:`Splits` holds three splits; ``test`` may be
``None``. Hyperparameters are chosen on ``valid``; ``test`` is reported, never used to choose.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtune.data.sources import as_source, check_source, is_host_source
from jaxtune.errors import ConfigError, TaskError

__all__ = [
    "Splits",
    "check_classification",
    "check_splits",
    "input_shape",
    "num_classes",
    "num_examples",
    "subset",
    "take_subset",
    "with_validation",
]

SPLITS = ("train", "valid", "test")


class Splits(NamedTuple):
    """``train``, ``valid`` and ``test`` pairs of ``(inputs, targets)``; ``test`` may be None.

    Example:
        >>> import numpy as np
        >>> s = Splits((np.zeros((8, 2)), np.zeros(8)), (np.zeros((4, 2)), np.zeros(4)))
        >>> num_examples(s.train), s.test
        (8, None)
    """

    train: Any
    valid: Any = None
    test: Any = None


def num_examples(split: Any) -> int:
    """The length of the leading axis shared by every leaf of a split (a host source's length).

    Example:
        >>> num_examples((np.zeros((5, 2)), np.zeros(5)))
        5
    """
    if is_host_source(split):
        return len(as_source(split))
    leaves = jax.tree.leaves(split)
    return int(np.shape(leaves[0])[0]) if leaves else 0


def input_shape(splits: Splits) -> tuple[int, ...]:
    """Per-example shape of the training inputs (plain-array inputs only).

    Example:
        >>> from jaxtune.data import load_digits
        >>> input_shape(load_digits(flat=False))
        (8, 8, 1)
    """
    if is_host_source(splits.train):
        return tuple(int(d) for d in as_source(splits.train).element_spec[0].shape)
    return tuple(int(d) for d in np.shape(splits.train[0])[1:])


def num_classes(splits: Splits) -> int:
    """One more than the largest integer label of any split.

    Example:
        >>> from jaxtune.data import load_digits
        >>> num_classes(load_digits())
        10
    """
    targets = [_targets(s, n) for n, s in zip(SPLITS, splits, strict=True) if s is not None]
    labels = [y for y in targets if np.size(y)]
    return max(int(y.max()) for y in labels) + 1 if labels else 0


def _targets(split: Any, name: str) -> Any:
    """A split's targets; those of a host source are read alone (its inputs are not)."""
    if not is_host_source(split):
        return np.asarray(split[1])
    targets = as_source(split, name=f"data.{name}").part(1)
    return targets.gather(np.arange(len(targets)))


def _take(split: Any, idx: np.ndarray) -> Any:
    """The examples at ``idx``; of a host source, a view that reads nothing."""
    if is_host_source(split):
        return as_source(split).take(idx)
    return jax.tree.map(lambda a: np.asarray(a)[idx], split)


def check_splits(splits: Any, *, where: str = "data") -> None:
    """Check the shape of a :class:`Splits` and raise :class:`TaskError` naming the split.

    Each of ``train`` and ``valid`` (and ``test`` unless None) must be an ``(inputs, targets)``
    pair of numeric arrays (or pytrees of them) with one shared, non-zero leading length;
    floating inputs must be finite; per-example shapes and the tree structure must agree
    across splits. A host source (:func:`jaxtune.data.is_host_source`) is not read whole:
    :func:`jaxtune.data.check_source` checks a seeded sample of its rows.
    """
    if not isinstance(splits, Splits):
        raise TaskError(
            f"{where} must be a jaxtune.Splits(train, valid, test), got {type(splits).__name__}"
        )
    reference = None
    for name in SPLITS:
        split = getattr(splits, name)
        if split is None:
            if name == "test":
                continue
            raise TaskError(
                f"{where}.{name} is None: jaxtune chooses hyperparameters on a validation split; "
                "give one, or carve it out of train with jaxtune.data.with_validation"
            )
        if is_host_source(split):
            spec = check_source(split, f"{where}.{name}")
            if not isinstance(spec, tuple | list) or len(spec) != 2:
                raise TaskError(
                    f"{where}.{name} must be an (inputs, targets) pair: its items have "
                    f"structure {jax.tree.structure(spec)}"
                )
        else:
            _check_arrays(split, f"{where}.{name}")
            spec = as_source(split).element_spec
        spec = tuple(spec)
        structure, shape = jax.tree.structure(spec), jax.tree.map(lambda a: a.shape, spec)
        if reference is None:
            reference = (name, structure, shape)
        elif structure != reference[1] or shape != reference[2]:
            raise TaskError(
                f"{where}.{name} does not match {where}.{reference[0]}: per-example shapes "
                f"{shape} vs {reference[2]}"
            )


def _check_arrays(split: Any, where: str) -> None:
    """An in-memory pair: numeric arrays of one shared, non-zero length, finite floats."""
    if not isinstance(split, tuple | list) or len(split) != 2:
        raise TaskError(f"{where} must be an (inputs, targets) pair")
    leaves = jax.tree.leaves(split)
    lengths = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in leaves}
    if not leaves or -1 in lengths:
        raise TaskError(
            f"{where}: every input and target must be an array with a leading example axis"
        )
    if len(lengths) != 1:
        raise TaskError(
            f"{where}: inputs and targets disagree on the number of examples ({sorted(lengths)})"
        )
    if lengths == {0}:
        raise TaskError(f"{where} is empty: it needs at least one example")
    for part, tree in zip(("inputs", "targets"), split, strict=True):
        for a in jax.tree.leaves(tree):
            a = np.asarray(a)
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise TaskError(f"{where} {part} must be numeric, got dtype {a.dtype}")
            if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                raise TaskError(f"{where} {part} contain {bad} non-finite value(s) (NaN or inf)")


def check_classification(splits: Splits, *, num_classes: int | None = None) -> None:
    """Raise :class:`TaskError` unless every split's targets are integer labels ``[N]`` in range.

    Example:
        >>> import numpy as np
        >>> s = Splits((np.zeros((2, 1)), np.array([0, 1])), (np.zeros((1, 1)), np.array([1])))
        >>> check_classification(s, num_classes=2)
    """
    for name in SPLITS:
        split = getattr(splits, name)
        if split is None:
            continue
        y = _targets(split, name)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TaskError(
                f"data.{name} targets must be integer labels of shape [N], got shape {y.shape} "
                f"and dtype {y.dtype}"
            )
        if y.size and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
            upper = "num_classes" if num_classes is None else str(num_classes)
            raise TaskError(
                f"data.{name} labels must lie in [0, {upper}), found [{y.min()}, {y.max()}]"
            )


def with_validation(splits: Splits, fraction: float, *, seed: int = 0) -> Splits:
    """``splits`` itself when it has a validation split; otherwise one carved out of train.

    The last ``round(fraction * n)`` examples of a seeded permutation of the training split
    become ``valid`` (at least one); the rest stay in ``train`` in their original order. A
    host-source training split becomes two views of it (:meth:`HostSource.take`); nothing is
    read.

    Example:
        >>> import numpy as np
        >>> s = with_validation(Splits((np.arange(10.0)[:, None], np.arange(10))), 0.2)
        >>> len(s.train[1]), len(s.valid[1])
        (8, 2)
    """
    if splits.valid is not None:
        return splits
    if not 0.0 < fraction < 1.0:
        raise TaskError(
            f"task.valid_fraction = {fraction!r} is invalid: expected a number in (0, 1)"
        )
    n = num_examples(splits.train)
    k = max(1, int(round(fraction * n)))
    if k >= n:
        raise TaskError(
            f"the training split ({n} examples) is too small to carve a validation split"
        )
    perm = np.random.default_rng(seed).permutation(n)
    keep, held = np.sort(perm[: n - k]), np.sort(perm[n - k :])
    return Splits(_take(splits.train, keep), _take(splits.train, held), splits.test)


def subset(splits: Splits, n: int, *, n_eval: int | None = None, seed: int = 0) -> Splits:
    """A small deterministic subset, for debugging.

    Args:
        splits: the splits to cut down.
        n: number of training examples, in [1, len(train)]: the first ``n`` of a seeded
            permutation, kept in their original order.
        n_eval: if given, keep only the first ``n_eval`` examples of ``valid`` and ``test``.
        seed: seed of the permutation.

    Returns:
        The cut-down splits; a host-source split becomes a view of it that reads nothing.

    Example:
        >>> from jaxtune.data import load_digits
        >>> num_examples(subset(load_digits(), 100, n_eval=50).valid)
        50
    """
    n_train = num_examples(splits.train)
    if not 1 <= n <= n_train:
        raise ValueError(f"n = {n} is out of range; allowed range is [1, {n_train}]")
    idx = np.sort(np.random.default_rng(seed).permutation(n_train)[:n])
    out = [_take(splits.train, idx)]
    for split in (splits.valid, splits.test):
        if split is None or n_eval is None:
            out.append(split)
            continue
        size = num_examples(split)
        if not 1 <= n_eval <= size:
            raise ValueError(f"n_eval = {n_eval} is out of range; allowed range is [1, {size}]")
        out.append(_take(split, np.arange(n_eval)))
    return Splits(*out)


def take_subset(splits: Splits, n: int, *, key: str = "task.subset") -> Splits:
    """:func:`subset` of ``n`` training examples for the configuration key ``key`` (0: all).

    Raises:
        ConfigError: naming ``key`` and the allowed range when ``n`` is outside ``[0, len(train)]``.

    Example:
        >>> from jaxtune.data import load_digits
        >>> num_examples(take_subset(load_digits(), 100).train)
        100
    """
    have = num_examples(splits.train)
    if not 0 <= n <= have:
        raise ConfigError(
            f"{key} = {n} is invalid: expected an integer in [0, {have}] (the training set has "
            f"{have} examples)"
        )
    return subset(splits, n) if n else splits
