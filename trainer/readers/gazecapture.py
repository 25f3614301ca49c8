"""GazeCapture in its published layout: one folder per recording (one person).

    <root>/00002/frames/00000.jpg ...
    <root>/00002/frames.json       ["00000.jpg", ...]       (else frames/*.jpg sorted)
    <root>/00002/dotInfo.json      DotNum, XPts, YPts, XCam, YCam, Time: one entry per frame
    <root>/00002/screen.json       W, H, Orientation: one entry per frame
    <root>/00002/appleFace.json    X, Y, W, H, IsValid (also appleLeftEye/appleRightEye.json)

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
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gazeloop.calibration.store.session import ImageDecodeError, load_image
from gazeloop.trainer.readers.common import (
    LazyFastPath,
    SampleBuilder,
    Samples,
    Skipped,
    Unit,
    preprocess_image,
    unit_files,
)

_APPLE = ("appleFace.json", "appleLeftEye.json", "appleRightEye.json")


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

    def __init__(self, path: str | Path, *, mirrored: bool = False) -> None:
        self.path = Path(path)
        self.mirrored = mirrored

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        root = self.path
        if not root.is_dir():
            return [], [Skipped(str(root), "", "not a folder")]
        recs = [root] if _is_recording(root) else []
        if not recs:
            recs = sorted(p for p in root.iterdir() if p.is_dir() and _is_recording(p))
        if not recs:
            return [], [Skipped(str(root), "", "no recording folders with dotInfo.json found")]
        params = json.dumps({"mirrored": self.mirrored})
        units = [
            Unit(
                id=str(r), path=r, files=tuple(unit_files(r, ("*.json", "frames/*"))), params=params
            )
            for r in recs
        ]
        return units, []

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        folder = unit.path
        if (folder / "frames.json").is_file():
            frames = _load_json(folder / "frames.json")
            if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
                raise ValueError("frames.json: not a list of file names")
        else:
            frames = [p.name for p in sorted((folder / "frames").glob("*.jpg"))]
        n = len(frames)
        if n == 0:
            raise ValueError("no frames")
        dots = _load_json(folder / "dotInfo.json")
        screen = _load_json(folder / "screen.json")
        xs = _column(dots, "XPts", n, "dotInfo.json")
        ys = _column(dots, "YPts", n, "dotInfo.json")
        dot_num = _column(dots, "DotNum", n, "dotInfo.json")
        ws = _column(screen, "W", n, "screen.json")
        hs = _column(screen, "H", n, "screen.json")
        orient = _column(screen, "Orientation", n, "screen.json")
        valid = np.ones(n, bool)
        for name in _APPLE:
            if (folder / name).is_file():
                ok = _column(_load_json(folder / name), "IsValid", n, name)
                valid &= np.asarray(ok, float) > 0

        skipped: list[Skipped] = []
        out = SampleBuilder()
        pre.fp.reset()
        for i, fname in enumerate(frames):
            if not valid[i]:
                why = "the dataset's own face/eye detection marked this frame invalid"
                skipped.append(Skipped(unit.id, fname, why))
                continue
            try:
                x, y, w, h = (float(v) for v in (xs[i], ys[i], ws[i], hs[i]))
                o, dot = int(orient[i]), int(dot_num[i])
            except (TypeError, ValueError):
                skipped.append(Skipped(unit.id, fname, "dot or screen entry is not a number"))
                continue
            if not (w > 0 and h > 0 and 0 <= x <= w and 0 <= y <= h):
                why = f"dot ({x:g}, {y:g}) outside the screen {w:g}x{h:g}"
                skipped.append(Skipped(unit.id, fname, why))
                continue
            try:
                image = load_image(folder / "frames" / fname)
            except ImageDecodeError as e:
                skipped.append(Skipped(unit.id, fname, str(e)))
                continue
            if self.mirrored:
                image = cv2.flip(image, 1)
            inputs, why = preprocess_image(pre.fp, image, i)
            if inputs is None:
                skipped.append(Skipped(unit.id, fname, why or "unusable"))
                continue
            left, right, head, roll = inputs
            out.add(
                left=left,
                right=right,
                head=head,
                roll=roll,
                person=f"gazecapture:{folder.name}:o{o}",
                name=fname,
                target=dot,
                screen=(x / w, y / h),
                screen_px=(w, h),
            )
        return out.build(), skipped
