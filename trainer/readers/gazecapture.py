"""GazeCapture in its published layout: one folder per recording (one person).

    <root>/00002/frames/00000.jpg ...
    <root>/00002/frames.json       ["00000.jpg", ...]       (else frames/*.jpg sorted)
    <root>/00002/dotInfo.json      DotNum, XPts, YPts, XCam, YCam, Time: one entry per frame
    <root>/00002/screen.json       W, H, Orientation: one entry per frame
    <root>/00002/appleFace.json    X, Y, W, H, IsValid (also appleLeftEye/appleRightEye.json)
    <root>/00002/info.json         TotalFrames, NumFaceDetections, NumEyeDetections,
                                   Dataset ("train", "val" or "test"), DeviceName

The release splits by recording (one subject each) through `info.json`'s `Dataset`
(CSAILVision/GazeCapture README). Only the recordings of the asked split are read
(`split`, default "train"), so a training run never sees a test subject; a recording
without a readable `Dataset` is not read either, with the reason, since its split is unknown.

Fields used: `XPts`, `YPts` (the dot, in screen points from the top-left of the screen as
the device was held), `W`, `H` (the screen in points for that frame's orientation) →
normalised target (XPts/W, YPts/H); `DotNum` → target id; `Orientation` (1-4); `IsValid`
of the three apple*.json files: a frame the dataset's own detector marked invalid is skipped,
as the published training split does. `XCam`, `YCam` (cm from the camera) are not used: the
ridge head predicts screen points per person, and within one orientation the normalised
point carries the same information.

Person id: `gazecapture:<recording>:o<orientation>`: rotating the phone moves the camera
relative to the screen, so one per-person screen mapping only holds within one orientation.
`px` errors for these persons are in screen points. The front-camera frames are taken as
un-mirrored; pass `mirrored=True` if a copy was stored as selfie views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gazeloop.trainer.readers.common import (
    LazyFastPath,
    Samples,
    Skip,
    Skipped,
    Unit,
    fast_path_inputs,
    gather,
    read_image,
    sample_fields,
    unit_files,
)

_APPLE = ("appleFace.json", "appleLeftEye.json", "appleRightEye.json")
SPLITS = ("train", "val", "test")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as e:
        raise ValueError(f"{path.name}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path.name}: not valid JSON: {e}") from None


def _column(doc: Any, key: str, n: int | None, what: str) -> list:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise ValueError(f"{what}: no list {key!r}")
    col = doc[key]
    if n is not None and len(col) != n:
        raise ValueError(f"{what}: {key} has {len(col)} entries for {n} frames")
    return col


def _is_recording(folder: Path) -> bool:
    return (folder / "dotInfo.json").is_file()


class GazeCaptureReader:
    kind = "gazecapture"

    def __init__(self, path: str | Path, *, mirrored: bool = False, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"GazeCapture split {split!r}: one of {', '.join(SPLITS)}")
        self.path = Path(path)
        self.mirrored = mirrored
        self.split = split

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        root = self.path
        if not root.is_dir():
            return [], [Skipped(str(root), "", "not a folder")]
        recs = [root] if _is_recording(root) else []
        if not recs:
            recs = sorted(p for p in root.iterdir() if p.is_dir() and _is_recording(p))
        if not recs:
            return [], [Skipped(str(root), "", "no recording folders with dotInfo.json found")]
        recs, skipped = self._in_split(recs)
        params = json.dumps({"mirrored": self.mirrored, "split": self.split})
        units = [
            Unit(
                id=str(r), path=r, files=tuple(unit_files(r, ("*.json", "frames/*"))), params=params
            )
            for r in recs
        ]
        return units, skipped

    def _in_split(self, recs: list[Path]) -> tuple[list[Path], list[Skipped]]:
        """The recordings whose info.json puts them in `self.split`; the others counted
        (one line per split, not one per recording) or, when unreadable, named."""
        keep: list[Path] = []
        skipped: list[Skipped] = []
        others: dict[str, int] = {}
        for r in recs:
            try:
                split = recording_split(r)
            except ValueError as e:
                # The message names info.json already.
                skipped.append(Skipped(str(r), "", f"{e}; split unknown, not read"))
                continue
            if split == self.split:
                keep.append(r)
            else:
                others[split] = others.get(split, 0) + 1
        for split, n in sorted(others.items()):
            why = f"{n} recording(s) of the {split!r} split not read (info.json Dataset)"
            skipped.append(Skipped(str(self.path), "", f"{why}; reading {self.split!r}"))
        return keep, skipped

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        folder = unit.path
        frames = _frame_names(folder)
        labels = _Labels.read(folder, len(frames))

        def to_sample(i: int) -> dict[str, Any]:
            x, y, w, h, o, dot = labels.frame(i)
            image = read_image(folder / "frames" / frames[i])
            if self.mirrored:
                image = cv2.flip(image, 1)
            return sample_fields(
                fast_path_inputs(pre.fp, image, i),
                person=f"gazecapture:{folder.name}:o{o}",
                target=dot,
                screen=(x / w, y / h),
                screen_px=(w, h),
            )

        pre.fp.reset()
        return gather(unit.id, ((f, i) for i, f in enumerate(frames)), to_sample, [])


def recording_split(folder: Path) -> str:
    """The recording's `Dataset` from its info.json; ValueError naming file and field."""
    info = folder / "info.json"
    if not info.is_file():
        raise ValueError("info.json: missing")
    doc = _load_json(info)
    split = doc.get("Dataset") if isinstance(doc, dict) else None
    if split not in SPLITS:
        raise ValueError(f"info.json: Dataset is {split!r}, not one of {', '.join(SPLITS)}")
    return split


def _frame_names(folder: Path) -> list[str]:
    if (folder / "frames.json").is_file():
        frames = _load_json(folder / "frames.json")
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise ValueError("frames.json: not a list of file names")
    else:
        frames = [p.name for p in sorted((folder / "frames").glob("*.jpg"))]
    if not frames:
        raise ValueError("no frames")
    return frames


@dataclass(frozen=True, slots=True)
class _Labels:
    """The per-frame columns of one recording, checked to have one entry per frame."""

    xs: list
    ys: list
    dot_num: list
    ws: list
    hs: list
    orient: list
    valid: np.ndarray

    @classmethod
    def read(cls, folder: Path, n: int) -> _Labels:
        dots = _load_json(folder / "dotInfo.json")
        screen = _load_json(folder / "screen.json")
        cols = [_column(dots, k, n, "dotInfo.json") for k in ("XPts", "YPts", "DotNum")]
        cols += [_column(screen, k, n, "screen.json") for k in ("W", "H", "Orientation")]
        valid = np.ones(n, bool)
        for name in _APPLE:
            if (folder / name).is_file():
                ok = _column(_load_json(folder / name), "IsValid", n, name)
                valid &= np.asarray(ok, float) > 0
        return cls(*cols, valid=valid)

    def frame(self, i: int) -> tuple[float, float, float, float, int, int]:
        """(x, y, w, h, orientation, dot) of frame i, or `Skip` with the reason."""
        if not self.valid[i]:
            raise Skip("the dataset's own face/eye detection marked this frame invalid")
        try:
            x, y, w, h = (float(v) for v in (self.xs[i], self.ys[i], self.ws[i], self.hs[i]))
            o, dot = int(self.orient[i]), int(self.dot_num[i])
        except (TypeError, ValueError):
            raise Skip("dot or screen entry is not a number") from None
        if not (w > 0 and h > 0 and 0 <= x <= w and 0 <= y <= h):
            raise Skip(f"dot ({x:g}, {y:g}) outside the screen {w:g}x{h:g}")
        return x, y, w, h, o, dot
