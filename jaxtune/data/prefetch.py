"""Chunks of batches built on the host, one ahead of the device.

:func:`stack_batches` gathers every row of a chunk of steps in one read and lays it out as
``[steps, batch, ...]``: the unit put on the device per chunk. :func:`eval_indices` gives the
padded batches an evaluation reads. :class:`Prefetcher` builds item ``k + 1`` in a background
thread while the caller uses item ``k``.

Example:
    >>> source = np.arange(10) * 10
    >>> with Prefetcher(lambda k: stack_batches(source, np.array([[k, k + 1]])), range(3)) as p:
    ...     [chunk.tolist() for chunk in p]
    [[[0, 10]], [[10, 20]], [[20, 30]]]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import jax
import numpy as np

from jaxtune.data.sources import as_source

__all__ = ["Prefetcher", "eval_indices", "stack_batches"]

K = TypeVar("K")
T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def stack_batches(source: Any, indices: Any) -> Any:
    """The rows of ``source`` at ``indices`` (e.g. ``[steps, batch]``), shaped like it.

    Each distinct index is read once, in increasing order (sequential reads of a memmap), and
    the rows are then expanded to every position that names them.

    Args:
        source: anything :func:`jaxtune.data.as_source` takes.
        indices: integer indices of any shape, in ``[0, len(source))``.

    Returns:
        A pytree like ``source``'s items whose leaves have shape ``indices.shape + item shape``.

    Example:
        >>> x = np.arange(12).reshape(6, 2)
        >>> stack_batches(x, np.array([[5, 0], [0, 2]]))[..., 0].tolist()
        [[10, 0], [0, 4]]
    """
    src = as_source(source)
    idx = np.asarray(indices)
    unique, inverse = np.unique(idx, return_inverse=True)
    rows = src.gather(unique)
    inverse = inverse.reshape(idx.shape)
    return jax.tree.map(lambda a: a[inverse], rows)


def eval_indices(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The padded evaluation batches of a split of ``n`` examples.

    Batch ``b`` holds examples ``b * size .. b * size + size - 1`` with ``size =
    min(batch_size, n)``; positions past the end repeat the last example and are masked out,
    so a masked sum over every batch is the exact sum over the split.

    Returns:
        ``(indices, mask)``: int64 and bool arrays of shape ``[num_batches, size]``.

    Example:
        >>> idx, mask = eval_indices(5, 2)
        >>> idx.tolist(), mask.sum()
        ([[0, 1], [2, 3], [4, 4]], np.int64(5))
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n = {n} and batch_size = {batch_size} must both be at least 1")
    size = min(int(batch_size), int(n))
    num_batches = -(-n // size)
    positions = np.arange(num_batches * size, dtype=np.int64).reshape(num_batches, size)
    return np.minimum(positions, n - 1), positions < n


class Prefetcher(Generic[K, T]):
    """Build ``make(item)`` for each of ``items`` in a daemon thread, ``depth`` items ahead.

    Results come back in the order of ``items``. An exception raised by ``make`` (or by
    iterating ``items``) is raised again in the caller by the :meth:`get` that would have
    returned that item. :meth:`close` (or leaving a ``with`` block) stops the thread and waits
    for it: it finishes the ``make`` call under way, if any, and starts no other. Leaving the
    block on ``KeyboardInterrupt`` does not wait for that call; the thread is a daemon, so it
    never keeps the process alive.

    Args:
        make: builds one item (e.g. gathers a chunk and puts it on the device).
        items: what to build, in order (e.g. chunk numbers).
        depth: how many items may be built or under way beyond the one the caller holds.
    """

    def __init__(self, make: Callable[[K], T], items: Iterable[K], *, depth: int = 1):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth = {depth!r} is invalid: expected an int >= 1")
        self._make = make
        self._items = items
        self._ready: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name="jaxtune-prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for item in self._items:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                self._ready.put(self._make(item))
        except BaseException as error:  # handed to the caller, raised there
            self._ready.put(_Failure(error))
            return
        self._ready.put(_END)

    def get(self) -> T:
        """The next item, waiting for it if it is still being built.

        Raises:
            StopIteration: every item was returned, or the prefetcher was closed.
            BaseException: whatever ``make`` raised for this item.
        """
        if self._done:
            raise StopIteration
        out = self._ready.get()
        if out is _END or isinstance(out, _Failure):
            self.close()
            if isinstance(out, _Failure):
                raise out.error
            raise StopIteration
        self._slots.release()
        return out

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return self.get()

    def close(self, timeout: float | None = None) -> None:
        """Stop building and wait (at most ``timeout`` seconds) for the thread to end."""
        self._done = True
        self._stop.set()
        self._slots.release()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        while not self._ready.empty():  # built but never taken: let them go
            self._ready.get_nowait()

    @property
    def running(self) -> bool:
        """Whether the background thread is still alive."""
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher[K, T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        # On Ctrl-C, do not wait for the ``make`` under way: the daemon thread ends after it.
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self.close(timeout=0.0 if interrupted else None)
