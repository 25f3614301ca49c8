"""Recorded sessions on disk: `img_<unix-ms>.jpg` + `img_<unix-ms>.json` pairs in the seed
format, plus an optional `session.json` manifest (see DESIGN.md, "Data on disk").

Reading is forgiving per file and strict per session: every bad pair is listed in
`Session.rejected` with the reason and reading goes on; a folder with nothing usable is a
`SessionError`. Writing lives in `store.writer`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gazeloop.calibration.geometry import MAX_SCREEN_PX
from gazeloop.calibration.problems import first_problem

log = logging.getLogger(__name__)

MANIFEST_NAME = "session.json"
MANIFEST_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_QUALITY = 95

# The name's digits are the record's identity (the JSON timestamp may disagree; see below).
_NAME_RE = re.compile(r"^img_(\d+)$")
K = TypeVar("K")


def frame_times(folder: Path) -> set[int]:
    """The capture times (unix ms) a session folder's records are named by; none when the
    folder is gone."""
    names = (_NAME_RE.match(f.stem) for f in folder.glob("img_*.json")) if folder.is_dir() else ()
    return {int(m.group(1)) for m in names if m}


def copied_frames(a: set[int], b: set[int]) -> int:
    """The frames two sessions share when one is a copy of the other (the capture times in
    common, when they are at least half of the smaller one's), else 0: two cameras that
    record at once share a millisecond now and then by chance (a 30 fps stream hits a
    given one once in 33 frames), a copy shares them all."""
    both = len(a & b)
    return both if both and 2 * both >= min(len(a), len(b)) else 0


def copy_among(times: set[int], others: Iterable[tuple[K, set[int]]]) -> tuple[K, int] | None:
    """The first of `others` (key, its frame times) that a session of `times` is a copy of,
    or is copied from (`copied_frames`), with the frames they share; None when none is."""
    for key, theirs in others:
        both = copied_frames(times, theirs)
        if both:
            return key, both
    return None


_JPEG_EOI = b"\xff\xd9"
_JPEG_SOS = b"\xff\xda"


class SessionError(RuntimeError):
    """A session folder that cannot be used at all. `rejected` lists the per-file reasons
    when the folder had files but none of them was usable."""

    def __init__(self, message: str, rejected: list[Rejection] | None = None) -> None:
        super().__init__(message)
        self.rejected: list[Rejection] = list(rejected or [])


class ImageDecodeError(ValueError):
    """An image file that exists but cannot be decoded (truncated, corrupt, not an image)."""


# --- the seed record -----------------------------------------------------------------------


class Point3(BaseModel):
    model_config = ConfigDict(extra="allow")

    x: float | None = None
    y: float | None = None
    z: float | None = None


class GazeBlock(BaseModel):
    """What an earlier tracker said about a frame. Not ground truth: kept for comparison."""

    model_config = ConfigDict(extra="allow")

    left_eye: Point3 | None = None
    right_eye: Point3 | None = None
    yaw: float | None = None  # degrees, as that tracker stored them
    pitch: float | None = None
    roll: float | None = None
    vector: Point3 | None = None
    landmarks: Any = None


class Inference(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    gaze: GazeBlock | None = Field(default=None, alias="Gaze")


class SeedRecord(BaseModel):
    """One `img_<unix-ms>.json`. Only `timestamp` and the screen label are ground truth.

    `inference` and `moondream_result` fall back to the raw JSON value when they do not fit
    the typed shape: they are another tool's output and must never cost us a labelled frame.
    Unknown top-level fields are kept (extra="allow") so nothing a recorder wrote is lost.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    timestamp: int  # unix milliseconds (wall clock at capture)
    screen_x: float = Field(allow_inf_nan=False)  # screen pixels, x right
    screen_y: float = Field(allow_inf_nan=False)  # screen pixels, y down
    inference: Inference | Any = Field(default=None, union_mode="left_to_right")
    moondream_result: Point3 | Any = Field(default=None, union_mode="left_to_right")

    @property
    def label_px(self) -> tuple[float, float]:
        return (self.screen_x, self.screen_y)


# --- the manifest --------------------------------------------------------------------------


class SessionManifest(BaseModel):
    """`session.json`: what the pairs alone cannot say. Unknown fields are an error so a typo
    such as "mirror" cannot silently leave `mirrored` at its default."""

    model_config = ConfigDict(extra="forbid")

    version: int = MANIFEST_VERSION
    screen_px: tuple[int, int]  # (width, height) of the screen the labels were taken on
    screen_mm: tuple[float, float] | None = None  # (width, height) of its visible area
    # Camera position relative to the screen's top-left corner, in the screen plane,
    # x right, y down (a webcam above the screen has y < 0).
    camera_mm: tuple[float, float] | None = None
    mirrored: bool = False  # the stored images are horizontally flipped selfie views
    user: str | None = None
    device: str | None = None
    notes: str | None = None
    source: str | None = None  # what wrote the session (recorder name/version, importer)

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != MANIFEST_VERSION:
            raise ValueError(
                f"unsupported session manifest version {v} (this gazeloop reads "
                f"version {MANIFEST_VERSION})"
            )
        return v

    @field_validator("screen_px")
    @classmethod
    def _positive_px(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError(f"screen_px must be positive, got {v}")
        if v[0] > MAX_SCREEN_PX or v[1] > MAX_SCREEN_PX:
            raise ValueError(f"screen_px {v} is beyond any screen ({MAX_SCREEN_PX} px)")
        return v

    @field_validator("screen_mm")
    @classmethod
    def _positive_mm(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (
            v[0] > 0 and v[1] > 0 and math.isfinite(v[0]) and math.isfinite(v[1])
        ):
            raise ValueError(f"screen_mm must be positive and finite, got {v}")
        return v

    @field_validator("camera_mm")
    @classmethod
    def _finite_camera(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        # Checked here, in the file's own words: later it surfaced as a traceback from the
        # screen geometry, and a recording from it wrote [null, null].
        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1])):
            raise ValueError(f"camera_mm must be finite, got {v}")
        return v


# --- the in-memory view --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    file: str  # file name inside the session folder
    why: str


@dataclass(frozen=True, slots=True)
class SessionItem:
    image: Path
    json: Path
    record: SeedRecord
    t_ms: int  # from the file name: the record's identity

    @property
    def label_px(self) -> tuple[float, float]:
        return self.record.label_px

    @property
    def name(self) -> str:
        return self.image.name


@dataclass(slots=True)
class Session:
    folder: Path
    manifest: SessionManifest | None
    items: list[SessionItem] = field(default_factory=list)  # sorted by t_ms
    rejected: list[Rejection] = field(default_factory=list)
    mirrored: bool = False  # resolved: manifest, else the caller's statement, else False
    # Whether anyone said so (a manifest or the caller): if not, the frames can tell
    # (`fastpath.collect` checks which way the gaze turns with the targets).
    mirrored_stated: bool = False
    screen_px: tuple[int, int] | None = None  # resolved: manifest, else the caller's

    def __len__(self) -> int:
        return len(self.items)


# --- reading -------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 BGR, or raise ImageDecodeError with the reason.

    A JPEG without its end-of-image marker after the last scan is treated as truncated even
    if the decoder would hand back a partly grey picture (OpenCV versions differ here)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read image: {e.strerror or e}") from e
    if not data:
        raise ImageDecodeError("empty image file")
    if data[:2] == b"\xff\xd8" and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        raise ImageDecodeError("truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageDecodeError("cannot decode image (corrupt or not an image)")
    return image


def _read_manifest(folder: Path) -> SessionManifest | None:
    path = folder / MANIFEST_NAME
    if not path.exists():
        return None
    # A bad manifest stops the read: guessing mirroring or screen size would corrupt every
    # label silently, which is worse than a clear error.
    try:
        return SessionManifest.model_validate_json(path.read_bytes())
    except OSError as e:
        raise SessionError(f"cannot read session manifest {path}: {e.strerror or e}") from e
    except ValidationError as e:
        raise SessionError(f"bad session manifest {path}: {first_problem(e)}") from e


# Rejected files of one read said one by one; more are summed up in one line (a calibration
# session whose JSON files were lost printed one warning per picture, 46, on every run).
_REJECTIONS_SAID = 3


def _say_rejected(folder: Path, rejected: list[Rejection]) -> None:
    for i, r in enumerate(rejected):
        alone = i < _REJECTIONS_SAID or len(rejected) == _REJECTIONS_SAID + 1
        log.log(
            logging.WARNING if alone else logging.INFO, "%s: rejected %s: %s", folder, r.file, r.why
        )
    more = len(rejected) - _REJECTIONS_SAID
    if more > 1:
        log.warning("%s: %d more files rejected (-v lists each)", folder, more)


def _label_problem(record: SeedRecord, screen_px: tuple[int, int] | None) -> str | None:
    x, y = record.screen_x, record.screen_y
    if x < 0 or y < 0:
        return f"negative label ({x:g}, {y:g})"
    if screen_px is not None and (x > screen_px[0] or y > screen_px[1]):
        return f"label ({x:g}, {y:g}) outside the screen {screen_px[0]}x{screen_px[1]}"
    return None


# A target farther outside the box of the session's other targets than this many times that
# box's size (at least MIN_SPREAD_PX) is not on the same screen as them: a typo, a unit
# mix-up, a corrupt record.
FAR_FACTOR = 4.0
MIN_SPREAD_PX = 100.0


def _implausible_labels(labels: list[tuple[float, float]]) -> dict[tuple[float, float], str]:
    """Labels that cannot be on the screen the others are on, with the reason; only used when
    the screen size is unknown (a known one already bounds every label)."""
    targets = sorted(set(labels))
    bad: dict[tuple[float, float], str] = {}
    for x, y in targets:
        if x > MAX_SCREEN_PX or y > MAX_SCREEN_PX:
            bad[(x, y)] = f"label ({x:g}, {y:g}) is beyond any screen ({MAX_SCREEN_PX} px)"
    for t in targets:
        others = np.array([o for o in targets if o != t and o not in bad])
        if t in bad or len(others) < 3:
            continue  # too few others to say where the screen is
        lo, hi = others.min(0), others.max(0)
        spread = max(float((hi - lo).max()), MIN_SPREAD_PX)
        outside = float(np.hypot(*np.maximum(np.maximum(lo - t, np.asarray(t) - hi), 0.0)))
        if outside > FAR_FACTOR * spread:
            bad[t] = (
                f"label ({t[0]:g}, {t[1]:g}) is {outside:.0f} px outside the other "
                f"{len(others)} targets (which span {hi[0] - lo[0]:.0f}x{hi[1] - lo[1]:.0f} "
                "px): not on their screen"
            )
    return bad


def read_session(
    folder: str | os.PathLike[str],
    *,
    screen_px: tuple[int, int] | None = None,
    mirrored: bool | None = None,
    check_images: bool = False,
) -> Session:
    """Read a session folder; bad pairs go to `rejected`, the rest to `items` by time.

    `screen_px` and `mirrored` state what a folder without a manifest cannot; the manifest
    wins when both are present (a disagreement is logged). Images are only decoded with
    `check_images=True`; otherwise the frame source finds unreadable ones when it gets there.
    """
    folder = Path(folder)
    if not folder.exists():
        raise SessionError(f"session folder does not exist: {folder}")
    if not folder.is_dir():
        raise SessionError(f"session path is not a folder: {folder}")

    manifest = _read_manifest(folder)
    screen, is_mirrored = _resolve_statements(folder, manifest, screen_px, mirrored)
    rejected: list[Rejection] = []
    records, images = _scan_folder(folder, rejected)
    candidates: list[_Candidate] = []
    for stem in sorted(set(records) | set(images)):
        pair = _read_pair(
            stem, records.get(stem), images.get(stem, []), screen, check_images, rejected
        )
        if pair is not None:
            candidates.append(pair)
    if screen is None:
        candidates = _drop_implausible(candidates, rejected)
    items = _without_duplicates(candidates, rejected)

    _say_rejected(folder, rejected)
    if not items:
        detail = ""
        if rejected:
            first = rejected[0]
            detail = f"; {len(rejected)} file(s) rejected, first {first.file}: {first.why}"
        raise SessionError(
            f"no usable img_<unix-ms>.jpg + .json pairs in session folder {folder}{detail}",
            rejected,
        )
    return Session(
        folder=folder,
        manifest=manifest,
        items=items,
        rejected=rejected,
        mirrored=is_mirrored,
        mirrored_stated=manifest is not None or mirrored is not None,
        screen_px=screen,
    )


def _resolve_statements(
    folder: Path,
    manifest: SessionManifest | None,
    screen_px: tuple[int, int] | None,
    mirrored: bool | None,
) -> tuple[tuple[int, int] | None, bool]:
    """The screen size and mirroring to read the session with: the manifest's when there is
    one (what the recorder knew beats what a caller remembers), else the caller's."""
    if manifest is None:
        screen = (int(screen_px[0]), int(screen_px[1])) if screen_px is not None else None
        return screen, bool(mirrored) if mirrored is not None else False
    if screen_px is not None and tuple(screen_px) != manifest.screen_px:
        log.warning(
            "%s: screen_px %s given, manifest says %s; using the manifest",
            folder,
            screen_px,
            manifest.screen_px,
        )
    if mirrored is not None and mirrored != manifest.mirrored:
        log.warning(
            "%s: mirrored=%s given, manifest says %s; using the manifest",
            folder,
            mirrored,
            manifest.mirrored,
        )
    return manifest.screen_px, manifest.mirrored


def _scan_folder(
    folder: Path, rejected: list[Rejection]
) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """By stem: the record, and its image(s). Suffixes match case-insensitively; a session
    file whose name is not img_<digits> is rejected here, anything else is not ours."""
    records: dict[str, Path] = {}
    images: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") or name == MANIFEST_NAME or not path.is_file():
            continue  # hidden files include our own temp files from interrupted writes
        suffix = path.suffix.lower()
        if suffix != ".json" and suffix not in IMAGE_SUFFIXES:
            continue
        if not _NAME_RE.match(path.stem):
            rejected.append(Rejection(name, "name is not img_<unix-ms> with digits"))
            continue
        if suffix == ".json":
            records[path.stem] = path
        else:
            images.setdefault(path.stem, []).append(path)
    return records, images


# A parsed pair before the duplicate check: (t from the name, t from the JSON, the item).
_Candidate = tuple[int, int, SessionItem]


def _read_pair(
    stem: str,
    json_path: Path | None,
    image_paths: list[Path],
    screen: tuple[int, int] | None,
    check_images: bool,
    rejected: list[Rejection],
) -> _Candidate | None:
    """One stem's record and image as a candidate item, or None with the reason in
    `rejected`: a half pair, a record that does not parse, a label off the screen, or
    (with `check_images`) an image that does not decode."""
    if json_path is None:
        for p in image_paths:
            rejected.append(Rejection(p.name, f"no record {stem}.json for this image"))
        return None
    if not image_paths:
        rejected.append(Rejection(json_path.name, f"no image {stem}.jpg for this record"))
        return None
    # Prefer .jpg, then .jpeg, then .png; any other image of the same stem is surplus.
    image_paths.sort(key=lambda p: IMAGE_SUFFIXES.index(p.suffix.lower()))
    for extra in image_paths[1:]:
        rejected.append(Rejection(extra.name, f"second image for {json_path.name}"))
    image_path = image_paths[0]

    try:
        record = SeedRecord.model_validate_json(json_path.read_bytes())
    except OSError as e:
        rejected.append(Rejection(json_path.name, f"cannot read record: {e}"))
        return None
    except ValidationError as e:
        rejected.append(Rejection(json_path.name, f"malformed record: {first_problem(e)}"))
        return None
    problem = _label_problem(record, screen)
    if problem is not None:
        rejected.append(Rejection(json_path.name, problem))
        return None
    if check_images:
        try:
            load_image(image_path)
        except ImageDecodeError as e:
            rejected.append(Rejection(image_path.name, str(e)))
            return None
    t_name = int(_NAME_RE.match(stem).group(1))  # type: ignore[union-attr]
    item = SessionItem(image=image_path, json=json_path, record=record, t_ms=t_name)
    return (t_name, record.timestamp, item)


def _drop_implausible(candidates: list[_Candidate], rejected: list[Rejection]) -> list[_Candidate]:
    """Without a screen size nothing bounds a label but the session's other labels: the
    candidates whose label cannot be on their screen go to `rejected`."""
    bad = _implausible_labels([c[2].label_px for c in candidates])
    kept = []
    for c in candidates:
        why = bad.get(c[2].label_px)
        if why is None:
            kept.append(c)
        else:
            rejected.append(Rejection(c[2].json.name, why))
    return kept


def _without_duplicates(
    candidates: list[_Candidate], rejected: list[Rejection]
) -> list[SessionItem]:
    """One item per time, sorted by time; the others go to `rejected`.

    A time is claimed by the name and by the JSON timestamp. Records whose name agrees with
    their JSON go first, so a copied record (renamed, old JSON inside) loses to the original
    whatever the names sort as; then a canonical name (no leading zeros) wins."""
    candidates = sorted(
        candidates,
        key=lambda c: (c[0] != c[1], c[0], c[2].json.stem != f"img_{c[0]}", c[2].json.name),
    )
    claimed: dict[int, str] = {}
    items: list[SessionItem] = []
    for t_name, t_json, item in candidates:
        clash = next((t for t in (t_name, t_json) if t in claimed), None)
        if clash is not None:
            rejected.append(
                Rejection(item.json.name, f"duplicate timestamp {clash} (kept {claimed[clash]})")
            )
            continue
        if t_json != t_name:
            # Lenient: the name is the identity; a recorder may stamp the JSON a bit later.
            log.debug("%s: JSON timestamp %d differs from name", item.json, t_json)
        claimed[t_name] = claimed[t_json] = item.json.name
        items.append(item)
    items.sort(key=lambda it: it.t_ms)
    return items
