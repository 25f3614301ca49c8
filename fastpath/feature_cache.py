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
An entry that parses is still only used when it is what the writer (`collect._run_frames`)
could have written for this session (`entry_problem`): a damaged one must neither crash a
reader nor change a number.

Only the named scalar features are kept (no embedding); callers that need the embedding
bypass the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.calibration.store.session import Session
from gazeloop.fastpath.models import ENV_CACHE, user_cache

log = logging.getLogger(__name__)

# Bump when the entry's layout changes; code changes are caught by `code_digest`.
CACHE_VERSION = 2
# The modules whose code decides a cached feature's value.
_FEATURE_CODE = (
    "blink", "collect", "eye_geometry", "face_onnx", "features", "gaze_model", "headpose",
    "protowire", "ir_onnx", "landmarks", "pipeline", "providers", "sessions", "sources",
    "tflite_onnx", "tflite_reader", "types",
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
    """`$GAZELOOP_CACHE/features`, else `features` in the user cache the models use (on
    macOS features went to ~/.cache while models went to ~/Library/Caches)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser() / "features"
    return user_cache() / "features"


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
        "face_model": _file_sha(face),
        "gaze_model": _file_sha(gaze),
        **cfg.feature_settings(),
        # another execution provider may compute in another precision
        "ep": cfg.ep,
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


def load_entry(path: Path, session: Session) -> dict | None:
    """The cached frames, or None when absent, unreadable or not what the writer would have
    written for `session` (then recomputed)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    # ValueError: bad JSON, or an integer too long to convert; RecursionError: deep nesting.
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        log.debug("feature cache %s unreadable (%s): computing again", path.name, type(e).__name__)
        return None
    problem = entry_problem(data, session)
    if problem is not None:
        log.debug("feature cache %s: %s: computing again", path.name, problem)
        return None
    return data


# Which features may hold what, from `GazeSample.feature_dict`:
# radians from atan2/asin, so never beyond pi;
_ANGLES = frozenset(
    {
        "gaze_yaw",
        "gaze_pitch",
        "gaze_ray_yaw",
        "gaze_ray_pitch",
        "head_yaw",
        "head_pitch",
        "head_roll",
    }
)
# NaN when the mesh is degenerate (`eye_geometry`), and json writes NaN as is;
_MAY_BE_NAN = frozenset({"eye_x_mm", "eye_y_mm", "eye_z_mm"})
# left out when that position is not finite, so the only keys that differ between frames;
_SOMETIMES = frozenset({"gaze_ray_yaw", "gaze_ray_pitch"})
# and what every reader of a usable frame takes (`CachedSample.gaze_yp_raw`).
_NEEDED = ("gaze_yaw", "gaze_pitch")
_ENTRY_KEYS = {"version", "frames", "skipped"}
_USABLE_KEYS = {"name", "t_ns", "features"}
_REJECTED_KEYS = {"name", "t_ns", "why"}


def entry_problem(data, session: Session) -> str | None:
    """What makes `data` something the writer could not have written for `session`, or
    None. The writer is `collect._run_frames` with `save_entry`."""
    if not isinstance(data, dict) or set(data) != _ENTRY_KEYS:
        return "not an entry"
    if type(data["version"]) is not int or data["version"] != CACHE_VERSION:
        return "another version"
    frames, skipped = data["frames"], data["skipped"]
    if not isinstance(frames, list) or not isinstance(skipped, list):
        return "frames or skipped is not a list"
    t_ms = {it.name: it.t_ms for it in session.items}
    for row in skipped:
        if problem := _skip_problem(row):
            return f"skipped: {problem}"
    for row in frames:
        if problem := _frame_problem(row, t_ms):
            return f"frame: {problem}"
    return _cover_problem(frames, skipped, session) or _keys_problem(frames)


def _skip_problem(row) -> str | None:
    if not isinstance(row, dict) or set(row) != {"file", "why"}:
        return "not a {file, why} record"
    if not isinstance(row["file"], str) or not isinstance(row["why"], str):
        return "file or why is not a string"
    return None


def _frame_problem(row, t_ms: dict[str, int]) -> str | None:
    # A frame is usable (features) or not (why), never both: the reader trusts "why" first.
    if not isinstance(row, dict) or set(row) not in (_USABLE_KEYS, _REJECTED_KEYS):
        return "not a {name, t_ns, features | why} record"
    name, t_ns = row["name"], row["t_ns"]
    if not isinstance(name, str) or name not in t_ms:
        return f"{name!r} is not in the session"
    # The timestamp comes from the file name, which is part of the key.
    if type(t_ns) is not int or t_ns != t_ms[name] * 1_000_000:
        return f"{name}: t_ns is not the file's"
    if "why" in row:
        return None if isinstance(row["why"], str) and row["why"] else f"{name}: empty why"
    problem = _features_problem(row["features"])
    return f"{name}: {problem}" if problem else None


def _features_problem(f) -> str | None:
    if not isinstance(f, dict) or not all(k in f for k in _NEEDED):
        return "features without the gaze"
    if len(f.keys() & _SOMETIMES) == 1:
        return "half of the gaze in the eyes' frame"
    for k, v in f.items():
        # json reads the writer's floats as floats: an int, bool or string was not written.
        if type(v) is not float or k.startswith("emb_"):
            return f"feature {k!r} is not a float"
        if math.isnan(v) and k in _MAY_BE_NAN:
            continue
        if not math.isfinite(v) or (k in _ANGLES and abs(v) > math.pi):
            return f"feature {k!r} = {v} is out of range"
    return None


def _cover_problem(frames: list[dict], skipped: list[dict], session: Session) -> str | None:
    """Every item of the session once, in its order: a frame, or skipped (undecodable)."""
    names = [it.name for it in session.items]
    gone = [r["file"] for r in skipped]
    gone_set = set(gone)
    if len(gone_set) != len(gone) or not gone_set <= set(names):
        return "skipped files are not the session's, once each"
    decoded = [n for n in names if n not in gone_set]
    if [r["name"] for r in frames] != decoded:
        return "frames are not the session's items, in order, once each"
    return None


def _keys_problem(frames: list[dict]) -> str | None:
    """Every usable frame names the same features (but for the ones that may be left out):
    one fast path wrote them all."""
    kinds = {frozenset(r["features"]) - _SOMETIMES for r in frames if "features" in r}
    return "frames name different features" if len(kinds) > 1 else None


def save_entry(path: Path, frames: list[dict], skipped: list[dict]) -> None:
    """Write atomically; a cache that cannot be written only costs time next run."""
    body = {"version": CACHE_VERSION, "frames": frames, "skipped": skipped}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(body).encode())
    except OSError:
        pass
