"""ETH-XGaze in its published layout (the normalised 224×224 release).

    <root>/subject0000.h5, subject0003.h5, ...   (or a single .h5 file)

Datasets used in each file:

    face_patch      (N, H, W, 3) uint8, BGR, the normalised face image      ← fast path input
    face_gaze       (N, 2) float, (pitch, yaw) radians, normalised camera    ← label

`face_head_pose` (N, 2), `frame_index` and `cam_index` are not used: the head pose the model
gets must be the fast path's own estimate, as at run time. The labels follow the dataset's
normalisation code: with g the gaze direction in OpenCV axes (x right, y down, z away from
the camera), pitch = asin(−g_y) and yaw = atan2(−g_x, −g_z), so
g = −(cos p · sin y, sin p, cos p · cos y) (`xgaze_to_camera`). Test-split files have no
`face_gaze` and are skipped. There are no screen targets: these persons train the gaze
(angle) loss only. Person id: `xgaze:<file stem>`.

The face patches are normalised crops with the face centred at one scale, so the fast path
tracks them as one stream per file (reset per file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gazeloop.trainer.readers.common import (
    LazyFastPath,
    Samples,
    Skip,
    Skipped,
    Unit,
    camera_to_model_gaze,
    fast_path_inputs,
    gather,
    opencv_to_camera,
    sample_fields,
)


def xgaze_to_camera(pitch_yaw: np.ndarray) -> np.ndarray:
    """ETH-XGaze (pitch, yaw) radians → unit gaze vectors in our camera axes."""
    py = np.asarray(pitch_yaw, np.float64)
    p, y = py[..., 0], py[..., 1]
    g_cv = -np.stack([np.cos(p) * np.sin(y), np.sin(p), np.cos(p) * np.cos(y)], axis=-1)
    return opencv_to_camera(g_cv)


class XGazeReader:
    kind = "xgaze"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        p = self.path
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.glob("*.h5") if f.is_file())
        else:
            return [], [Skipped(str(p), "", "does not exist")]
        if not files:
            return [], [Skipped(str(p), "", "no .h5 files found")]
        return [Unit(id=str(f), path=f, files=(f,)) for f in files], []

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        try:
            import h5py
        except ImportError:
            raise ValueError("reading ETH-XGaze .h5 files needs h5py (pip install h5py)") from None
        person = f"xgaze:{unit.path.stem}"
        try:
            f = h5py.File(unit.path, "r")
        except OSError as e:
            raise ValueError(f"cannot open as HDF5: {e}") from None
        with f:
            patches, labels = _datasets(f)

            def to_sample(i: int) -> dict[str, Any]:
                if not np.all(np.isfinite(labels[i])):
                    raise Skip("face_gaze is not finite")
                try:
                    image = np.ascontiguousarray(patches[i])
                except OSError as e:  # a truncated file fails here, chunk by chunk
                    raise Skip(f"cannot read: {e}") from None
                inputs = fast_path_inputs(pre.fp, image, i)
                gaze = camera_to_model_gaze(xgaze_to_camera(labels[i]), inputs.roll)
                return sample_fields(inputs, person=person, gaze=gaze)

            pre.fp.reset()
            items = ((f"face_patch[{i}]", i) for i in range(patches.shape[0]))
            return gather(unit.id, items, to_sample, [])


def _datasets(f: Any) -> tuple[Any, np.ndarray]:
    """The face patches (read lazily, patch by patch) and all gaze labels of an open file;
    ValueError for a file that is not the published layout."""
    if "face_patch" not in f:
        raise ValueError("no face_patch dataset")
    if "face_gaze" not in f:
        raise ValueError("no face_gaze dataset (a test-split file has no labels)")
    patches, gazes = f["face_patch"], f["face_gaze"]
    if patches.ndim != 4 or patches.shape[3] != 3 or patches.dtype != np.uint8:
        raise ValueError(f"face_patch is {patches.dtype}{patches.shape}, not (N,H,W,3) u8")
    if gazes.shape != (patches.shape[0], 2):
        raise ValueError(f"face_gaze shape {gazes.shape} does not match {patches.shape[0]}")
    return patches, np.asarray(gazes, np.float64)
