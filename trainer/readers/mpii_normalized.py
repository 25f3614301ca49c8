"""MPIIFaceGaze's normalised release, and why MPIIGaze's normalised data cannot be read.

MPIIFaceGaze normalised (`MPIIFaceGaze_normalized.zip`), one MATLAB v7.3 file per person:

    <root>/p00.mat ... p14.mat
        Data.data     448×448 colour face patches, 3000 per person
        Data.label    one row per patch: gaze (pitch, yaw) radians, head pose (2), then
                      the facial landmarks; only the gaze columns are used

A v7.3 .mat file is HDF5, so it is read with h5py (as hysts/pytorch_mpiigaze's
`tools/preprocess_mpiifacegaze.py` does), where MATLAB's column-major arrays appear with
their axes reversed: `Data/data` is (N, 3, 448, 448) and `Data/label` is (N, 16). The owners
note that before saving they swapped the channels to BGR, flipped each image left-right
and rotated it by 90°; flip-then-rotate is a transpose, which the reversed axes undo, so
`Data/data[i].transpose(1, 2, 0)` is the upright BGR patch the fast path expects (hysts
transposes the same way). The labels are taken in ETH-XGaze's convention, as hysts's
models use them (`xgaze.xgaze_to_camera`); a third-party note (X-Shi/Data-Normalization-
Gaze-Estimation) says the released labels have pitch and yaw of opposite sign to
ETH-XGaze's, which could not be checked here without the release itself. The head pose
and landmarks are not used: the model gets the fast path's own estimates, as at run time.
No screen targets: these persons train the gaze loss only. Person id: `mpii:pXX`, the same
participant as in the original MPIIFaceGaze layout.

MPIIGaze normalised (`<root>/Data/Normalized/pXX/dayNN.mat`, MATLAB v5, fields
`data.left.image` (N, 36, 60) grey, `data.left.gaze` (N, 3), `data.left.pose`, the same for
`data.right`, and `filenames`) holds single-eye patches only. The fast path needs the whole
face to crop eyes and estimate the head pose, so these files cannot become samples; the
reader says so instead of guessing. MPIIGaze's original images are the way in for that data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from gazeloop.trainer.readers.common import LazyFastPath, Samples, Skipped, Unit
from gazeloop.trainer.readers.xgaze import face_patch_samples, import_h5py

_PERSON_MAT = re.compile(r"p\d\d\.mat")
_DAY_MAT = re.compile(r"day\d\d\.mat")
EYE_ONLY = (
    "MPIIGaze's normalised data are 36x60 grey single-eye patches (data.left.image, "
    "data.right.image): the fast path needs the whole face, so they cannot be trained on; "
    "use MPIIFaceGaze (original or normalised)"
)


def person_files(p: Path) -> list[Path]:
    """MPIIFaceGaze normalised files: `p` itself or the pXX.mat files in it."""
    if p.is_file():
        return [p] if p.suffix == ".mat" else []
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if f.is_file() and _PERSON_MAT.fullmatch(f.name))


def mpiigaze_day_files(p: Path) -> list[Path]:
    """MPIIGaze normalised day files under the release root, Data/Normalized, or pXX."""
    for base in (p / "Data" / "Normalized", p):
        if base.is_dir():
            found = sorted(base.glob("day[0-9][0-9].mat")) + sorted(base.glob("p*/day*.mat"))
            found = [f for f in found if _DAY_MAT.fullmatch(f.name)]
            if found:
                return found
    return []


def is_normalized_layout(p: Path) -> bool:
    return bool(person_files(p) or mpiigaze_day_files(p))


class MPIINormalizedReader:
    kind = "mpii_normalized"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        p = self.path
        days = mpiigaze_day_files(p)
        if days:
            return [], [Skipped(str(p), str(days[0].relative_to(p)), _eye_only_reason(days[0]))]
        files = person_files(p)
        if not files:
            return [], [Skipped(str(p), "", "no pXX.mat (normalised MPIIFaceGaze) found")]
        return [Unit(id=str(f), path=f, files=(f,)) for f in files], []

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        h5py = import_h5py("normalised MPIIFaceGaze .mat (v7.3) files")
        try:
            f = h5py.File(unit.path, "r")
        except OSError as e:
            raise ValueError(f"cannot open as a MATLAB v7.3 (HDF5) file: {e}") from None
        with f:
            data, labels = _datasets(f)

            def patch(i: int) -> np.ndarray:
                # (3, H, W) → (H, W, 3): upright BGR (see the module docstring).
                return np.asarray(data[i]).transpose(1, 2, 0).astype(np.uint8)

            person = f"mpii:{unit.path.stem}"
            return face_patch_samples(
                unit.id, len(labels), patch, labels[:, :2], pre, person, "Data.data"
            )


def _datasets(f: Any) -> tuple[Any, np.ndarray]:
    """`Data/data` (read lazily) and all of `Data/label`; ValueError naming the field."""
    for key in ("Data/data", "Data/label"):
        if key not in f:
            raise ValueError(f"no {key.replace('/', '.')} (not the normalised MPIIFaceGaze layout)")
    data, label = f["Data/data"], f["Data/label"]
    if data.ndim != 4 or data.shape[1] != 3 or data.dtype.kind not in "uif":
        raise ValueError(f"Data.data is {data.dtype}{data.shape}, not (N, 3, H, W) images")
    if label.ndim != 2 or label.shape[0] != data.shape[0] or label.shape[1] < 2:
        raise ValueError(f"Data.label shape {label.shape} does not give (pitch, yaw) per image")
    return data, np.asarray(label, np.float64)


def _eye_only_reason(day: Path) -> str:
    """EYE_ONLY, checked against the file where scipy can read it (a layout that merely
    looks like MPIIGaze's gets its real problem named instead)."""
    try:
        from scipy.io import loadmat

        mat = loadmat(str(day), struct_as_record=False, squeeze_me=True)
        shape = np.shape(mat["data"].left.image)
    except Exception as e:  # scipy raises many types for a damaged or foreign file
        return f"{day.name}: not MPIIGaze's normalised layout ({type(e).__name__}: {e})"
    return f"{EYE_ONLY} ({day.name}: data.left.image {shape})"
