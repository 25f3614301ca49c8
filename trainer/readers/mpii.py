"""MPIIFaceGaze in its published layout.

    <root>/p00/p00.txt                       # one annotation line per image
    <root>/p00/Calibration/screenSize.mat    # width_pixel, height_pixel, width_mm, height_mm
    <root>/p00/day01/0005.jpg ...

`root` may also be a single `pXX` folder. An annotation line has 28 whitespace-separated
fields:

    1      image path relative to pXX/ (dayDD/NNNN.jpg)
    2-3    gaze target on the screen, pixels (x right, y down)          ← used
    4-15   six facial landmarks, image pixels                           (not used)
    16-21  head pose rvec, tvec in camera coordinates                   (not used)
    22-24  face centre fc, camera coordinates, mm                       ← used
    25-27  3D gaze target gt, camera coordinates, mm                    ← used
    28     which eye the evaluation subset uses ("left"/"right")        (not used)

Camera coordinates are OpenCV's (x right, y down, z away from the camera), so the gaze
direction gt − fc is converted with `opencv_to_camera`. Landmarks and head pose come from
the fast path instead of the file: the model must be trained on the inputs it gets at run
time. The screen size always comes from the person's own `Calibration/screenSize.mat`
(read with scipy): each participant used their own laptop, so no one size fits the dataset,
and a caller's screen size (`--screen-px`, meant for session folders without a manifest)
is never applied here. A person whose file is missing or damaged is skipped with the reason.
Person id: `mpii:pXX`.

The normalised release (448×448 face patches in one `pXX.mat` per person) is read by
`trainer.readers.mpii_normalized`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gazeloop.trainer.readers.common import (
    LazyFastPath,
    Samples,
    Skip,
    Skipped,
    Unit,
    fast_path_inputs,
    gather,
    kept,
    label_to_model_gaze,
    none_usable,
    opencv_to_camera,
    read_image,
    sample_fields,
    target_ids,
    unit_files,
)

N_FIELDS = 28
SCREEN_MAT = Path("Calibration") / "screenSize.mat"


def read_screen_size(path: Path) -> tuple[int, int]:
    """(width_pixel, height_pixel) from MPII's screenSize.mat; ValueError with the reason."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ValueError(
            f"{path}: reading .mat needs scipy (fields width_pixel, height_pixel); install scipy"
        ) from None
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises several types for damaged files
        raise ValueError(f"{path}: cannot read: {type(e).__name__}: {e}") from None
    try:
        w = float(np.asarray(mat["width_pixel"]).reshape(-1)[0])
        h = float(np.asarray(mat["height_pixel"]).reshape(-1)[0])
    except (KeyError, IndexError, ValueError, TypeError):
        raise ValueError(f"{path}: no width_pixel/height_pixel") from None
    if not (w > 0 and h > 0 and math.isfinite(w + h)):
        raise ValueError(f"{path}: screen size {w}x{h} is not positive")
    return round(w), round(h)


# (image path, screen target px, face centre mm, gaze target mm)
_Row = tuple[str, np.ndarray, np.ndarray, np.ndarray]


def _parse_line(line: str) -> _Row:
    parts = line.split()
    if len(parts) != N_FIELDS:
        raise ValueError(f"{len(parts)} fields, expected {N_FIELDS}")
    try:
        nums = np.array([float(x) for x in parts[1:27]])
    except ValueError:
        raise ValueError("a numeric field is not a number") from None
    if not np.all(np.isfinite(nums)):
        raise ValueError("a numeric field is not finite")
    screen_px = nums[0:2]
    fc, gt = nums[20:23], nums[23:26]
    return parts[0], screen_px, fc, gt


class MPIIFaceGazeReader:
    kind = "mpii"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        root = self.path
        if not root.is_dir():
            return [], [Skipped(str(root), "", "not a folder")]
        persons = [root] if (root / f"{root.name}.txt").is_file() else []
        if not persons:
            persons = sorted(
                p for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.txt").is_file()
            )
        if not persons:
            return [], [Skipped(str(root), "", "no pXX/pXX.txt annotation files found")]
        units = [
            Unit(
                id=str(p),
                path=p,
                files=tuple(unit_files(p, (f"{p.name}.txt", str(SCREEN_MAT), "day*/*"))),
            )
            for p in persons
        ]
        return units, []

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        folder = unit.path
        sw, sh = read_screen_size(folder / SCREEN_MAT)
        person = f"mpii:{folder.name}"
        skipped: list[Skipped] = []

        def annotation(line: str) -> _Row:
            try:
                rel, spx, fc, gt = _parse_line(line)
            except ValueError as e:
                raise Skip(str(e)) from None
            if not (0 <= spx[0] <= sw and 0 <= spx[1] <= sh):
                why = f"target ({spx[0]:g}, {spx[1]:g}) outside the screen {sw}x{sh}"
                raise Skip(why, item=rel)
            return rel, spx, fc, gt

        text = (folder / f"{folder.name}.txt").read_text(errors="replace")
        lines = ((f"line {n}", ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip())
        rows = [row for _, row in kept(unit.id, lines, annotation, skipped)]
        if not rows:
            return none_usable(unit.id, skipped, "annotation lines")

        def to_sample(item: tuple[int, _Row, int]) -> dict[str, Any]:
            i, (rel, spx, fc, gt), tid = item
            inputs = fast_path_inputs(pre.fp, read_image(folder / rel), i)
            g = gt - fc
            gaze = None
            if np.linalg.norm(g) > 0:
                gaze = label_to_model_gaze(opencv_to_camera(g), inputs)
            return sample_fields(
                inputs,
                person=person,
                target=tid,
                screen=spx / (sw, sh),
                screen_px=(sw, sh),
                gaze=gaze,
            )

        tids = target_ids([tuple(r[1]) for r in rows])
        pre.fp.reset()  # one person, one laptop: its images are tracked as one stream
        items = ((r[0], (i, r, tid)) for i, (r, tid) in enumerate(zip(rows, tids, strict=True)))
        return gather(unit.id, items, to_sample, skipped)
