"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

Write to a hidden temp file in the same folder (readers skip dot files), fsync it, rename it
over the target, fsync the folder so the rename itself survives a power cut. Used for every
file gazeloop stores: sessions, profiles, label images, models, checkpoints, caches.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# mkstemp makes 0600 files; what we store (sessions, profiles, models) should get the mode
# any other file of the user's gets. Read once, at import, before threads exist.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data`."""
    with atomic_writer(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to stream into; it replaces `path` when the block ends without an
    error, and is removed if anything fails before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp path beside `path` for a writer that wants a file name (safetensors, the ONNX
    exporter); when the block ends the file is fsynced and renamed over `path`."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in `folder` durable (POSIX); not possible (nor needed) everywhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
