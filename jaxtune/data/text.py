"""Byte-level text that ships with Python itself: the standard library's own source files.

Nothing is downloaded. The first ``bytes_per_file`` bytes of each of :data:`STDLIB_FILES` (a
fixed, sorted list of modules present in CPython 3.9 through 3.13, read from
``sysconfig.get_paths()["stdlib"]``) are concatenated, in that order, into one byte stream.
The stream is cut into contiguous blocks of ``block_size`` bytes; of every ``period``
consecutive blocks the last is test, the one before it validation and the rest training
(:func:`split_starts`), so the splits are disjoint stretches of text. Each block holds
non-overlapping windows of ``seq_len + 1`` bytes: the inputs are a window's first ``seq_len``
bytes and the targets its last ``seq_len`` (the next byte at every position).

The stream depends on the Python installation (the standard library's text changes between
releases) and on nothing else: the same installation gives the same bytes on every call.

Example:
    >>> splits = load_stdlib_text(seq_len=32, bytes_per_file=2048, block_size=1024)
    >>> x, y = splits.train
    >>> x.shape[1:], x.dtype, bool((x[:, 1:] == y[:, :-1]).all())
    ((32,), dtype('int32'), True)
"""

from __future__ import annotations

import functools
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxtune.data.splits import Splits

__all__ = ["STDLIB_FILES", "load_stdlib_text", "split_starts", "stdlib_bytes", "windows"]

STDLIB_FILES: tuple[str, ...] = (
    "_pydecimal.py",
    "_pyio.py",
    "argparse.py",
    "ast.py",
    "configparser.py",
    "dataclasses.py",
    "difflib.py",
    "doctest.py",
    "enum.py",
    "inspect.py",
    "ipaddress.py",
    "mailbox.py",
    "optparse.py",
    "pickle.py",
    "pydoc.py",
    "shutil.py",
    "subprocess.py",
    "tarfile.py",
    "threading.py",
    "typing.py",
)
"""Standard-library modules read, in this (sorted) order; each is over 32 KiB in 3.9-3.13."""

SPLITS: tuple[str, ...] = ("train", "valid", "test")


@functools.lru_cache(maxsize=4)
def stdlib_bytes(*, files: Sequence[str] = STDLIB_FILES, bytes_per_file: int = 32768) -> np.ndarray:
    """The first ``bytes_per_file`` bytes of each standard-library file, concatenated.

    Cached per process (the returned array is read-only).

    Args:
      files: paths relative to ``sysconfig.get_paths()["stdlib"]`` (a tuple, for the cache).
      bytes_per_file: bytes read from the start of each file.

    Returns:
      A ``uint8`` array of ``len(files) * bytes_per_file`` bytes.

    Raises:
      ValueError: a file that is missing or shorter than ``bytes_per_file``.
    """
    if not (isinstance(bytes_per_file, int) and bytes_per_file >= 1):
        raise ValueError(f"bytes_per_file = {bytes_per_file!r} is invalid: expected an int >= 1")
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in files:
        path = root / name
        try:
            with path.open("rb") as f:
                chunk = f.read(bytes_per_file)
        except OSError as e:
            raise ValueError(f"cannot read standard-library file {path}: {e}") from None
        if len(chunk) < bytes_per_file:
            raise ValueError(
                f"standard-library file {path} has {len(chunk)} bytes, fewer than "
                f"bytes_per_file = {bytes_per_file}: choose a smaller bytes_per_file"
            )
        parts.append(np.frombuffer(chunk, np.uint8))
    text = np.concatenate(parts)
    text.setflags(write=False)
    return text


def split_starts(
    num_bytes: int, *, seq_len: int, block_size: int, period: int = 20
) -> dict[str, np.ndarray]:
    """Start offsets of the windows of each split of a stream of ``num_bytes`` bytes.

    Block ``b`` (bytes ``[b * block_size, (b + 1) * block_size)``) is test when
    ``b % period == period - 1``, validation when ``b % period == period - 2`` and training
    otherwise; a trailing partial block is dropped. Each block holds
    ``block_size // (seq_len + 1)`` non-overlapping windows of ``seq_len + 1`` bytes.

    Args:
      num_bytes: length of the stream.
      seq_len: input length of a window (a window spans ``seq_len + 1`` bytes).
      block_size: bytes per block, at least ``seq_len + 1``.
      period: blocks per cycle of (train..., valid, test), at least 3.

    Returns:
      ``{"train": starts, "valid": starts, "test": starts}``, int64 offsets in ascending order.

    Example:
      >>> s = split_starts(100, seq_len=4, block_size=10, period=5)
      >>> s["train"].tolist(), s["valid"].tolist(), s["test"].tolist()
      ([0, 5, 10, 15, 20, 25, 50, 55, 60, 65, 70, 75], [30, 35, 80, 85], [40, 45, 90, 95])
    """
    for name, value, low in (("seq_len", seq_len, 1), ("period", period, 3)):
        if not (isinstance(value, int) and value >= low):
            raise ValueError(f"{name} = {value!r} is invalid: expected an int >= {low}")
    if not (isinstance(block_size, int) and block_size >= seq_len + 1):
        raise ValueError(
            f"block_size = {block_size!r} is invalid: expected an int >= seq_len + 1 = "
            f"{seq_len + 1}"
        )
    blocks = np.arange(num_bytes // block_size)
    phase = blocks % period
    kinds = {"train": phase < period - 2, "valid": phase == period - 2, "test": phase == period - 1}
    offsets = np.arange(block_size // (seq_len + 1)) * (seq_len + 1)
    return {k: (blocks[m, None] * block_size + offsets).reshape(-1) for k, m in kinds.items()}


def windows(text: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` int32 ``[N, seq_len]``: ``text[s : s + seq_len]`` and the bytes
    one position later, for each start ``s``."""
    idx = np.asarray(starts)[:, None] + np.arange(seq_len + 1)
    w = np.asarray(text)[idx].astype(np.int32)
    return w[:, :-1], w[:, 1:]


def load_stdlib_text(
    *,
    seq_len: int = 64,
    bytes_per_file: int = 32768,
    block_size: int = 4096,
    period: int = 20,
    files: Sequence[str] = STDLIB_FILES,
) -> Splits:
    """Next-byte prediction on the standard library's source (see the module docstring).

    Args:
      seq_len: tokens (bytes) per example.
      bytes_per_file: bytes read from the start of each file.
      block_size: bytes per contiguous block of one split.
      period: blocks per cycle of (train..., valid, test).
      files: the standard-library files read, in order.

    Returns:
      :class:`jaxtune.data.Splits` of ``(inputs, targets)``, int32 ``[N, seq_len]`` each, with
      byte values in ``[0, 256)``.
    """
    text = stdlib_bytes(files=tuple(files), bytes_per_file=bytes_per_file)
    starts = split_starts(text.size, seq_len=seq_len, block_size=block_size, period=period)
    empty = [k for k in SPLITS if starts[k].size == 0]
    if empty:
        raise ValueError(
            f"the {', '.join(empty)} split(s) would be empty: {text.size} bytes make "
            f"{text.size // block_size} blocks of {block_size}; expected at least {period} "
            "blocks (choose a smaller block_size or period, or more bytes_per_file)"
        )
    return Splits(*(windows(text, starts[k], seq_len) for k in SPLITS))
