"""A cache of the fast path's per-frame features for recorded sessions, so re-evaluating a
folder of sittings does not run the face mesh and the gaze network again.

An entry is keyed by what decides the features: the content of every image and label file
(sha256), the landmark backend, the face and gaze model files' content, the fast-path
settings that change a feature (focal length, crop scale, blink threshold, still gap), whether
the frames were flipped back (un-mirrored), and the source of the fast-path modules that
compute them (`code_digest`): a stale entry would look valid, and a version number bumped
by hand is forgotten exactly when it matters. Entries are plain JSON in the user's cache folder
(`$GAZELOOP_CACHE`, else `$XDG_CACHE_HOME/gazeloop`, else `~/.cache/gazeloop`), written
atomically; never pickle. A corrupt entry is a miss, never an error: it is recomputed.

Only the named scalar features are kept (no embedding); callers that need the embedding
bypass the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.calibration.store.session import Session

# Bump when the entry's layout changes; code changes are caught by `code_digest`.
CACHE_VERSION = 2
# The modules whose code decides a cached feature's value.
_FEATURE_CODE = (
    "collect", "eye_geometry", "face_onnx", "features", "gaze_model", "headpose", "protowire",
    "ir_onnx", "landmarks", "pipeline", "providers", "sessions", "tflite_onnx",
    "tflite_reader", "types",
)  # fmt: skip


@functools.cache
def code_digest() -> str:
    """sha256 over the source of the fast-path modules that compute features (once per
    process: the code does not change under a running program)."""
    import importlib

    h = hashlib.sha256()
    for name in _FEATURE_CODE:
        mod = importlib.import_module(f"gazeloop.fastpath.{name}")
        h.update(name.encode() + b"\0")
        _file_sha(Path(mod.__file__), h)
    return h.hexdigest()


def cache_dir() -> Path:
    if os.environ.get("GAZELOOP_CACHE"):
        return Path(os.environ["GAZELOOP_CACHE"]).expanduser() / "features"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gazeloop" / "features"


def _file_sha(path: Path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def session_digest(session: Session) -> str:
    """sha256 over the session's image and label files' names and content, in order."""
    h = hashlib.sha256()
    for it in session.items:
        h.update(it.image.name.encode() + b"\0")
        _file_sha(it.image, h)
        _file_sha(it.json, h)
    return h.hexdigest()


def config_digest(cfg) -> str:
    """What in a `FastPathConfig` changes the features: the backend, the model files'
    content and the per-frame settings (not the filter: features are taken before it)."""
    from gazeloop.fastpath import models

    face = models.resolve(models.FACE_LANDMARKER, cfg.face_model)
    gaze = models.resolve_gaze_onnx(cfg.gaze_model)
    parts = {
        "version": CACHE_VERSION,
        "code": code_digest(),
        "landmarks": cfg.landmarks,
        "face_model": _file_sha(face),
        "gaze_model": _file_sha(gaze),
        "max_faces": cfg.max_faces,
        "crop_scale": cfg.crop_scale,
        "blink_aperture": cfg.blink_aperture,
        "blink_relative": getattr(cfg, "blink_relative", None),
        "focal_px": cfg.focal_px,
        "still_gap_s": cfg.still_gap_s,
        "gaze_frame": getattr(cfg, "gaze_frame", "camera"),
        "mirror_average": getattr(cfg, "mirror_average", False),
        # another execution provider may compute in another precision
        "ep": getattr(cfg, "ep", "cpu"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(slots=True)
class CachedSample:
    """What evaluation reads from a fast-path sample, restored from the cache: the named
    features and the raw gaze angles (`looks_mirrored` reads those)."""

    features: dict[str, float]

    @property
    def gaze_yp_raw(self) -> np.ndarray | None:
        f = self.features
        if "gaze_yaw" not in f:
            return None
        return np.array([f["gaze_yaw"], f["gaze_pitch"]])

    def feature_dict(self) -> dict[str, float]:
        return dict(self.features)


def entry_path(session: Session, cfg_digest: str, unmirror: bool) -> Path:
    key = hashlib.sha256(
        f"{session_digest(session)}|{cfg_digest}|unmirror={bool(unmirror)}".encode()
    ).hexdigest()
    return cache_dir() / f"{key[:40]}.json"


def load_entry(path: Path) -> dict | None:
    """The cached frames, or None when absent or unreadable (then recomputed)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return None
    if not isinstance(data.get("frames"), list) or not isinstance(data.get("skipped"), list):
        return None
    return data


def save_entry(path: Path, frames: list[dict], skipped: list[dict]) -> None:
    """Write atomically; a cache that cannot be written only costs time next run."""
    body = {"version": CACHE_VERSION, "frames": frames, "skipped": skipped}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(body).encode())
    except OSError:
        pass
