"""Importers: turn recordings from other projects into sessions in the seed format.

`import_corners4` reads the 4-corner calibration study in `../shared/data/video-corners4`
(calibrate.mp4 + Calibration.csv + stats.txt + camera_intrinsics.txt) and writes one
`img_<unix-ms>.jpg` + `.json` pair per video frame plus a `session.json` manifest. The data
stays raw: every frame is kept, frames during the eye movement to a new target are only
*marked* (`"settling": true`) so an evaluation can choose what to drop.

What the study's code does, which shapes the import (its calibration routine, read from its
public repository): targets are shown at int(w/10), int(h/10) ... int(9w/10), int(9h/10) for
2 s each, and converted to millimetres with a `_pixel2mm` that writes into an integer array,
so `set_x`/`set_y` are the true mm *truncated* to whole millimetres. Our labels convert those
mm back with the screen's px/mm (as the csv states them); they sit up to 1 mm (~4 px) left of
and above the point that was drawn. `Timestamp` is `time.time()` taken after the frame was
read and run through that study's tracker: wall-clock seconds, one row per written frame.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from gazeloop.calibration.problems import first_problem
from gazeloop.calibration.store.session import IMAGE_SUFFIXES, MANIFEST_NAME, SessionManifest
from gazeloop.calibration.store.writer import write_manifest, write_record
from gazeloop.fastpath.sources import SourceError, VideoSource

log = logging.getLogger(__name__)

VIDEO_NAME = "calibrate.mp4"
CSV_NAME = "Calibration.csv"
STATS_NAME = "stats.txt"
INTRINSICS_NAME = "camera_intrinsics.txt"

# Frames marked settling after each change of target. From the shared recording (74 rows at
# ~9.7 Hz, 17/19/19/19 frames for targets 0-3; the study's own gaze column shows the move):
# the gaze stays on the old target for 4-5 frames after the switch (more than a human
# saccade latency, ~0.2 s: the capture buffer hands out frames older than the target), is
# mid-flight at frame 5-6 and within the fixation's noise from frame 6 (targets 1, 3) or 7
# (target 2). 7 flags frames 0-6, which covers the slowest switch seen and leaves 10-12
# settled frames per target. At the start (target 0) the first 2 frames look elsewhere.
DEFAULT_SETTLE_FRAMES = 7

# Used only when the csv has no usable wall clock and the video no creation time (this
# video's mvhd creation time is 0, as OpenCV's muxer writes it): 2023-11-14T22:13:20Z.
FALLBACK_BASE_MS = 1_700_000_000_000
_MP4_EPOCH_TO_UNIX_S = 2_082_844_800  # 1904-01-01 to 1970-01-01
_PLAUSIBLE_UNIX_S = (946_684_800.0, 4_102_444_800.0)  # 2000 .. 2100

_REQUIRED_COLUMNS = ("idx", "set_x", "set_y")
_TIME_COLUMN = "Timestamp"

# Common capture sizes, to name the resolution a camera matrix was more likely made at.
COMMON_SIZES: tuple[tuple[int, int], ...] = (
    (640, 360),
    (640, 480),
    (800, 600),
    (1024, 576),
    (1280, 720),
    (1280, 960),
    (1600, 900),
    (1920, 1080),
    (2560, 1440),
    (3840, 2160),
)
# A principal point further from the image centre than this fraction of the half-size is
# not from that resolution: real lenses sit within a few percent of the centre.
PRINCIPAL_POINT_TOLERANCE = 0.25


class SessionImportError(RuntimeError):
    """An import that cannot be done: missing or malformed input, or a refused target."""


# --- stats.txt ---------------------------------------------------------------------------

_MATRIX_NAME_RE = re.compile(r"^([A-Za-z][\w]*)\s*$")
_WIDTH_RE = re.compile(r"^Width:\s*(\d+)\s*px(?:\s*,\s*([\d.]+)\s*mm)?\s*$", re.IGNORECASE)
_HEIGHT_RE = re.compile(r"^Height:\s*(\d+)\s*px(?:\s*,\s*([\d.]+)\s*mm)?\s*$", re.IGNORECASE)
# Per section ("screen", "webcam"): "w"/"h" -> (pixels, millimetres or None).
_Sizes = dict[str, dict[str, tuple[int, float | None]]]


def _missing(path: Path, what: str) -> SessionImportError:
    """The one wording for an input that is not there, whichever reader found it absent."""
    return SessionImportError(f"{what} not found: {path}")


def _read_text(path: Path, what: str) -> str:
    """A text input read whole; undecodable bytes become U+FFFD, so only the parser below
    decides whether a line is usable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise _missing(path, what) from None


def parse_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the study's `stats.txt`.

    Returns `screen_px` (w, h), `screen_mm` (w, h), `webcam_px` (w, h) or None, and
    `matrices`: name -> 4x4 array (the study's fitted STransG transforms: gaze origin to
    screen, in mm; their translation is a fitted eye position about 580 mm in front of the
    screen, *not* the camera's position)."""
    path = Path(path)
    sizes, matrices = _scan_stats(path, _read_text(path, "stats file").splitlines())
    screen = sizes["screen"]
    if "w" not in screen or "h" not in screen:
        raise SessionImportError(f"{path}: no screen Width/Height under 'Screen Information'")
    (sw, swmm), (sh, shmm) = screen["w"], screen["h"]
    if swmm is None or shmm is None:
        raise SessionImportError(f"{path}: screen size in mm missing (need 'Width: Npx, Mmm')")
    if min(sw, sh) <= 0 or min(swmm, shmm) <= 0:
        raise SessionImportError(f"{path}: screen size must be positive")
    cam = sizes["webcam"]
    webcam = (cam["w"][0], cam["h"][0]) if "w" in cam and "h" in cam else None
    return {
        "screen_px": (sw, sh),
        "screen_mm": (swmm, shmm),
        "webcam_px": webcam,
        "matrices": matrices,
    }


def _scan_stats(path: Path, lines: list[str]) -> tuple[_Sizes, dict[str, np.ndarray]]:
    """The Width/Height lines of each section and the named matrices, in one pass: a
    matrix's name is a line of its own before its rows, and only the section headers say
    whose size a Width line is."""
    section = None
    sizes: _Sizes = {"screen": {}, "webcam": {}}
    matrices: dict[str, np.ndarray] = {}
    pending: str | None = None  # a matrix name waiting for its rows
    rows: list[list[float]] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        low = line.lower()
        if low.startswith("screen information"):
            section, pending = "screen", None
            continue
        if low.startswith("webcam information"):
            section, pending = "webcam", None
            continue
        if line.startswith("["):
            if pending is None:
                raise SessionImportError(f"{path}: matrix row without a name: {line!r}")
            rows.append(_matrix_row(path, line))
            if line.endswith("]]"):
                matrices[pending] = _matrix(path, pending, rows)
                pending, rows = None, []
            continue
        if not _read_size(line, section, sizes):
            match = _MATRIX_NAME_RE.match(line)
            if match and section is None:
                pending, rows = match.group(1), []
    return sizes, matrices


def _matrix_row(path: Path, line: str) -> list[float]:
    """One `[a b c d]` line of a printed numpy matrix (the outer brackets on its first and
    last rows included)."""
    try:
        return [float(v) for v in line.strip("[] ").split()]
    except ValueError:
        raise SessionImportError(f"{path}: bad matrix row {line!r}") from None


def _matrix(path: Path, name: str, rows: list[list[float]]) -> np.ndarray:
    """The rows of a finished matrix; anything but 4x4 is not the transform we read."""
    widths = sorted({len(r) for r in rows})
    if len(widths) > 1:
        # numpy would refuse the ragged rows with its own "inhomogeneous shape" error.
        raise SessionImportError(
            f"{path}: matrix {name} has rows of {' and '.join(map(str, widths))} numbers, not 4x4"
        )
    m = np.array(rows, dtype=np.float64)
    if m.shape != (4, 4):
        raise SessionImportError(f"{path}: matrix {name} is {m.shape}, not 4x4")
    return m


def _read_size(line: str, section: str | None, sizes: _Sizes) -> bool:
    """Store a `Width:`/`Height:` line of the current section; False when the line is not
    one (or comes before any section, where it belongs to no device)."""
    for key, regex in (("w", _WIDTH_RE), ("h", _HEIGHT_RE)):
        match = regex.match(line)
        if match and section is not None:
            mm = float(match.group(2)) if match.group(2) else None
            sizes[section][key] = (int(match.group(1)), mm)
            return True
    return False


# --- camera_intrinsics.txt ---------------------------------------------------------------


@dataclass(frozen=True)
class CameraIntrinsics:
    """An OpenCV chessboard calibration: K, distortion and the per-view board poses."""

    camera_matrix: np.ndarray  # (3, 3)
    dist_coeffs: np.ndarray  # (k,) k1 k2 p1 p2 k3 ...
    rvecs: np.ndarray  # (views, 3)
    tvecs: np.ndarray  # (views, 3), in the board's unit (mm here)

    @property
    def focal(self) -> tuple[float, float]:
        return float(self.camera_matrix[0, 0]), float(self.camera_matrix[1, 1])

    @property
    def principal_point(self) -> tuple[float, float]:
        return float(self.camera_matrix[0, 2]), float(self.camera_matrix[1, 2])

    def principal_offset(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """Principal point minus image centre, as a fraction of the half-size per axis."""
        (cx, cy), (w, h) = self.principal_point, image_size
        return (cx - w / 2) / (w / 2), (cy - h / 2) / (h / 2)

    def fits(self, image_size: tuple[int, int], tol: float = PRINCIPAL_POINT_TOLERANCE) -> bool:
        return max(abs(v) for v in self.principal_offset(image_size)) <= tol

    def likely_size(
        self, candidates: tuple[tuple[int, int], ...] = COMMON_SIZES
    ) -> tuple[int, int] | None:
        """The candidate resolution that puts the principal point nearest the centre, if any
        fits: the resolution the chessboard images were probably taken at."""
        fitting = [s for s in candidates if self.fits(s)]
        if not fitting:
            return None
        return min(fitting, key=lambda s: max(abs(v) for v in self.principal_offset(s)))

    def scaled(self, from_size: tuple[int, int], to_size: tuple[int, int]) -> CameraIntrinsics:
        """K for the same sensor at another resolution of the same field of view (a pure
        rescale: wrong if the camera crops for that mode)."""
        sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
        k = self.camera_matrix.copy()
        k[0, :] *= sx
        k[1, :] *= sy
        return CameraIntrinsics(k, self.dist_coeffs.copy(), self.rvecs.copy(), self.tvecs.copy())


def parse_intrinsics(path: str | os.PathLike[str]) -> CameraIntrinsics:
    """Read a `camera_intrinsics.txt` with sections `camera_matrix:`, `dist_coeffs:`,
    `rvecs:`, `tvecs:`, each followed by whitespace-separated rows of numbers."""
    path = Path(path)
    text = _read_text(path, "camera intrinsics file")
    sections: dict[str, list[list[float]]] = {}
    current: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.endswith(":"):
            current = line[:-1].strip().lower()
            sections[current] = []
            continue
        if current is None:
            raise SessionImportError(f"{path}:{n}: numbers before any section header")
        try:
            sections[current].append([float(v) for v in line.split()])
        except ValueError:
            raise SessionImportError(f"{path}:{n}: not a row of numbers: {line!r}") from None
    for name in ("camera_matrix", "dist_coeffs"):
        if not sections.get(name):
            raise SessionImportError(f"{path}: section '{name}:' missing or empty")
    try:
        k = np.array(sections["camera_matrix"], dtype=np.float64)
        dist = np.concatenate([np.asarray(r, np.float64) for r in sections["dist_coeffs"]])
        rvecs = np.array(sections.get("rvecs") or np.empty((0, 3)), dtype=np.float64)
        tvecs = np.array(sections.get("tvecs") or np.empty((0, 3)), dtype=np.float64)
    except ValueError as e:  # ragged rows
        raise SessionImportError(f"{path}: malformed matrix: {e}") from None
    if k.shape != (3, 3) or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise SessionImportError(f"{path}: camera_matrix must be a finite 3x3 with fx, fy > 0")
    if rvecs.reshape(-1, 3).shape[0] != tvecs.reshape(-1, 3).shape[0]:
        raise SessionImportError(f"{path}: {len(rvecs)} rvecs but {len(tvecs)} tvecs")
    return CameraIntrinsics(k, dist, rvecs.reshape(-1, 3), tvecs.reshape(-1, 3))


def describe_intrinsics(intr: CameraIntrinsics, image_size: tuple[int, int]) -> str:
    """One paragraph for a manifest: does this K belong to `image_size`, and if not, to
    which resolution it probably does."""
    (fx, fy), (cx, cy) = intr.focal, intr.principal_point
    w, h = image_size
    ox, oy = intr.principal_offset(image_size)
    head = (
        f"camera_intrinsics: fx={fx:.1f} fy={fy:.1f} cx={cx:.1f} cy={cy:.1f} "
        f"({len(intr.rvecs)} chessboard views)."
    )
    if intr.fits(image_size):
        return (
            f"{head} The principal point is {ox:+.0%}/{oy:+.0%} of the half-size from the "
            f"centre of {w}x{h}: consistent with that resolution."
        )
    text = (
        f"{head} NOT usable for {w}x{h} as is: the principal point is {ox:+.0%}/{oy:+.0%} of "
        f"the half-size from the image centre ({w / 2:g}, {h / 2:g})"
    )
    likely = intr.likely_size()
    if likely is None:
        return text + "; no common resolution fits it either. Recalibrate before metric use."
    lx, ly = intr.principal_offset(likely)
    scaled = intr.scaled(likely, image_size)
    (sfx, sfy), (scx, scy) = scaled.focal, scaled.principal_point
    hfov = math.degrees(2 * math.atan(likely[0] / 2 / fx))
    return (
        f"{text}. It fits {likely[0]}x{likely[1]} ({lx:+.0%}/{ly:+.0%}, horizontal field "
        f"of view {hfov:.0f} deg), so it was probably calibrated there; rescaled to "
        f"{w}x{h} that would be fx={sfx:.1f} fy={sfy:.1f} cx={scx:.1f} cy={scy:.1f}, "
        "valid only if the camera scales rather than crops. Unverified: recalibrate before "
        "metric use."
    )


# --- Calibration.csv ---------------------------------------------------------------------


@dataclass(frozen=True)
class CsvRow:
    line: int  # 1-based line in the file, for error messages
    target: int
    set_mm: tuple[float, float]
    unix_s: float | None  # the study's wall clock, if the column exists and parses
    values: dict[str, Any]  # every named column, duplicates as lists (kept raw)


def _float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SessionImportError(f"{where}: not a number: {text!r}") from None


def read_calibration_csv(path: str | os.PathLike[str]) -> tuple[list[str], list[CsvRow]]:
    """The header (as written) and one `CsvRow` per non-blank data row, in file order.

    Columns are found by name (case and surrounding spaces ignored), never by position: the
    study's file has an unnamed pandas index first and 16 columns all named `WTransG`."""
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise _missing(path, "calibration csv") from None
    try:
        with f:
            return _read_csv_rows(path, csv.reader(f))
    except UnicodeDecodeError as e:
        raise SessionImportError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_csv_rows(path: Path, reader) -> tuple[list[str], list[CsvRow]]:
    """`read_calibration_csv`'s body, on an open reader."""
    header = next(reader, None)
    if header is None:
        raise SessionImportError(f"{path}: empty file (no header)")
    names = [h.strip() for h in header]
    where = {n.lower(): i for i, n in reversed(list(enumerate(names))) if n}
    missing = [c for c in _REQUIRED_COLUMNS if c.lower() not in where]
    if missing:
        raise SessionImportError(
            f"{path}: missing column(s) {missing}; the header has {[n for n in names if n]}"
        )
    i_idx, i_x, i_y = (where[c.lower()] for c in _REQUIRED_COLUMNS)
    i_t = where.get(_TIME_COLUMN.lower())
    rows: list[CsvRow] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        at = f"{path} line {line}"
        if len(row) < len(names):
            raise SessionImportError(f"{at}: {len(row)} fields, the header has {len(names)}")
        idx = _float(row[i_idx], f"{at} column idx")
        if not idx.is_integer() or idx < 0:
            raise SessionImportError(f"{at}: idx must be a whole number >= 0, got {idx}")
        x, y = _float(row[i_x], f"{at} column set_x"), _float(row[i_y], f"{at} set_y")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise SessionImportError(f"{at}: target ({x}, {y}) mm is not finite")
        unix_s = None
        if i_t is not None:
            with contextlib.suppress(ValueError):
                unix_s = float(row[i_t])
        rows.append(CsvRow(line, int(idx), (x, y), unix_s, _row_values(names, row)))
    return header, rows


def _row_values(names: list[str], row: list[str]) -> dict[str, Any]:
    """Every named column of a row, numbers as floats and the rest as text: kept raw in the
    record, so a repeated name (the study's 16 `WTransG`) becomes a list, not a loss."""
    values: dict[str, Any] = {}
    for name, cell in zip(names, row, strict=False):
        if not name:
            continue  # the unnamed pandas index: the frame number, kept as such
        try:
            value: Any = float(cell)
        except ValueError:
            value = cell
        if name in values:
            prev = values[name]
            values[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            values[name] = value
    return values


# --- timing ------------------------------------------------------------------------------


def mp4_creation_ms(path: str | os.PathLike[str]) -> int | None:
    """The `moov/mvhd` creation time as unix ms, or None if absent or zero."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None

    def boxes(buf: bytes, start: int, end: int):  # (type, payload start, payload end)
        pos = start
        while pos + 8 <= end:
            size, kind = struct.unpack(">I4s", buf[pos : pos + 8])
            head = 8
            if size == 1 and pos + 16 <= end:
                size, head = struct.unpack(">Q", buf[pos + 8 : pos + 16])[0], 16
            elif size == 0:
                size = end - pos
            if size < head or pos + size > end:
                return
            yield kind, pos + head, pos + size
            pos += size

    for kind, a, b in boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for sub, c, d in boxes(data, a, b):
            if sub != b"mvhd" or d - c < 12:
                continue
            if data[c] == 1 and d - c >= 20:
                created = struct.unpack(">Q", data[c + 4 : c + 12])[0]
            else:
                created = struct.unpack(">I", data[c + 4 : c + 8])[0]
            unix_s = created - _MP4_EPOCH_TO_UNIX_S
            return unix_s * 1000 if created and unix_s > 0 else None
    return None


def _longest_fixation(rows: list[CsvRow]) -> int:
    """The most rows in a row on one target."""
    longest = run = 0
    for i, r in enumerate(rows):
        run = run + 1 if i and r.target == rows[i - 1].target else 1
        longest = max(longest, run)
    return longest


def _csv_clock_ms(rows: list[CsvRow]) -> tuple[list[int] | None, str]:
    """The study's per-row wall clock in unix ms if present, plausible and increasing, or
    None with why not (said in the session's notes: the timestamps then come from the video)."""
    if not rows or any(r.unix_s is None for r in rows):
        return None, f"no {_TIME_COLUMN} on every row"
    secs = [float(r.unix_s) for r in rows]  # type: ignore[arg-type]
    lo, hi = _PLAUSIBLE_UNIX_S
    for r, sec in zip(rows, secs, strict=True):
        if not (math.isfinite(sec) and lo < sec < hi):
            return None, f"line {r.line}: {_TIME_COLUMN} {sec:g} is not a plausible unix time"
    ms = [round(s * 1000) for s in secs]
    for r, a, b in zip(rows[1:], ms, ms[1:], strict=False):
        if b <= a:
            return None, f"line {r.line}: {_TIME_COLUMN} does not increase"
    return ms, ""


# --- the import --------------------------------------------------------------------------


@dataclass
class ImportReport:
    out_dir: Path
    n_records: int
    settle_frames: int
    n_settling: int
    frames_per_target: dict[int, int]  # all frames, settling included
    targets_px: dict[int, tuple[float, float]]  # label of each target, screen pixels
    columns: list[str]  # the csv header as written
    timestamps_from: str  # "csv Timestamp" or "base + media time"
    t_first_ms: int
    t_last_ms: int
    intrinsics_note: str
    manifest: SessionManifest
    notes: list[str] = field(default_factory=list)


_SESSION_FILE_RE = re.compile(r"^img_\d+$")

MIRROR_NOTE = (
    "mirrored=False: the study writes raw camera frames (VideoWriter.write of the captured "
    "frame, no flip). Checked on the shared recording: for the screen-right targets (1, 3) "
    "the irises move to image-left and for the screen-left targets (0, 2) to image-right, "
    "as in an un-mirrored view; and the tape labels on the box at the lower right of the "
    "scene read 'plexon' normally."
)
CAMERA_NOTE = (
    "camera_mm=None: the camera position was not recorded. stats.txt's STransG "
    "translation (x, y, z) is the study's fitted gaze origin (z about -580 mm, i.e. in "
    "front of the screen where the eyes are), not the camera."
)


def _session_files(folder: Path) -> list[Path]:
    suffixes = {*IMAGE_SUFFIXES, ".json"}

    def ours(p: Path) -> bool:
        if not p.is_file():
            return False
        if p.name == MANIFEST_NAME:
            return True
        if p.name.startswith(".img_") and p.name.endswith(".tmp"):
            return True  # temp files of an interrupted atomic write
        return p.suffix.lower() in suffixes and bool(_SESSION_FILE_RE.match(p.stem))

    return [p for p in folder.iterdir() if ours(p)]


def _replace_session(new: Path, out: Path) -> None:
    """Move the complete session in `new` into `out` in place of the session files there.

    Each step is a rename within one file system. The old manifest goes first and the new
    one last, so `out` never has a manifest over a mix; until the end the old files sit in
    a hidden folder beside `out`, so a crash part-way loses nothing."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    stale = sorted(_session_files(out), key=lambda p: p.name != MANIFEST_NAME)
    for p in stale:
        os.replace(p, old / p.name)
    fresh = sorted(_session_files(new), key=lambda p: p.name == MANIFEST_NAME)
    for p in fresh:
        os.replace(p, out / p.name)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise _missing(path, what)
    return path


def _rows_frames_error(n_rows: int, video_says: str) -> SessionImportError:
    """The csv and the video disagree on the number of frames, whichever way it showed:
    one row per frame is the only thing that pairs a label with its picture."""
    return SessionImportError(
        f"{CSV_NAME} has {n_rows} data rows but {VIDEO_NAME} {video_says}; they must be one "
        "row per frame"
    )


@dataclass(frozen=True)
class _Study:
    """The recording as read and checked, before anything is written."""

    src: Path
    video: Path
    columns: list[str]  # the csv header as written
    rows: list[CsvRow]
    settle: int
    settling: list[bool]  # per row
    screen_px: tuple[int, int]
    screen_mm: tuple[float, float]
    px_per_mm: tuple[float, float]
    webcam_px: tuple[int, int] | None
    labels: list[tuple[float, float]]  # per row, screen pixels
    targets_px: dict[int, tuple[float, float]]
    per_target: dict[int, int]  # frames per target, settling included
    intrinsics: CameraIntrinsics | None


def _read_study(src: Path, settle_frames: int | None) -> _Study:
    """Read every input and check it, so a bad one stops the import before anything is
    written (the camera intrinsics too, though they only feed a note)."""
    if not src.is_dir():
        raise SessionImportError(f"source folder not found: {src}")
    video = _require(src / VIDEO_NAME, "video")
    stats = parse_stats(_require(src / STATS_NAME, "stats file"))
    columns, rows = read_calibration_csv(_require(src / CSV_NAME, "calibration csv"))
    if not rows:
        raise SessionImportError(f"{src / CSV_NAME}: no data rows")
    settle = _settle_count(settle_frames, rows, src / CSV_NAME)
    screen_px: tuple[int, int] = stats["screen_px"]
    screen_mm: tuple[float, float] = stats["screen_mm"]
    px_per_mm = (screen_px[0] / screen_mm[0], screen_px[1] / screen_mm[1])
    labels, targets_px = _labels_px(rows, px_per_mm, screen_px, screen_mm)
    intrinsics_path = src / INTRINSICS_NAME
    intrinsics = parse_intrinsics(intrinsics_path) if intrinsics_path.is_file() else None
    return _Study(
        src=src,
        video=video,
        columns=columns,
        rows=rows,
        settle=settle,
        settling=_settling_flags(rows, labels, settle),
        screen_px=screen_px,
        screen_mm=screen_mm,
        px_per_mm=px_per_mm,
        webcam_px=stats["webcam_px"],
        labels=labels,
        targets_px=targets_px,
        per_target=dict(sorted(Counter(r.target for r in rows).items())),
        intrinsics=intrinsics,
    )


def _settle_count(settle_frames: int | None, rows: list[CsvRow], csv_path: Path) -> int:
    """The settling window asked for, refused when it would flag every frame: a session
    with no settled frame gives an evaluation nothing to use."""
    settle = DEFAULT_SETTLE_FRAMES if settle_frames is None else int(settle_frames)
    if settle < 0:
        raise ValueError(f"settle_frames must be >= 0, got {settle_frames}")
    longest = _longest_fixation(rows)
    if settle >= longest:
        raise SessionImportError(
            f"settle_frames {settle} would mark every frame settling: the longest look at one "
            f"target in {csv_path} has {longest} frames; give a smaller --settle-frames"
        )
    return settle


def _labels_px(
    rows: list[CsvRow],
    px_per_mm: tuple[float, float],
    screen_px: tuple[int, int],
    screen_mm: tuple[float, float],
) -> tuple[list[tuple[float, float]], dict[int, tuple[float, float]]]:
    """Each row's label in screen pixels, and each target's. A target off the screen, or
    one idx at two points, means the csv and stats.txt do not describe one study."""
    kx, ky = px_per_mm
    labels = [(r.set_mm[0] * kx, r.set_mm[1] * ky) for r in rows]
    for r, (x, y) in zip(rows, labels, strict=True):
        if not (0 <= x <= screen_px[0] and 0 <= y <= screen_px[1]):
            raise SessionImportError(
                f"{CSV_NAME} line {r.line}: target {r.set_mm} mm is off the "
                f"{screen_mm[0]:g}x{screen_mm[1]:g} mm screen"
            )
    targets_px: dict[int, tuple[float, float]] = {}
    for r, xy in zip(rows, labels, strict=True):
        if targets_px.setdefault(r.target, xy) != xy:
            raise SessionImportError(
                f"{CSV_NAME} line {r.line}: target {r.target} at {r.set_mm} mm, but earlier "
                "rows put it elsewhere (one idx must mean one screen point)"
            )
    return labels, targets_px


def _settling_flags(
    rows: list[CsvRow], labels: list[tuple[float, float]], settle: int
) -> list[bool]:
    """Per row: among the first `settle` frames after a change of target (or of its label),
    while the eyes are still on their way (DEFAULT_SETTLE_FRAMES says how long that is)."""
    flags: list[bool] = []
    since_change = 0
    for i, row in enumerate(rows):
        changed = i == 0 or row.target != rows[i - 1].target or labels[i] != labels[i - 1]
        since_change = 0 if changed else since_change + 1
        flags.append(since_change < settle)
    return flags


def _import_dest(out: Path, overwrite: bool) -> Path:
    """Where the records go: `out` itself when it is new or empty. The old session stays
    whole until the new one is: it is written beside it first."""
    if out.exists() and not out.is_dir():
        raise SessionImportError(f"output path exists and is not a folder: {out}")
    replacing = out.is_dir() and any(out.iterdir())
    if replacing and not overwrite:
        raise SessionImportError(
            f"output folder {out} is not empty; use --overwrite to replace its session files"
        )
    out.mkdir(parents=True, exist_ok=True)
    if not replacing:
        return out
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))


def _check_manifest_fields(
    study: _Study, mirrored: bool, camera_mm: tuple[float, float] | None
) -> None:
    """What the manifest will say, judged before the frames are written: a screen beyond
    any screen in stats.txt was refused only at the manifest, after 148 records."""
    try:
        SessionManifest(
            screen_px=study.screen_px,
            screen_mm=study.screen_mm,
            camera_mm=camera_mm,
            mirrored=mirrored,
        )
    except ValidationError as e:
        raise SessionImportError(f"{study.src}: {first_problem(e)}") from None


def _import_frames(
    study: _Study, out: Path, overwrite: bool
) -> tuple[Path, tuple[int, int], list[int], str]:
    """Decode the video into records; returns the folder written, the frame size, each
    record's timestamp and where the timestamps came from (for the notes)."""
    try:
        source = VideoSource(study.video)
    except SourceError as e:
        raise SessionImportError(str(e)) from e
    rows = study.rows
    with source:
        if source.expected_frames is not None and source.expected_frames != len(rows):
            raise _rows_frames_error(len(rows), f"has {source.expected_frames} frames")
        dest = _import_dest(out, overwrite)
        clock, no_clock = _csv_clock_ms(rows)
        base_ms = None if clock else (mp4_creation_ms(study.video) or FALLBACK_BASE_MS)
        frame_size, t_ms_all = _write_frames(source, study, dest, out, clock, base_ms)
    timestamps_from = (
        "csv Timestamp"
        if clock
        else f"base {base_ms} ms + media time (no usable csv clock: {no_clock})"
    )
    return dest, frame_size, t_ms_all, timestamps_from


def _write_frames(
    source: VideoSource,
    study: _Study,
    dest: Path,
    out: Path,
    clock: list[int] | None,
    base_ms: int | None,
) -> tuple[tuple[int, int], list[int]]:
    """One record per decoded frame; returns the frame size and the records' timestamps.

    A half import must not pass for a session: on any failure what this call wrote is
    removed (with the folder beside `out`, if it was writing there) and the error goes on."""
    rows = study.rows
    written: list[Path] = []
    frame_size = (0, 0)
    t_ms_all: list[int] = []
    try:
        for i, frame in enumerate(source):
            if i >= len(rows):
                raise _rows_frames_error(len(rows), "decoded more frames")
            row = rows[i]
            media_ms = frame.t_ns / 1e6
            t_ms = clock[i] if clock else base_ms + round(media_ms)  # type: ignore[operator]
            extra = {
                "target": row.target,
                "frame_index": i,
                "settling": study.settling[i],
                "target_mm": list(row.set_mm),
                "media_time_ms": round(media_ms, 3),
                "csv_row": row.values,
            }
            frame_size = (int(frame.image.shape[1]), int(frame.image.shape[0]))
            item = write_record(dest, t_ms, frame.image, study.labels[i], extra)
            written += [item.image, item.json]
            t_ms_all.append(t_ms)
        if len(t_ms_all) != len(rows):
            raise _rows_frames_error(len(rows), f"decoded {len(t_ms_all)} frames")
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if dest != out:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return frame_size, t_ms_all


def _import_notes(
    study: _Study,
    frame_size: tuple[int, int],
    timestamps_from: str,
    intrinsics_note: str,
    mirrored: bool,
    camera_mm: tuple[float, float] | None,
) -> list[str]:
    """The manifest's account of the import: where each number came from and what was
    decided on the way, so a reader of the session can trust it without this code."""
    rows, per_target, targets_px = study.rows, study.per_target, study.targets_px
    kx, ky = study.px_per_mm
    notes = [
        f"Imported from {study.src} ({VIDEO_NAME} + {CSV_NAME}): {len(rows)} frames, targets "
        + ", ".join(
            f"{t}: {per_target[t]} frames at ({targets_px[t][0]:.1f}, {targets_px[t][1]:.1f}) px"
            for t in per_target
        )
        + ".",
        f"Labels: set_x/set_y mm x {kx:.4f}/{ky:.4f} px/mm from {STATS_NAME}; the study "
        "truncated its mm to whole numbers, so labels may sit up to 1 mm (~4 px) left of/above "
        "the point drawn (its code draws int(w/10), int(h/10) ... i.e. (256, 144) ... here).",
        f"settling=true on the first {study.settle} frames after each change of target "
        f"({sum(study.settling)} of {len(rows)} frames); all frames kept.",
        f"timestamp: {timestamps_from}; media_time_ms is the video's own time (its 20 fps "
        "stamp does not match the ~10 Hz capture).",
        MIRROR_NOTE if not mirrored else "mirrored=True as stated by the caller.",
        CAMERA_NOTE if camera_mm is None else f"camera_mm={camera_mm} as stated by the caller.",
        intrinsics_note,
    ]
    webcam = study.webcam_px
    if webcam is not None and tuple(webcam) != frame_size:
        notes.append(f"stats.txt says webcam {webcam}, the video is {frame_size}.")
    return notes


def import_corners4(
    src_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    settle_frames: int | None = None,
    overwrite: bool = False,
    mirrored: bool = False,
    camera_mm: tuple[float, float] | None = None,
) -> ImportReport:
    """Import the video-corners4 recording into the session folder `out_dir`.

    One record per video frame (every frame, none dropped) with `screen_x/screen_y` in
    pixels of the study's screen, `target` (the csv's idx), `frame_index`, `settling`
    (the first `settle_frames` frames after each change of target, default
    `DEFAULT_SETTLE_FRAMES`), `target_mm`, `media_time_ms` and `csv_row` (the study's row,
    raw). Timestamps are the csv's wall clock in unix ms when it has a plausible, increasing
    one; otherwise the video's creation time (or FALLBACK_BASE_MS) plus media time.

    Refuses a non-empty `out_dir` unless `overwrite=True`, which replaces the session files
    there (img_* pairs, session.json; nothing else) once the new import is complete: it is
    written into a hidden folder beside `out_dir` first, so a failure part-way leaves the
    old session as it was. Every file is written atomically and the manifest last, so a
    folder with a manifest holds a complete import; a failure part-way removes the records
    this call wrote.
    """
    study = _read_study(Path(src_dir), settle_frames)
    _check_manifest_fields(study, mirrored, camera_mm)  # before a frame is written
    out = Path(out_dir)
    dest, frame_size, t_ms_all, timestamps_from = _import_frames(study, out, overwrite)
    if study.intrinsics is not None:
        intrinsics_note = describe_intrinsics(study.intrinsics, frame_size)
    else:
        intrinsics_note = f"{INTRINSICS_NAME} absent: no camera intrinsics."
    notes = _import_notes(study, frame_size, timestamps_from, intrinsics_note, mirrored, camera_mm)
    manifest = SessionManifest(
        screen_px=study.screen_px,
        screen_mm=study.screen_mm,
        camera_mm=camera_mm,
        mirrored=mirrored,
        device=f"webcam {frame_size[0]}x{frame_size[1]}",
        source=f"gazeloop import corners4 ({study.src.name})",
        notes="\n".join(notes),
    )
    write_manifest(dest, manifest)
    if dest != out:
        _replace_session(dest, out)
    log.info("imported %d frames from %s into %s", len(study.rows), study.src, out)
    return ImportReport(
        out_dir=out,
        n_records=len(study.rows),
        settle_frames=study.settle,
        n_settling=sum(study.settling),
        frames_per_target=study.per_target,
        targets_px=study.targets_px,
        columns=list(study.columns),
        timestamps_from=timestamps_from,
        t_first_ms=t_ms_all[0],
        t_last_ms=t_ms_all[-1],
        intrinsics_note=intrinsics_note,
        manifest=manifest,
        notes=notes,
    )


__all__ = [
    "DEFAULT_SETTLE_FRAMES",
    "CameraIntrinsics",
    "CsvRow",
    "ImportReport",
    "SessionImportError",
    "describe_intrinsics",
    "import_corners4",
    "mp4_creation_ms",
    "parse_intrinsics",
    "parse_stats",
    "read_calibration_csv",
]
