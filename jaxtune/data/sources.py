"""Host sources: splits read by index from host memory or disk, never put on a device whole.

A split's inputs, its targets, or the ``(inputs, targets)`` pair may be given as

* a NumPy array or an ``np.memmap`` (or a pytree of them) with a leading example axis: rows are
  read by NumPy fancy indexing, so a memmap gather reads only the rows it is asked for;
* a random-access data source: anything with ``__len__`` and ``__getitem__(int)`` whose items
  are pytrees of arrays (``(x, y)`` pairs, dicts), such as a ``grain.MapDataset`` or a grain
  data source. Items are read in one batched call where the source offers one
  (``__getitems__``, or grain's batched-read ``_getitems``), else one per index, and stacked.

:class:`HostSource` wraps any of these (and pytrees mixing them, e.g. a source of inputs beside
an array of labels) behind one interface: ``len``, :meth:`HostSource.gather`,
:attr:`HostSource.element_spec` and :attr:`HostSource.nbytes`. Lists, tuples and dicts are
pytree containers, never sources: wrap a Python list of records in ``grain.MapDataset.source``.

Example:
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> y = np.arange(6)
    >>> source = as_source((x, y), name="data.train")
    >>> len(source), source.nbytes
    (6, 144)
    >>> xb, yb = source.gather(np.array([4, 1]))
    >>> xb.tolist(), yb.tolist()
    ([[8.0, 9.0], [2.0, 3.0]], [4, 1])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtune.errors import TaskError

__all__ = ["HostSource", "as_source", "check_source", "is_host_source"]


def _is_array(a: Any) -> bool:
    return isinstance(a, np.ndarray | jax.Array)


def _is_records(a: Any) -> bool:
    """A random-access data source: ``__len__`` and ``__getitem__``, not an array or a string."""
    if _is_array(a) or isinstance(a, str | bytes | tuple | list | dict):
        return False
    return hasattr(a, "__len__") and hasattr(a, "__getitem__")


def _spec_text(shape: tuple[int, ...], dtype: Any) -> str:
    return f"shape {tuple(shape)} and dtype {np.dtype(dtype)}"


# A column is one leaf of a HostSource's tree: an array, a record source, or a HostSource. Each
# has ``len``, ``_spec(where)`` (per-example spec) and ``_read(idx, where)`` (rows, unchecked).


class _ArrayColumn:
    """One array (or memmap) with a leading example axis."""

    def __init__(self, array: Any, where: str):
        if array.ndim == 0:
            raise TaskError(
                f"{where}: every input and target must be an array with a leading example axis, "
                "got a 0-d array"
            )
        self.array = array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def _spec(self, where: str) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(tuple(self.array.shape[1:]), self.array.dtype)

    def _read(self, idx: np.ndarray, where: str) -> np.ndarray:
        return np.asarray(self.array[idx])


def _read_items(records: Any, idx: np.ndarray, where: str = "data") -> Sequence[Any]:
    keys = [int(i) for i in idx]
    try:
        if hasattr(records, "__getitems__"):
            return records.__getitems__(keys)
        if callable(getattr(records, "_getitems", None)):  # grain's batched-read protocol
            return records._getitems(keys)
        return [records[i] for i in keys]
    except Exception as e:
        raise TaskError(
            f"{where} says it has {len(records)} examples but reading indices "
            f"{keys[0]}..{keys[-1]} failed: {type(e).__name__}: {e}"
        ) from None


class _RecordColumn:
    """A random-access source whose items are pytrees of arrays, stacked on read."""

    def __init__(self, records: Any):
        self.records = records
        self._cached: Any = None

    def __len__(self) -> int:
        return len(self.records)

    def _item(self, item: Any, index: int, where: str) -> Any:
        if item is None:
            raise TaskError(
                f"{where}: item {index} is None (a filtered MapDataset is not random-access); "
                "filter the records before building the source"
            )
        return item

    def _spec(self, where: str) -> Any:
        if self._cached is None:
            if len(self.records) == 0:
                raise TaskError(f"{where} is empty: it needs at least one example")
            item = self._item(self.records[0], 0, where)
            self._cached = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), item
            )
        return self._cached

    def _read(self, idx: np.ndarray, where: str) -> Any:
        spec = self._spec(where)
        paths, treedef = jax.tree_util.tree_flatten_with_path(spec)
        items = _read_items(self.records, idx, where)
        if len(items) != len(idx):
            raise TaskError(
                f"{where}: a batched read of {len(idx)} indices returned {len(items)} items"
            )
        out = [np.empty((len(idx), *s.shape), s.dtype) for _, s in paths]
        for row, (index, item) in enumerate(zip(idx, items, strict=True)):
            leaves, tree = jax.tree.flatten(self._item(item, int(index), where))
            if tree != treedef:
                raise TaskError(
                    f"{where}: item {int(index)} has structure {tree}, but item 0 "
                    f"(element_spec) has {treedef}"
                )
            for k, ((path, s), leaf) in enumerate(zip(paths, leaves, strict=True)):
                a = np.asarray(leaf)
                if a.shape != s.shape or a.dtype != s.dtype:
                    raise TaskError(
                        f"{where}: item {int(index)} leaf {jax.tree_util.keystr(path) or '.'} "
                        f"has {_spec_text(a.shape, a.dtype)}, but element_spec (read from item "
                        f"0) has {_spec_text(s.shape, s.dtype)}"
                    )
                out[k][row] = a
        return jax.tree.unflatten(treedef, out)


def _column(leaf: Any, where: str) -> Any:
    if isinstance(leaf, HostSource):
        return leaf
    if _is_array(leaf):
        return _ArrayColumn(leaf, where)
    if _is_records(leaf):
        return _RecordColumn(leaf)
    raise TaskError(
        f"{where}: a {type(leaf).__name__} is neither an array with a leading example axis nor "
        "a random-access source (__len__ and __getitem__)"
    )


def _check_indices(indices: Any, n: int, where: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{where}: indices must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise IndexError(
            f"{where}: index {bad} is out of range for a split of {n} examples "
            f"(allowed [0, {n - 1}])"
        )
    return idx


class HostSource:
    """One split (or its inputs, or its targets) read by index on the host.

    Build it with :func:`as_source`. Nothing is read on construction; :attr:`element_spec`
    reads item 0 of a record source once and caches it.

    Args:
        data: an array, an ``np.memmap``, a random-access source, another ``HostSource``, or a
            pytree (tuple, list, dict) of them, every leaf of one shared length.
        name: how errors name the split (e.g. ``"data.train"``).
    """

    def __init__(self, data: Any, *, name: str = "data"):
        self.name = name
        paths, treedef = jax.tree_util.tree_flatten_with_path(data, is_leaf=_is_records)
        if not paths:
            raise TaskError(f"{name} holds no arrays or sources")
        columns = [_column(leaf, f"{name}{jax.tree_util.keystr(p)}") for p, leaf in paths]
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            raise TaskError(
                f"{name}: inputs and targets disagree on the number of examples ({sorted(lengths)})"
            )
        self._paths = [p for p, _ in paths]
        self._columns = columns
        self._treedef = treedef
        self._index: np.ndarray | None = None
        self._length = lengths.pop()

    def _view(self, index: np.ndarray | None, name: str) -> HostSource:
        view = object.__new__(HostSource)
        view.__dict__.update(self.__dict__)
        view.__dict__.pop("element_spec", None)
        view._index, view._length, view.name = index, self._length, name
        if index is not None:
            view._length = len(index)
        return view

    def __len__(self) -> int:
        return self._length

    def _names(self, where: str) -> list[str]:
        return [f"{where}{jax.tree_util.keystr(p)}" for p in self._paths]

    def __repr__(self) -> str:
        return f"HostSource({self.name!r}, {len(self)} examples)"

    @functools.cached_property
    def element_spec(self) -> Any:
        """Per-example ``jax.ShapeDtypeStruct`` of every leaf (no leading example axis)."""
        return self._spec(self.name)

    def _spec(self, where: str) -> Any:
        specs = [c._spec(w) for c, w in zip(self._columns, self._names(where), strict=True)]
        return jax.tree.unflatten(self._treedef, specs)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole split, from :attr:`element_spec` and the length (nothing read)."""
        per_row = sum(
            math.prod(s.shape) * np.dtype(s.dtype).itemsize
            for s in jax.tree.leaves(self.element_spec)
        )
        return int(per_row) * len(self)

    def gather(self, indices: Any) -> Any:
        """The rows at ``indices`` (1-D integers in ``[0, len)``), stacked on a leading axis.

        Raises:
            IndexError: an index outside ``[0, len(self))``; the message names the split.
            TaskError: an item whose structure, shapes or dtypes differ from
                :attr:`element_spec` (naming the split, the index, the leaf and both shapes).
        """
        idx = _check_indices(indices, len(self), self.name)
        if idx.ndim != 1:
            raise ValueError(f"{self.name}: gather takes 1-D indices, got shape {idx.shape}")
        return self._read(idx, self.name)

    def _read(self, idx: np.ndarray, where: str) -> Any:
        if self._index is not None:
            idx = self._index[idx]
        rows = [c._read(idx, w) for c, w in zip(self._columns, self._names(where), strict=True)]
        return jax.tree.unflatten(self._treedef, rows)

    def take(self, indices: Any, *, name: str | None = None) -> HostSource:
        """A view of the rows at ``indices`` in that order; nothing is read.

        Example:
            >>> view = as_source(np.arange(10)).take(np.array([7, 2]))
            >>> len(view), view.gather(np.array([1, 0])).tolist()
            (2, [2, 7])
        """
        idx = _check_indices(indices, len(self), self.name).reshape(-1).astype(np.int64)
        index = idx if self._index is None else self._index[idx]
        return self._view(index, self.name if name is None else name)

    def part(self, i: int) -> HostSource:
        """Part ``i`` of a split given as a pair of columns: 0 the inputs, 1 the targets.

        A view sharing this source's rows; reading the targets part reads no inputs.

        Raises:
            TaskError: the split is not a pair of columns (e.g. one source whose items hold
                inputs and targets together).

        Example:
            >>> pair = as_source((np.zeros((3, 2)), np.array([2, 0, 1]))).take(np.array([2, 0]))
            >>> pair.part(1).gather(np.arange(2)).tolist()
            [1, 2]
        """
        if len(self._columns) == 1 and isinstance(self._columns[0], HostSource):
            inner = self._columns[0].part(i)
            return HostSource(inner, name=inner.name)._view(self._index, f"{self.name}[{i}]")
        top = jax.tree.unflatten(self._treedef, list(range(len(self._columns))))
        if not isinstance(top, tuple | list) or not 0 <= i < len(top):
            raise TaskError(
                f"{self.name} is not a pair of columns, so its part {i} cannot be read without "
                "reading whole items; give the split as a pair (inputs, targets), e.g. "
                "(source_of_inputs, labels_array)"
            )
        keep = jax.tree.leaves(top[i])
        view = self._view(self._index, f"{self.name}[{i}]")
        view._columns = [self._columns[k] for k in keep]
        view._paths = [self._paths[k][1:] for k in keep]
        view._treedef = jax.tree.structure(top[i])
        return view


def as_source(x: Any, *, name: str | None = None) -> HostSource:
    """``x`` as a :class:`HostSource` (one passes through; ``name`` renames it).

    Example:
        >>> as_source(np.zeros((5, 3)), name="data.valid")
        HostSource('data.valid', 5 examples)
    """
    if isinstance(x, HostSource):
        return x if name is None or name == x.name else x._view(x._index, name)
    return HostSource(x, name="data" if name is None else name)


def is_host_source(split: Any) -> bool:
    """Whether a split (or part of one) is read on the host: a :class:`HostSource`, or a pytree
    with an ``np.memmap`` or a random-access source among its leaves.

    Example:
        >>> is_host_source((np.zeros((4, 2)), np.zeros(4)))
        False
        >>> is_host_source(as_source(np.zeros(4)))
        True
    """
    leaves = jax.tree.leaves(split, is_leaf=_is_records)
    return any(isinstance(a, np.memmap | HostSource) or _is_records(a) for a in leaves)


def check_source(source: Any, name: str | None = None, *, sample: int = 64, seed: int = 0) -> Any:
    """Read a seeded random sample of a source and check it; returns its element spec.

    Every sampled item must match :attr:`HostSource.element_spec` (structure, shapes, dtypes),
    every leaf must be numeric or boolean and floating leaves of the sample finite.

    Args:
        source: anything :func:`as_source` takes.
        name: how errors name the split.
        sample: how many distinct rows to read (all of them when the split is smaller).
        seed: seed of the sample.

    Returns:
        The per-example spec: a pytree of ``jax.ShapeDtypeStruct``.

    Raises:
        TaskError: an empty source, a non-numeric leaf, an item that differs from the spec, or
            a non-finite sampled value; each names the split, and the index and leaf.

    Example:
        >>> check_source((np.ones((100, 3), np.float32), np.arange(100)), "data.train")
        (ShapeDtypeStruct(shape=(3,), dtype=float32), ShapeDtypeStruct(shape=(), dtype=int64))
    """
    src = as_source(source, name=name)
    if len(src) == 0:
        raise TaskError(f"{src.name} is empty: it needs at least one example")
    spec = src.element_spec
    for path, s in jax.tree_util.tree_flatten_with_path(spec)[0]:
        dtype = np.dtype(s.dtype)
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            hint = (
                ": the records look raw (bytes or strings); parse them into arrays, e.g. with "
                "grain's MapDataset.map"
                if dtype.kind in "SUO"
                else ""
            )
            raise TaskError(
                f"{src.name}{jax.tree_util.keystr(path)} must be numeric, got dtype {dtype}{hint}"
            )
    k = min(int(sample), len(src))
    idx = np.sort(np.random.default_rng(seed).choice(len(src), size=k, replace=False))
    rows = src.gather(idx)
    for path, a in jax.tree_util.tree_flatten_with_path(rows)[0]:
        if np.issubdtype(a.dtype, np.floating):
            bad = ~np.isfinite(a.reshape(len(idx), -1)).all(axis=1)
            if bad.any():
                raise TaskError(
                    f"{src.name}{jax.tree_util.keystr(path)}: item {int(idx[np.argmax(bad)])} "
                    "holds NaN or inf; fix or drop those examples before training"
                )
    return spec
