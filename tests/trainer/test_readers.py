"""Readers against the owners' release layouts, built here by small fixture builders:
ETH-XGaze from its root with train_test_split.json, GazeCapture's info.json split (test
recordings never trained on, also through `gazeloop train`), MPIIFaceGaze's own screen sizes
whatever --screen-px says, and the normalised MPIIFaceGaze / MPIIGaze .mat files.

Field names, shapes and folders follow the owners' documentation and code (sources in each
reader's docstring); dtypes the owners do not document are marked where they are guessed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gazeloop.trainer.datasets import DataSource, detect_kind, screen_px_notes
from gazeloop.trainer.readers.common import camera_to_model_gaze
from gazeloop.trainer.readers.xgaze import xgaze_to_camera
from tests.trainer.test_datasets import (
    BRIGHT,
    DARK,
    face_image,
    load,
    make_mpii,
    make_recording,
    make_session,
)

h5py = pytest.importorskip("h5py")
scipy_io = pytest.importorskip("scipy.io")


# --- ETH-XGaze --------------------------------------------------------------------------------


def xgaze_h5(path: Path, n: int, *, labels: bool) -> np.ndarray:
    """One subject file as in xgaze_224: face_patch (N,224,224,3) u8 BGR, face_gaze (N,2),
    face_head_pose (N,2), frame_index and cam_index (N,1). The release documents the names
    and shapes (owners' data_loader.py reads face_patch and face_gaze); the float32/int32
    dtypes are a guess. Test-split files have no face_gaze."""
    gaze = np.stack([np.linspace(-0.2, 0.2, n), np.linspace(0.3, -0.3, n)], 1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["face_patch"] = np.stack([face_image(224, 224)] * n)
        if labels:
            f["face_gaze"] = gaze
        f["face_head_pose"] = np.zeros((n, 2), np.float32)
        f["frame_index"] = np.arange(n, dtype=np.int32)[:, None]
        f["cam_index"] = np.zeros((n, 1), np.int32)
    return gaze


def make_xgaze_release(top: Path) -> Path:
    """<top>/xgaze_224/{train,test}/subjectNNNN.h5 + train_test_split.json; one train file
    the split does not list (it must not be read)."""
    root = top / "xgaze_224"
    for s in ("subject0000", "subject0003"):
        xgaze_h5(root / "train" / f"{s}.h5", 3, labels=True)
    xgaze_h5(root / "train" / "subject0099.h5", 2, labels=True)  # not in the split
    for s in ("subject0001", "subject0002"):
        xgaze_h5(root / "test" / f"{s}.h5", 2, labels=False)
    split = {
        "train": ["subject0000.h5", "subject0003.h5"],
        "test": ["subject0001.h5"],
        "test_person_specific": ["subject0002.h5"],
    }
    (root / "train_test_split.json").write_text(json.dumps(split))
    return root


def test_xgaze_from_the_release_root_honours_the_split(tmp_path):
    root = make_xgaze_release(tmp_path / "ETH-XGaze")
    for p in (root, root.parent, root / "train"):
        assert detect_kind(p) == "xgaze"
        data = load([DataSource(path=p)])
        assert set(data.samples.person) == {"xgaze:subject0000", "xgaze:subject0003"}, p
        assert len(data.samples) == 6
    whys = {s.item: s.why for s in data.skipped}
    assert "not listed under 'train'" in whys["train/subject0099.h5"]
    assert "2 test-split file(s) not read" in whys["test/"]
    gaze = xgaze_h5(tmp_path / "x.h5", 3, labels=True)
    want = camera_to_model_gaze(xgaze_to_camera(gaze), 0.05)
    np.testing.assert_allclose(data.samples.gaze[:3], want, atol=1e-6)


def test_xgaze_test_subjects_are_never_read(tmp_path):
    root = make_xgaze_release(tmp_path)
    # Even a test file WITH labels (the release has none) is refused: the split decides.
    xgaze_h5(root / "test" / "subject0001.h5", 2, labels=True)
    for p in (root / "test", root / "test" / "subject0001.h5"):
        data = load([DataSource(path=p)])
        assert len(data.samples) == 0
        assert "never trained on" in data.skipped[0].why
    data = load([DataSource(path=root, split="test")])
    assert len(data.samples) == 0 and "only the train split" in data.skipped[0].why


@pytest.mark.parametrize(
    "text, field",
    [
        ("{not json", "not valid JSON"),
        ('{"test": []}', "no 'train' list"),
        ('{"train": "subject0000.h5", "test": []}', "'train' is not a list"),
        ('{"train": ["../test/subject0001.h5"], "test": []}', "'train' is not a list"),
        ('{"train": [], "test": [], "test_person_specific": [1]}', "'test_person_specific'"),
    ],
)
def test_xgaze_bad_split_file_is_one_line_naming_file_and_field(tmp_path, text, field):
    root = make_xgaze_release(tmp_path)
    (root / "train_test_split.json").write_text(text)
    data = load([DataSource(path=root)])
    (s,) = data.skipped
    assert "train_test_split.json" in s.why and field in s.why and "\n" not in s.why


# --- GazeCapture --------------------------------------------------------------------------------


def make_gazecapture(root: Path, splits: dict[str, str]) -> None:
    """Recording folders as released: frames/, frames.json, dotInfo.json, screen.json,
    apple{Face,LeftEye,RightEye}.json, faceGrid.json and info.json whose Dataset is the
    recording's split (motion.json, also in the release, is not written: nothing reads it)."""
    for rec, split in splits.items():
        make_recording(root / rec, 3)
        grid = {"X": [5] * 3, "Y": [5] * 3, "W": [10] * 3, "H": [10] * 3, "IsValid": [1, 0, 1]}
        (root / rec / "faceGrid.json").write_text(json.dumps(grid))
        info = json.loads((root / rec / "info.json").read_text()) | {"Dataset": split}
        (root / rec / "info.json").write_text(json.dumps(info))


SPLITS = {"00002": "train", "00003": "val", "00005": "test", "00007": "train"}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_gazecapture_reads_only_its_split(tmp_path, split):
    make_gazecapture(tmp_path / "GazeCapture", SPLITS)
    src = DataSource(path=tmp_path / "GazeCapture", split=None if split == "train" else split)
    data = load([src])
    recs = {p.split(":")[1] for p in data.samples.person}
    assert recs == {r for r, s in SPLITS.items() if s == split}
    left_out = [s.why for s in data.skipped if "split not read" in s.why]
    assert len(left_out) == 2 and all(f"reading {split!r}" in w for w in left_out)


def test_gazecapture_test_recordings_are_never_trained_on_by_gazeloop_train(tmp_path):
    """`gazeloop train --data ROOT` (no --split) gives the trainer train recordings only."""
    from gazeloop.tools.cli import build_parser
    from gazeloop.tools.commands.train import _config

    make_gazecapture(tmp_path / "GazeCapture", SPLITS)
    argv = ["train", "--data", str(tmp_path / "GazeCapture"), "--out", str(tmp_path / "run")]
    cfg = _config(build_parser().parse_args(argv))
    assert [d.split for d in cfg.data] == ["train"]
    persons = set(load(cfg.data).samples.person)
    assert persons and not any(":00005:" in p or ":00003:" in p for p in persons)
    args = build_parser().parse_args([*argv, "--split", "test"])
    assert {p.split(":")[1] for p in load(_config(args).data).samples.person} == {"00005"}


@pytest.mark.parametrize(
    "info, why",
    [
        (None, "info.json: missing"),
        ("{", "info.json: not valid JSON"),
        ('{"TotalFrames": 3}', "Dataset is None"),
        ('{"Dataset": "training"}', "Dataset is 'training'"),
    ],
)
def test_gazecapture_unknown_split_is_not_read(tmp_path, info, why):
    make_gazecapture(tmp_path / "gc", {"00002": "train", "00009": "train"})
    bad = tmp_path / "gc" / "00009" / "info.json"
    bad.unlink() if info is None else bad.write_text(info)
    data = load([DataSource(path=tmp_path / "gc")])
    assert {p.split(":")[1] for p in data.samples.person} == {"00002"}
    (s,) = [s for s in data.skipped if s.source.endswith("00009")]
    assert why in s.why and "not read" in s.why and str(s).count("info.json") == 1


# --- MPIIFaceGaze screens -----------------------------------------------------------------------


def set_screen(person_dir: Path, w: float, h: float) -> None:
    """Calibration/screenSize.mat as released: 1×1 doubles height_pixel, width_pixel,
    height_mm, width_mm (Camera.mat and monitorPose.mat sit beside it, unused here)."""
    scipy_io.savemat(
        str(person_dir / "Calibration" / "screenSize.mat"),
        {"height_pixel": h, "width_pixel": w, "height_mm": h / 4, "width_mm": w / 4},
    )


def test_mpii_uses_each_persons_screen_whatever_screen_px_says(tmp_path):
    root = tmp_path / "MPIIFaceGaze"
    make_mpii(root, "p00", 3)
    make_mpii(root, "p01", 3)
    set_screen(root / "p01", 1440.0, 900.0)
    smp = load([DataSource(path=root, screen_px=(1920, 1080))]).samples
    by_person = {p: smp.screen_px[smp.person == p] for p in set(smp.person)}
    np.testing.assert_array_equal(by_person["mpii:p00"], [[1280, 800]] * 3)
    np.testing.assert_array_equal(by_person["mpii:p01"], [[1440, 900]] * 3)
    # The label is normalised by the person's own screen: x = 128 i px.
    np.testing.assert_allclose(smp.screen[smp.person == "mpii:p01", 0], [0, 128 / 1440, 256 / 1440])


def test_mixed_datasets_keep_each_ones_screen_and_say_where_screen_px_is_ignored(tmp_path, capsys):
    make_mpii(tmp_path / "MPIIFaceGaze", "p00", 3)
    make_session(tmp_path / "bare", 3, manifest=False)
    make_session(tmp_path / "with_manifest", 3)  # its session.json says 1000x500
    srcs = [
        DataSource(path=tmp_path / p, screen_px=(1920, 1080))
        for p in ("MPIIFaceGaze", "bare", "with_manifest")
    ]
    smp = load(srcs).samples
    got = {p.split(":")[0]: set() for p in smp.person}
    for person, px in zip(smp.person, smp.screen_px, strict=True):
        got[person.split(":")[0]].add(tuple(int(v) for v in px))
    assert got["mpii"] == {(1280, 800)}
    assert got["session"] == {(1920, 1080), (1000, 500)}
    notes = screen_px_notes(srcs)
    assert len(notes) == 2
    assert "MPIIFaceGaze: mpii data has its own" in notes[0]
    assert "with_manifest: its session.json" in notes[1]
    # The train command prints them on stderr, and nothing for a manifest-less session.
    from gazeloop.tools.commands.train import _screen_px_notes

    _screen_px_notes([s.model_dump(mode="json") for s in srcs])
    err = capsys.readouterr().err
    assert err.count("note: --screen-px 1920 1080 ignored") == 2 and "bare" not in err


# --- normalised MPIIFaceGaze and MPIIGaze ------------------------------------------------------


def matlab_v73(path: Path) -> h5py.File:
    """An HDF5 file with MATLAB v7.3's 512-byte user block and header text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(path, "w", userblock_size=512)
    f.close()
    with open(path, "r+b") as raw:
        raw.write(
            b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2017 HDF5"
        )
    return h5py.File(path, "r+")


def owners_saved_image(rgb: np.ndarray) -> np.ndarray:
    """The owners' MATLAB steps before saving: channels [3 2 1], flip(·, 2), imrotate(·, 90)
    (counter-clockwise, as np.rot90)."""
    return np.rot90(rgb[:, :, ::-1][:, ::-1], k=1)


def make_mpii_normalized(root: Path, person: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """<root>/pXX.mat: Data.data (448×448×3×N uint8 in MATLAB, so (N,3,448,448) through
    HDF5's reversed axes) and Data.label (N×16 double: gaze 2, head pose 2, landmarks 12)."""
    rgb = np.full((448, 448, 3), BRIGHT, np.uint8)
    rgb[:, :224] = (200, DARK, 20)  # image-left half: red
    saved = np.stack([owners_saved_image(rgb)] * n, axis=-1)  # MATLAB (448, 448, 3, N)
    label = np.zeros((n, 16))
    label[:, 0] = np.linspace(-0.1, 0.2, n)
    label[:, 1] = np.linspace(0.3, -0.2, n)
    with matlab_v73(root / f"{person}.mat") as f:
        g = f.create_group("Data")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        # MATLAB writes column-major: HDF5 (and h5py) see the axes reversed.
        d = g.create_dataset("data", data=saved.transpose(3, 2, 1, 0))
        d.attrs["MATLAB_class"] = np.bytes_("uint8")
        lab = g.create_dataset("label", data=label)
        lab.attrs["MATLAB_class"] = np.bytes_("double")
    return rgb, label


def test_mpiifacegaze_normalized_reader(tmp_path):
    root = tmp_path / "MPIIFaceGaze_normalized"
    _, label = make_mpii_normalized(root, "p00", 3)
    make_mpii_normalized(root, "p01", 2)
    assert (
        detect_kind(root) == "mpii_normalized"
        and detect_kind(root / "p00.mat") == "mpii_normalized"
    )
    smp = load([DataSource(path=root)]).samples
    assert len(smp) == 5 and set(smp.person) == {"mpii:p00", "mpii:p01"}
    # Upright BGR: the model's `left` input (image-left half) is the red one, R last.
    red = smp.left[0].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(red, [20, DARK, 200], atol=3)
    assert abs(float(smp.right.mean()) - BRIGHT) < 3
    want = camera_to_model_gaze(xgaze_to_camera(label[:, :2]), 0.05)
    np.testing.assert_allclose(smp.gaze[:3], want, atol=1e-6)
    assert np.isnan(smp.screen).all()


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda f: f["Data"].__delitem__("label"), "no Data.label"),
        (lambda f: f["Data"].__delitem__("data"), "no Data.data"),
        (
            lambda f: (
                f["Data"].__delitem__("label"),
                f.create_dataset("Data/label", data=np.zeros((2, 1))),
            ),
            "Data.label shape (2, 1)",
        ),
    ],
)
def test_mpiifacegaze_normalized_bad_file(tmp_path, damage, why):
    make_mpii_normalized(tmp_path / "n", "p00", 2)
    with h5py.File(tmp_path / "n" / "p00.mat", "r+") as f:
        damage(f)
    data = load([DataSource(path=tmp_path / "n")])
    (s,) = data.skipped
    assert len(data.samples) == 0 and s.source.endswith("p00.mat") and why in s.why


def test_mpiigaze_normalized_eye_patches_are_refused_with_the_reason(tmp_path):
    """MPIIGaze's Data/Normalized/pXX/dayNN.mat (v5): data.left/right.{image,gaze,pose}
    with 36×60 grey eye images, and filenames; nothing to run the fast path on."""
    day = tmp_path / "MPIIGaze" / "Data" / "Normalized" / "p00" / "day01.mat"
    day.parent.mkdir(parents=True)
    eye = {
        "image": np.zeros((2, 36, 60), np.uint8),
        "gaze": np.tile([0.0, 0.0, -1.0], (2, 1)),
        "pose": np.zeros((2, 3)),
    }
    scipy_io.savemat(
        str(day),
        {"data": {"left": eye, "right": eye}, "filenames": np.array(["0001.jpg", "0002.jpg"])},
    )
    assert detect_kind(tmp_path / "MPIIGaze") == "mpii_normalized"
    data = load([DataSource(path=tmp_path / "MPIIGaze")])
    (s,) = data.skipped
    assert len(data.samples) == 0 and "single-eye" in s.why and "(2, 36, 60)" in s.why


def test_mpiifacegaze_normalized_orientation_on_real_faces(shared, tmp_path):
    """Real grid9 faces saved through the owners' MATLAB steps: the real fast path finds
    every face in what the reader gives it, upright (small head roll), while the patches as
    stored (rotated and mirrored) come out lying on their side (roll near ±90°)."""
    import cv2

    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.trainer.datasets import load_data
    from gazeloop.trainer.readers.common import preprocess_image

    frames = sorted((shared / "data" / "sessions" / "grid9").glob("img_*.jpg"))[:3]
    faces = [cv2.flip(cv2.imread(str(f)), 1)[200:800, 660:1260] for f in frames]
    rgb = [cv2.resize(im, (448, 448))[:, :, ::-1] for im in faces]  # MATLAB imread: RGB
    saved = np.stack([owners_saved_image(im) for im in rgb], axis=-1)
    with matlab_v73(tmp_path / "n" / "p07.mat") as f:
        f["Data/data"] = saved.transpose(3, 2, 1, 0)
        f["Data/label"] = np.zeros((3, 16))
    fp = FastPath(FastPathConfig())
    try:
        kw = {"preprocessor": fp, "fastpath_config": FastPathConfig(), "min_screen_samples": 1}
        data = load_data([DataSource(path=tmp_path / "n")], **kw)
        assert len(data.samples) == 3, [str(s) for s in data.skipped]
        as_stored = [np.ascontiguousarray(saved[..., i]) for i in range(3)]
        fp.reset()
        stored_roll = [preprocess_image(fp, im, i)[0].roll for i, im in enumerate(as_stored)]
        assert np.all(np.abs(data.samples.roll) < 0.35)
        assert np.all(np.abs(stored_roll) > 1.2)
    finally:
        fp.close()
