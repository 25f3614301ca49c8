"""Writing sessions as programs record them: the seed format's pairs plus `session.json`.

The manifest goes first, so a recording cut short (a crash, Ctrl-C, a camera that
disappears) is still a valid session of the frames written so far; every file is written
atomically by `calibration.session`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.importers import mp4_creation_ms
from calibration.session import (
    IMAGE_SUFFIXES,
    MANIFEST_NAME,
    SessionItem,
    SessionManifest,
    write_manifest,
    write_record,
)
from fastpath.sources import CameraSource, FrameSource, SessionSource, VideoSource
from tools.common import UserError


class UnixClock:
    """Source time (`Frame.t_ns`) → unix milliseconds, the session format's timestamps.

    A session's frames are stamped with their recorded unix time already; a camera's with
    the monotonic clock, whose offset to the wall clock is taken once (so frame spacing stays
    exactly the capture spacing); a video's with media time from 0, placed at the file's own
    creation time when it has one (the same file then gives the same names every run), else
    at the time recording started."""

    def __init__(self, source: FrameSource):
        if isinstance(source, SessionSource):
            self._base_ns = 0
        elif isinstance(source, CameraSource):
            self._base_ns = time.time_ns() - time.monotonic_ns()
        else:
            created = mp4_creation_ms(source.path) if isinstance(source, VideoSource) else None
            self._base_ns = (created if created is not None else time.time_ns() // 1_000_000) * (
                1_000_000
            )

    def ms(self, t_ns: int) -> int:
        return (self._base_ns + int(t_ns)) // 1_000_000


class SessionWriter:
    """One session folder: `write` a frame with its screen label, `finish` with notes."""

    def __init__(self, folder: str | Path, manifest: SessionManifest):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder}: exists and is not a folder")
        if self.folder.is_dir() and _session_files(self.folder):
            # Mixing two recordings in one folder would make one session of both.
            raise UserError(f"{self.folder}: already holds a session; choose a new folder")
        self.manifest = manifest
        write_manifest(self.folder, manifest)
        self.written = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def write(
        self,
        t_ms: int,
        image: np.ndarray,
        label_px: tuple[float, float],
        extra: dict[str, Any] | None = None,
    ) -> SessionItem:
        # A file name is a record's identity: two frames in one millisecond (a replay at
        # full speed, a camera's burst) must not overwrite each other.
        if self.last_ms is not None and t_ms <= self.last_ms:
            t_ms = self.last_ms + 1
        item = write_record(self.folder, t_ms, image, label_px, extra)
        self.written += 1
        self.first_ms = t_ms if self.first_ms is None else self.first_ms
        self.last_ms = t_ms
        return item

    def discard_if_empty(self) -> bool:
        """Remove what was written when no frame was (a manifest alone is not a session that
        any reader accepts); True when the folder is gone."""
        if self.written:
            return False
        (self.folder / MANIFEST_NAME).unlink(missing_ok=True)
        try:
            self.folder.rmdir()  # only if nothing else is in it
        except OSError:
            return False
        return True

    def finish(self, notes: str | None = None) -> None:
        if notes:
            self.manifest = self.manifest.model_copy(update={"notes": notes})
            write_manifest(self.folder, self.manifest)


def _session_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.iterdir()
        if p.name == MANIFEST_NAME
        or (p.name.startswith("img_") and p.suffix.lower() in (*IMAGE_SUFFIXES, ".json"))
    ]


class RateGate:
    """Keep frames at a target rate by their own time. Frames are due on a fixed grid of
    periods (so the average rate is the target even when each frame is a little late), with
    a quarter period of slack for capture jitter (a 30 fps camera recorded at 15 fps would
    otherwise lose every other due frame to a millisecond of lateness); two kept frames are
    never closer than that much less than a period (an irregular source's late frame must
    not be followed at once by the next one on the grid)."""

    def __init__(self, fps: float | None):
        if fps is not None and not fps > 0:
            raise UserError(f"--fps must be positive, got {fps}")
        self.period_ns = None if fps is None else round(1e9 / fps)
        self._due: int | None = None
        self._last: int | None = None

    def keep(self, t_ns: int) -> bool:
        period = self.period_ns
        if period is None:
            return True
        slack = period // 4
        if self._due is not None and (
            t_ns < self._due - slack or t_ns - self._last < period - slack
        ):
            return False
        due = t_ns if self._due is None else self._due
        # Fell behind (a gap in the source): start the grid again from this frame.
        self._due = due + period if due + period > t_ns else t_ns + period
        self._last = t_ns
        return True
