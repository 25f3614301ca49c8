"""Writing sessions: the seed format's `img_<ms>.jpg` + `.json` pairs and `session.json`.

The one session writer of the project: the recorder, the calibration grid, the label store's
export, the MQTT collector and the importers all write through it. Every file is written
atomically (`store.atomic`) and the image before its record, so a crash never leaves a
record pointing at nothing; the manifest goes first, so a recording cut short is still a
valid session of the frames written so far.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gazeloop.calibration.store.atomic import atomic_write_bytes, interrupts_held, make_folder
from gazeloop.calibration.store.session import (
    IMAGE_SUFFIXES,
    JPEG_QUALITY,
    MANIFEST_NAME,
    SeedRecord,
    SessionItem,
    SessionManifest,
)


class SessionWriteError(RuntimeError):
    """A session folder that cannot take (more) records: one line naming the folder."""


def write_manifest(folder: str | os.PathLike[str], manifest: SessionManifest) -> Path:
    folder = make_folder(folder)
    path = folder / MANIFEST_NAME
    atomic_write_bytes(path, manifest.model_dump_json(indent=2).encode() + b"\n")
    return path


def write_record(
    folder: str | os.PathLike[str],
    t_ms: int,
    image_bgr: np.ndarray,
    screen_xy: tuple[float, float],
    extra: Mapping[str, Any] | None = None,
) -> SessionItem:
    """Write one `img_<t_ms>.jpg` + `.json` pair. The image goes first: a crash between the
    two leaves an orphan JPEG, which readers reject, never a record pointing at nothing; a
    Ctrl-C waits until both are written (`interrupts_held`).

    `extra` adds fields to the record (e.g. `inference`); it cannot override the label."""
    folder = Path(folder)
    x, y = float(screen_xy[0]), float(screen_xy[1])
    if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
        raise ValueError(f"screen label must be finite and non-negative, got ({x}, {y})")
    if image_bgr.dtype != np.uint8 or image_bgr.ndim not in (2, 3):
        raise ValueError(f"image must be HxW[x3] uint8, got {image_bgr.dtype} {image_bgr.shape}")
    t_ms = int(t_ms)
    if t_ms < 0:
        raise ValueError(f"t_ms must be unix milliseconds, got {t_ms}")
    payload: dict[str, Any] = dict(extra or {})
    clash = {"timestamp", "screen_x", "screen_y"} & payload.keys()
    if clash:
        raise ValueError(f"extra must not set {sorted(clash)}")
    record = SeedRecord.model_validate({"timestamp": t_ms, "screen_x": x, "screen_y": y, **payload})

    ok, jpeg = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"cannot encode image of shape {image_bgr.shape} as JPEG")
    make_folder(folder)
    stem = f"img_{t_ms}"
    image_path, json_path = folder / f"{stem}.jpg", folder / f"{stem}.json"
    # by_alias keeps the seed format's "Gaze" key; exclude_unset keeps records minimal.
    body = json.dumps(record.model_dump(mode="json", by_alias=True, exclude_unset=True), indent=2)
    with interrupts_held():  # a Ctrl-C comes after the pair, never between its files
        atomic_write_bytes(image_path, jpeg.tobytes())
        try:
            atomic_write_bytes(json_path, body.encode() + b"\n")
        except BaseException:
            if not json_path.exists():  # the record may be in place and only its fsync failed
                image_path.unlink(missing_ok=True)  # no orphan JPEG for readers to reject
            raise
    return SessionItem(image=image_path, json=json_path, record=record, t_ms=t_ms)


class SessionWriter:
    """One session folder: `write` a frame with its screen label, `finish` with notes."""

    def __init__(self, folder: str | Path, manifest: SessionManifest):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise SessionWriteError(f"{self.folder}: exists and is not a folder")
        if self.folder.is_dir() and _session_files(self.folder):
            # Mixing two recordings in one folder would make one session of both.
            raise SessionWriteError(f"{self.folder}: already holds a session; choose a new folder")
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
        with interrupts_held():  # the count says every pair on disk (a Ctrl-C waits)
            item = write_record(self.folder, t_ms, image, label_px, extra)
            self.written += 1
            self.first_ms = t_ms if self.first_ms is None else self.first_ms
            self.last_ms = t_ms
        return item

    def discard_if_empty(self) -> bool:
        """Remove what was written when no frame was (a manifest alone is not a session that
        any reader accepts); True when the folder is gone."""
        if self.written or any(self.folder.glob("img_*")):
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
