"""The one atomic writer: old file or new, never a part; nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest

from gazeloop.calibration.store.atomic import atomic_path, atomic_write_bytes, atomic_writer


def test_replaces_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_bytes(p, b"old")
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_a_failure_mid_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.bin"
    atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_writer(p) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.bin"]


def test_a_writer_that_wants_a_path(tmp_path):
    p = tmp_path / "model.onnx"
    with atomic_path(p) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.")
        tmp.write_bytes(b"weights")
        assert not p.exists()
    assert p.read_bytes() == b"weights"


def test_files_get_the_users_usual_mode_not_0600(tmp_path):
    p = tmp_path / "profile.json"
    atomic_write_bytes(p, b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_make_folder_says_which_part_is_a_file(tmp_path):
    from gazeloop.calibration.store.atomic import WriteError, make_folder

    (tmp_path / "f").write_text("x")
    with pytest.raises(WriteError, match="is a file, not a folder"):
        make_folder(tmp_path / "f")
