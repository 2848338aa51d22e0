"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Write everything that a later run reads back through these two: :func:`atomic_write` for text
or bytes in memory, :func:`atomic_path` for writers that take a path (``np.savez``,
``Figure.savefig``, ``csv`` on an opened file).

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a" / "note.txt", "hello\\n").read_text()
    'hello\\n'
    >>> with atomic_path(d / "b.bin") as tmp:
    ...     _ = tmp.write_bytes(b"\\x00\\x01")
    >>> (d / "b.bin").read_bytes(), sorted(p.name for p in d.iterdir())
    (b'\\x00\\x01', ['a', 'b.bin'])
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends.

    The temporary name keeps the suffix (``history.<pid>.tmp.npz``), so writers that read the
    format from it (``np.savez``, ``savefig``) write the same file. If the block raises, the
    temporary file is removed and ``path`` is left as it was. Parent folders are created.

    Args:
      path: the file to write.

    Yields:
      The temporary path (not yet created) to write the whole file to.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.stem}.{os.getpid()}.tmp{p.suffix}")
    try:
        yield tmp
        tmp.replace(p)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (text as UTF-8; bytes as they are).

    Args:
      path: the file to write; parent folders are created.
      data: the whole content.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)
