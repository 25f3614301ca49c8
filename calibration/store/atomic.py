"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

Write to a hidden temp file in the same folder (readers skip dot files), fsync it, rename it
over the target, fsync the folder so the rename itself survives a power cut. Used for every
file gazeloop stores: sessions, profiles, label images, models, checkpoints, caches.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# mkstemp makes 0600 files; what we store (sessions, profiles, models) should get the mode
# any other file of the user's gets. Read once, at import, before threads exist.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(OSError):
    """A file or folder that could not be written, named as the caller asked for it (never
    the temp file beside it), with the cause: `cannot write PATH: CAUSE`."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _write_error(e: OSError, path: Path) -> WriteError:
    if isinstance(e, WriteError):
        return e
    return WriteError(e.errno or errno.EIO, e.strerror or str(e), str(path))


@contextlib.contextmanager
def first_signal_noted(note) -> Iterator[None]:
    """Ctrl-C and SIGTERM, the first of them given to `note(signum)` instead of acting;
    the handlers then step aside, so a second one acts at once (a stalled disk or a hung
    step is no trap). Only the main thread can set a handler (signals reach Python there
    alone): elsewhere nothing is noted. Handlers not set from Python are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {k: signal.getsignal(k) for k in (signal.SIGINT, signal.SIGTERM)}
    old = {k: h for k, h in old.items() if h is not None}

    def first(signum, _frame) -> None:
        note(signum)
        for k, h in old.items():
            signal.signal(k, h)

    for k in old:
        signal.signal(k, first)
    try:
        yield
    finally:
        for k, h in old.items():
            signal.signal(k, h)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (and SIGTERM) held until the block ends, for writes that belong together: an
    interrupt between two files left half of a pair (`record` stopped with Ctrl-C left a
    record whose picture its clean-up had removed, 2 times in 4)."""
    held: list[int] = []
    try:
        with first_signal_noted(held.append):
            yield
    finally:
        if held:  # as it would have come, now the block is whole
            signal.raise_signal(held[0])


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


def write_plot(draw, path: str | os.PathLike[str]) -> None:
    """`draw(file)` (a matplotlib figure's `savefig`) into `path`, atomically: a disk that
    fills while matplotlib writes leaves the previous picture there, not half of one. The
    format comes from the name's suffix (a file object hides it from matplotlib)."""
    import matplotlib

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with matplotlib.rc_context({"savefig.format": fmt}), atomic_writer(path) as f:
        draw(f)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp path beside `path` for a writer that wants a file name (safetensors, the ONNX
    exporter); when the block ends the file is fsynced and renamed over `path`."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(e, path) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        # A full disk surfaces in the caller's write(), a read-only one here: either way the
        # message names the file the caller meant, whose old content is still there. What
        # the caller's block failed to read (a download, another file) stays its own error.
        if _is_storage_error(e, tmp):
            raise _write_error(e, path) from e
        raise
    fsync_dir(path.parent)


_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EFBIG,
    errno.EIO,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.ENOENT,
    errno.EISDIR,
}


def _is_storage_error(e: BaseException, tmp: Path) -> bool:
    return (
        isinstance(e, OSError)
        and e.errno in _STORAGE_ERRNOS
        and e.filename in (None, str(tmp), tmp)
    )


def file_in_the_way(path: str | os.PathLike[str]) -> Path | None:
    """The first of `path` and its parents that is a file, where a folder must be."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.is_file()), None)


def make_folder(folder: str | os.PathLike[str]) -> Path:
    """`mkdir -p`, failing with a `WriteError` that names the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        # "File exists" alone reads as a success: say which part is a file.
        part = file_in_the_way(folder) or folder
        raise WriteError(e.errno, f"{part} is a file, not a folder", str(folder)) from e
    except OSError as e:
        raise _write_error(e, folder) from e
    return folder


# What a check before work asks to be free when the caller has no better estimate: enough
# for a profile, a report or a few frames, so a full disk is caught before the work.
MIN_FREE_BYTES = 256 * 1024


def check_writable(
    path: str | os.PathLike[str], *, folder: bool, need_bytes: int = MIN_FREE_BYTES
) -> None:
    """Before the work starts: can `path` (a file, or a `folder` to hold files; either may
    not exist yet) be written, with `need_bytes` free where it goes? Raises a `WriteError`
    naming `path` and what stands in the way. Leaves nothing behind."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise WriteError(
            errno.EEXIST, "exists and is " + ("a file" if folder else "a folder"), str(path)
        )
    base = path if folder else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent  # the first folder that exists is where the writes will land
    if not base.is_dir():
        raise WriteError(errno.ENOTDIR, f"{base} is a file, not a folder", str(path))
    try:
        # A probe file, not os.access: root may write everywhere except on a read-only
        # mount, and a full disk takes a new name but not its first page.
        with tempfile.TemporaryFile(dir=base, prefix=".gazeloop-probe-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        st = os.statvfs(base)
    except OSError as e:
        raise _write_error(e, path) from e
    free = st.f_bavail * st.f_frsize
    if free < need_bytes:
        raise WriteError(
            errno.ENOSPC,
            f"{_size(free)} free on its disk, about {_size(need_bytes)} needed",
            str(path),
        )


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("kB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


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
