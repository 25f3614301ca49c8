"""ETH-XGaze in its published layout (the normalised 224×224 release), read from its root.

    xgaze_224/train_test_split.json   {"train": [...], "test": [...], "test_person_specific": [...]}
    xgaze_224/train/subject0000.h5, subject0003.h5, ...
    xgaze_224/test/subject0001.h5, ...

`path` may be that root (or a folder holding `xgaze_224/`), its `train/` folder, one .h5
file, or a plain folder of .h5 files with no split file. Where a split file is found it
decides what is read: only the files it lists under "train", from `train/`, exactly as the
owners' loader (`xucong-zhang/ETH-XGaze`, `data_loader.py`: `datastore['train']` joined to
`<root>/train/`). The test subjects have no gaze labels in the release, so `test/` and a file
the split lists under "test" or "test_person_specific" are never read: they are reported
as skipped, with the reason.

Datasets used in each file:

    face_patch      (N, 224, 224, 3) uint8, BGR (the owners' loader flips it)   ← fast path input
    face_gaze       (N, 2) float, (pitch, yaw) radians, normalised camera       ← label

`face_head_pose` (N, 2), `frame_index` and `cam_index` are not used: the head pose the model
gets must be the fast path's own estimate, as at run time. The labels follow the dataset's
normalisation code: with g the gaze direction in OpenCV axes (x right, y down, z away from
the camera), pitch = asin(−g_y) and yaw = atan2(−g_x, −g_z), so
g = −(cos p · sin y, sin p, cos p · cos y) (`xgaze_to_camera`). There are no screen targets:
these persons train the gaze (angle) loss only. Person id: `xgaze:<file stem>`.

The face patches are normalised crops with the face centred at one scale, so the fast path
tracks them as one stream per file (reset per file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    label_to_model_gaze,
    opencv_to_camera,
    sample_fields,
)

SPLIT_FILE = "train_test_split.json"
RELEASE_DIR = "xgaze_224"
# The subsets of the split file that have no labels in the release (never trained on).
UNLABELLED = ("test", "test_person_specific")


def xgaze_to_camera(pitch_yaw: np.ndarray) -> np.ndarray:
    """ETH-XGaze (pitch, yaw) radians → unit gaze vectors in our camera axes."""
    py = np.asarray(pitch_yaw, np.float64)
    p, y = py[..., 0], py[..., 1]
    g_cv = -np.stack([np.cos(p) * np.sin(y), np.sin(p), np.cos(p) * np.cos(y)], axis=-1)
    return opencv_to_camera(g_cv)


def read_split(path: Path) -> dict[str, list[str]]:
    """train_test_split.json → {subset: [file name, ...]}; ValueError naming the field."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not an object of subsets")
    for key in ("train", "test"):  # the release has both; test_person_specific may be absent
        if key not in doc:
            raise ValueError(f"{path}: no {key!r} list")
    out: dict[str, list[str]] = {}
    for key in ("train", *UNLABELLED):
        names = doc.get(key, [])
        # Plain file names only: an entry must not reach outside its split folder.
        ok = isinstance(names, list) and all(
            isinstance(n, str) and n and Path(n).name == n for n in names
        )
        if not ok:
            raise ValueError(f"{path}: {key!r} is not a list of .h5 file names")
        out[key] = names
    return out


def release_root(p: Path) -> Path | None:
    """The folder holding the split file, for a path inside (or just above) a release."""
    for cand in (p, p / RELEASE_DIR, p.parent, p.parent.parent):
        if (cand / SPLIT_FILE).is_file():
            return cand
    return None


def _splits(root: Path) -> tuple[Path, Path]:
    return root / "train", root / "test"


class XGazeReader:
    kind = "xgaze"

    def __init__(self, path: str | Path, *, split: str = "train") -> None:
        self.path = Path(path)
        self.split = split

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        p = self.path
        if not p.exists():
            return [], [Skipped(str(p), "", "does not exist")]
        if self.split != "train":
            why = f"split {self.split!r}: only the train split has gaze labels in the release"
            return [], [Skipped(str(p), "", why)]
        root = release_root(p)
        if root is not None and (p.is_file() or p in (root, root.parent, *_splits(root))):
            return self._from_split(root, p)
        files = [p] if p.is_file() else sorted(f for f in p.glob("*.h5") if f.is_file())
        if not files:
            return [], [Skipped(str(p), "", "no .h5 files found")]
        return [Unit(id=str(f), path=f, files=(f,)) for f in files], []

    def _from_split(self, root: Path, asked: Path) -> tuple[list[Unit], list[Skipped]]:
        """What the split lists under "train" (all of it, or the one file asked for), with
        everything else in the release reported as not read."""
        split = read_split(root / SPLIT_FILE)
        train = set(split["train"])
        if asked == root / "test":
            why = f"the test split: no gaze labels in the release ({SPLIT_FILE}), never trained on"
            return [], [Skipped(str(asked), "", why)]
        if asked.is_file():
            if asked.parent != root / "train" or asked.name not in train:
                why = f"not in the train split of {root / SPLIT_FILE}: never trained on"
                return [], [Skipped(str(asked), "", why)]
            return [Unit(id=str(asked), path=asked, files=(asked,))], []
        skipped: list[Skipped] = []
        never = sorted({n for k in UNLABELLED for n in split[k]})
        if never:
            why = (
                f"{len(never)} test-split file(s) not read: the release has no gaze labels "
                f"for them ({SPLIT_FILE} {', '.join(UNLABELLED)})"
            )
            skipped.append(Skipped(str(root), "test/", why))
        for f in sorted((root / "train").glob("*.h5")):
            if f.name not in train:
                why = f"not listed under 'train' in {SPLIT_FILE}: not read"
                skipped.append(Skipped(str(root), f"train/{f.name}", why))
        units = []
        for name in sorted(train):
            f = root / "train" / name
            if not f.is_file():
                why = f"listed under 'train' in {SPLIT_FILE} but missing"
                skipped.append(Skipped(str(root), f"train/{name}", why))
                continue
            units.append(Unit(id=str(f), path=f, files=(f,)))
        if not units:
            skipped.append(Skipped(str(root), "", "no train-split .h5 files found"))
        return units, skipped

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        h5py = import_h5py("ETH-XGaze .h5 files")
        person = f"xgaze:{unit.path.stem}"
        try:
            f = h5py.File(unit.path, "r")
        except OSError as e:
            raise ValueError(f"cannot open as HDF5: {e}") from None
        with f:
            patches, labels = _datasets(f)
            return face_patch_samples(
                unit.id, len(labels), lambda i: patches[i], labels, pre, person, "face_patch"
            )


def import_h5py(what: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise ValueError(f"reading {what} needs h5py (pip install h5py)") from None
    return h5py


def face_patch_samples(
    unit_id: str,
    n: int,
    patch: Callable[[int], np.ndarray],
    pitch_yaw: np.ndarray,
    pre: LazyFastPath,
    person: str,
    field: str,
) -> tuple[Samples, list[Skipped]]:
    """Samples from n normalised face patches (BGR, read one by one: a release file does
    not fit in memory) with (pitch, yaw) labels in the ETH-XGaze convention. Shared with
    the normalised MPIIFaceGaze reader, whose labels follow the same convention."""

    def to_sample(i: int) -> dict[str, Any]:
        if not np.all(np.isfinite(pitch_yaw[i])):
            raise Skip("gaze label is not finite")
        try:
            image = np.ascontiguousarray(patch(i))
        except OSError as e:  # a truncated file fails here, chunk by chunk
            raise Skip(f"cannot read: {e}") from None
        inputs = fast_path_inputs(pre.fp, image, i)
        gaze = label_to_model_gaze(xgaze_to_camera(pitch_yaw[i]), inputs)
        return sample_fields(inputs, person=person, gaze=gaze)

    pre.fp.reset()
    items = ((f"{field}[{i}]", i) for i in range(n))
    return gather(unit_id, items, to_sample, [])


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
