"""atomic_write: all-or-nothing file writes."""

from __future__ import annotations

import os

import pytest

from napari_msam.atomic import atomic_write


def test_atomic_write_binary_and_text(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    with atomic_write(p) as fh:
        fh.write(b"abc")
    assert p.read_bytes() == b"abc"
    with atomic_write(p, "w") as fh:
        fh.write("héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert [q.name for q in p.parent.iterdir()] == ["f.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(p, "w") as fh:
        fh.write("new, partial")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_rejects_read_modes(tmp_path):
    with pytest.raises(ValueError, match="write mode"), atomic_write(tmp_path / "x", "rb"):
        pass
