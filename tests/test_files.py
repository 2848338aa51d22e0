"""Atomic writes: the old file survives a failed write, and no temporary file is left behind."""

import numpy as np
import pytest

from jaxtune.files import atomic_path, atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "sub" / "state.json", '{"step": 1}')
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"st')
        raise RuntimeError("interrupted")
    assert path.read_text() == '{"step": 1}'
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_writers_that_take_a_path_keep_their_suffix(tmp_path):
    with atomic_path(tmp_path / "history.npz") as tmp:
        assert tmp.suffix == ".npz"
        np.savez_compressed(tmp, a=np.arange(3))
    with np.load(tmp_path / "history.npz") as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))
    assert atomic_write(tmp_path / "b.bin", b"\x00\xff").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "history.npz"]
