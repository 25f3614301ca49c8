"""Trainer datasets: every reader on tiny instances of its published layout made here, the
TFRecord/protobuf reader against the official protobuf library, corrupt input skipped with
reasons, the cache, and (with ../shared) the real fast path on real frames."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.calibration.store.session import SessionManifest
from gazeloop.calibration.store.writer import write_manifest, write_record
from gazeloop.fastpath.gaze_model import head_pose_to_omz_degrees, postprocess
from gazeloop.fastpath.types import EyeFeatures, Features, GazeSample, Quality
from gazeloop.trainer.datasets import DataSource, detect_kind, load_data
from gazeloop.trainer.readers import tfrecord as tfr
from gazeloop.trainer.readers.common import (
    LazyFastPath,
    SampleBuilder,
    camera_to_model_gaze,
    load_cache,
    opencv_to_camera,
    save_cache,
)
from gazeloop.trainer.readers.tfrecord import JsPsychTFRecordReader
from gazeloop.trainer.readers.xgaze import xgaze_to_camera

HEAD_YPR = np.array([0.1, 0.2, 0.05])
DARK, BRIGHT = 50, 200


class FakeFastPath:
    """Stands in for FastPath where no real face is in the picture: it 'finds a face' in any
    image brighter than 10 on average, and crops the image-left half as the person's RIGHT
    eye and the image-right half as the LEFT eye (un-mirrored frame)."""

    def __init__(self) -> None:
        self.resets = 0
        self.frames = 0

    def reset(self) -> None:
        self.resets += 1

    def process(self, frame) -> GazeSample:
        self.frames += 1
        img = frame.image
        s = GazeSample(t_ns=frame.t_ns, index=frame.index, quality=Quality())
        if img.mean() < 10:
            return s
        s.quality.face = True
        w = img.shape[1]

        def eye(crop: np.ndarray) -> EyeFeatures:
            return EyeFeatures(
                iris_offset=np.zeros(2),
                aperture=0.3,
                blink=False,
                crop=cv2.resize(crop, (60, 60), interpolation=cv2.INTER_AREA),
                crop_clipped=False,
                centre_px=np.zeros(2),
                width_px=10.0,
            )

        s.features = Features(
            left=eye(img[:, w // 2 :]), right=eye(img[:, : w // 2]), head_ypr=HEAD_YPR.copy()
        )
        s.gaze_yp_raw = np.zeros(2)
        return s


def face_image(h: int = 40, w: int = 80) -> np.ndarray:
    img = np.full((h, w, 3), DARK, np.uint8)
    img[:, w // 2 :] = BRIGHT
    return img


def jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    path.write_bytes(buf.tobytes())


def why_of(data, item: str) -> str:
    hits = [s.why for s in data.skipped if s.item == item]
    assert hits, f"{item} not skipped; skipped: {[str(s) for s in data.skipped]}"
    return hits[0]


def load(sources, **kw):
    kw.setdefault("min_screen_samples", 1)
    return load_data(sources, preprocessor=FakeFastPath(), **kw)


# --- conventions ----------------------------------------------------------------------------


def test_model_gaze_axes_invert_the_fast_path_postprocess():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(20, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    roll = rng.uniform(-0.5, 0.5, 20)
    back, _ = postprocess(camera_to_model_gaze(v, roll), roll)
    np.testing.assert_allclose(back, v, atol=1e-12)
    # Looking straight at the camera is OMZ z = -1 (its z points away from the camera).
    np.testing.assert_allclose(camera_to_model_gaze([0, 0, 1.0], 0.0), [0, 0, -1.0])


def test_xgaze_and_opencv_conventions():
    np.testing.assert_allclose(xgaze_to_camera([0.0, 0.0]), [0, 0, 1], atol=1e-12)
    up = xgaze_to_camera([0.3, 0.0])  # positive pitch looks up: y > 0 in our axes
    assert up[1] == pytest.approx(np.sin(0.3)) and up[2] > 0
    side = xgaze_to_camera([0.0, 0.4])  # positive yaw: x < 0 (g_cv_x = -sin(yaw))
    assert side[0] == pytest.approx(-np.sin(0.4))
    # A target below-right of a face in front of the camera, OpenCV axes (y down).
    np.testing.assert_allclose(opencv_to_camera([1.0, 2.0, -3.0]), [1.0, -2.0, 3.0])


# --- sessions ---------------------------------------------------------------------------------


def make_session(folder: Path, n: int = 10, *, manifest: bool = True, mirrored: bool = False):
    for i in range(n):
        write_record(folder, 1_700_000_000_000 + 100 * i, face_image(), (100.0 * (i % 5), 50.0))
    if manifest:
        write_manifest(
            folder, SessionManifest(screen_px=(1000, 500), user="alice", mirrored=mirrored)
        )


def test_session_reader_crops_labels_and_bad_files(tmp_path):
    s = tmp_path / "s1"
    make_session(s, 10)
    # Three kinds of bad input: a truncated JPEG, a frame without a face, a malformed record.
    jpg = s / "img_1700000000000.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-10])  # loses the end-of-image marker
    jpeg(s / "img_1700000000100.jpg", np.zeros((40, 80, 3), np.uint8))
    (s / "img_1700000000200.json").write_text('{"timestamp": 1700000000200, "screen_x": "x"}')

    data = load([DataSource(path=s)])
    smp = data.samples
    assert len(smp) == 7
    assert "truncated JPEG" in why_of(data, "img_1700000000000.jpg")
    assert why_of(data, "img_1700000000100.jpg") == "no face found"
    assert "malformed record" in why_of(data, "img_1700000000200.json")
    assert set(smp.person) == {"session:alice"}
    # The model's `left` input is the person's right eye: the image-left (dark) half.
    assert abs(float(smp.left.mean()) - DARK) < 3 and abs(float(smp.right.mean()) - BRIGHT) < 3
    np.testing.assert_allclose(
        smp.head[0], [*head_pose_to_omz_degrees(HEAD_YPR)[:2], 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(smp.roll, 0.05, rtol=1e-6)
    # Labels: i % 5 * 100 px on a 1000 px wide screen; i = 3..9 survive.
    np.testing.assert_allclose(smp.screen[:, 0], [(i % 5) / 10 for i in range(3, 10)], atol=1e-6)
    np.testing.assert_allclose(smp.screen[:, 1], 0.1, atol=1e-6)
    np.testing.assert_array_equal(smp.screen_px, [[1000, 500]] * 7)
    # Frames of one target share an id; 5 distinct targets among the survivors.
    assert len(np.unique(smp.target)) == 5
    assert np.isnan(smp.gaze).all()


def test_mirrored_session_is_unmirrored_before_the_fast_path(tmp_path):
    make_session(tmp_path / "m", 3, mirrored=True)
    smp = load([DataSource(path=tmp_path / "m")]).samples
    # Flipped back, the bright half is on the image left: the person's right eye.
    assert abs(float(smp.left.mean()) - BRIGHT) < 3 and abs(float(smp.right.mean()) - DARK) < 3


def test_session_without_screen_size_is_skipped_with_reason(tmp_path):
    make_session(tmp_path / "nomanifest", 3, manifest=False)
    data = load([DataSource(path=tmp_path / "nomanifest")])
    assert len(data.samples) == 0
    assert "screen size unknown" in data.skipped[0].why
    data = load([DataSource(path=tmp_path / "nomanifest", screen_px=(1000, 500), person="bob")])
    assert len(data.samples) == 3 and set(data.samples.person) == {"bob"}


def test_label_store_root_of_sessions_and_person_exclusion(tmp_path):
    make_session(tmp_path / "store" / "a", 10)
    make_session(tmp_path / "store" / "b", 4)
    write_manifest(tmp_path / "store" / "b", SessionManifest(screen_px=(1000, 500), user="bea"))
    data = load([DataSource(path=tmp_path / "store")], min_screen_samples=9)
    assert set(data.samples.person) == {"session:alice"}
    assert len(data.samples) == 10
    (ex,) = data.excluded
    assert ex.source == "session:bea" and "4 sample(s)" in ex.why and "9" in ex.why
    # Targets stay distinct across units: a's 5 targets.
    assert len(np.unique(data.samples.target)) == 5


def test_label_store_record_extras(tmp_path):
    s = tmp_path / "export"
    make_session(s, 3)
    write_record(
        s, 1_700_000_001_000, face_image(), (10.0, 10.0), extra={"confidence": 0.25, "target": 7}
    )
    write_record(s, 1_700_000_002_000, face_image(), (10.0, 10.0), extra={"settling": True})
    write_record(s, 1_700_000_003_000, face_image(), (10.0, 10.0), extra={"weight": -1})
    data = load([DataSource(path=s, weight=2.0)])
    assert len(data.samples) == 4
    # The source weight multiplies the record's own confidence.
    np.testing.assert_allclose(sorted(data.samples.weight), [0.5, 2.0, 2.0, 2.0])
    assert "settling" in why_of(data, "img_1700000002000.jpg")
    assert "weight" in why_of(data, "img_1700000003000.jpg")


# --- MPIIFaceGaze -----------------------------------------------------------------------------


def mpii_line(rel: str, sx: float, sy: float, fc, gt, n_fields: int = 28) -> str:
    nums = [sx, sy, *range(12), *([0.1] * 6), *fc, *gt]
    parts = [rel, *(f"{v:g}" for v in nums), "left"]
    return " ".join(parts[:n_fields])


def make_mpii(root: Path, person: str, n: int, *, mat: bool = True) -> None:
    from scipy.io import savemat

    folder = root / person
    lines = []
    for i in range(n):
        rel = f"day01/{i + 1:04d}.jpg"
        jpeg(folder / rel, face_image())
        lines.append(mpii_line(rel, 128.0 * i, 80.0, (10, 20, 600), (100, -50, 0)))
    if mat:
        (folder / "Calibration").mkdir(parents=True)
        savemat(
            str(folder / "Calibration" / "screenSize.mat"),
            {"width_pixel": 1280.0, "height_pixel": 800.0, "width_mm": 331.0, "height_mm": 207.0},
        )
    (folder / f"{person}.txt").write_text("\n".join(lines) + "\n")


def test_mpii_reader(tmp_path):
    root = tmp_path / "MPIIFaceGaze"
    make_mpii(root, "p00", 5)
    txt = root / "p00" / "p00.txt"
    lines = txt.read_text().splitlines()
    lines.append(mpii_line("day01/0009.jpg", 1, 1, (0, 0, 1), (0, 0, 0), n_fields=20))
    lines.append(mpii_line("day01/0010.jpg", float("nan"), 1, (0, 0, 1), (0, 0, 0)))
    lines.append(mpii_line("day01/0011.jpg", 10, 10, (0, 0, 600), (0, 0, 0)))  # no image
    lines.append(mpii_line("day01/0012.jpg", 5000, 10, (0, 0, 600), (0, 0, 0)))
    txt.write_text("\n".join(lines) + "\n")
    make_mpii(root, "p01", 3)
    (root / "p01" / "Calibration" / "screenSize.mat").write_bytes(b"not a mat file")

    assert detect_kind(root) == "mpii"
    data = load([DataSource(path=root)])
    smp = data.samples
    assert len(smp) == 5 and set(smp.person) == {"mpii:p00"}
    assert "20 fields" in why_of(data, "line 6")
    assert "not finite" in why_of(data, "line 7")
    assert "cannot read image" in why_of(data, "day01/0011.jpg")
    assert "outside the screen" in why_of(data, "day01/0012.jpg")
    assert any(s.source.endswith("p01") and "screenSize.mat" in s.why for s in data.skipped)
    np.testing.assert_allclose(smp.screen[:, 0], [128.0 * i / 1280 for i in range(5)], atol=1e-6)
    np.testing.assert_allclose(smp.screen[:, 1], 0.1, atol=1e-6)
    # gt - fc = (90, -70, -600) in OpenCV axes -> ours (90, 70, 600), then model axes.
    want = camera_to_model_gaze(np.array([90.0, 70.0, 600.0]) / np.linalg.norm([90, 70, 600]), 0.05)
    np.testing.assert_allclose(smp.gaze, np.tile(want, (5, 1)), atol=1e-6)


# --- ETH-XGaze --------------------------------------------------------------------------------


def test_xgaze_reader(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "xgaze"
    root.mkdir()
    patches = np.stack([face_image(64, 64)] * 4)
    labels = np.array([[0.0, 0.0], [0.2, -0.1], [np.nan, 0.0], [-0.1, 0.3]])
    with h5py.File(root / "subject0000.h5", "w") as f:
        f["face_patch"] = patches
        f["face_gaze"] = labels
        f["face_head_pose"] = np.zeros((4, 2))
    with h5py.File(root / "subject0001.h5", "w") as f:  # a test-split file: no labels
        f["face_patch"] = patches
    good = (root / "subject0000.h5").read_bytes()
    (root / "subject0002.h5").write_bytes(good[: len(good) // 3])  # truncated copy
    (root / "subject0003.h5").write_bytes(b"garbage" * 100)

    assert detect_kind(root) == "xgaze"
    data = load([DataSource(path=root)])
    smp = data.samples
    assert len(smp) == 3 and set(smp.person) == {"xgaze:subject0000"}
    assert "not finite" in why_of(data, "face_patch[2]")
    whys = {Path(s.source).name: s.why for s in data.skipped if not s.item}
    assert "no face_gaze" in whys["subject0001.h5"]
    assert "subject0002.h5" in whys and "subject0003.h5" in whys
    want = camera_to_model_gaze(xgaze_to_camera(labels[[0, 1, 3]]), 0.05)
    np.testing.assert_allclose(smp.gaze, want, atol=1e-6)
    assert np.isnan(smp.screen).all()


# --- GazeCapture ------------------------------------------------------------------------------


def make_recording(folder: Path, n: int = 5) -> None:
    for i in range(n):
        jpeg(folder / "frames" / f"{i:05d}.jpg", face_image())
    (folder / "frames.json").write_text(json.dumps([f"{i:05d}.jpg" for i in range(n)]))
    orient = [1, 1, 1, 3, 3][:n]
    (folder / "dotInfo.json").write_text(
        json.dumps(
            {
                "DotNum": [0, 0, 1, 2, 2][:n],
                "XPts": [160.0, 160.0, 40.0, 500.0, 900.0][:n],
                "YPts": [284.0, 284.0, 100.0, 100.0, 100.0][:n],
                "XCam": [0.0] * n,
                "YCam": [0.0] * n,
                "Time": [0.1 * i for i in range(n)],
            }
        )
    )
    w = [320.0 if o == 1 else 568.0 for o in orient]
    h = [568.0 if o == 1 else 320.0 for o in orient]
    (folder / "screen.json").write_text(json.dumps({"W": w, "H": h, "Orientation": orient}))
    valid = {"X": [0] * n, "Y": [0] * n, "W": [1] * n, "H": [1] * n, "IsValid": [1] * n}
    (folder / "appleLeftEye.json").write_text(json.dumps(valid))
    (folder / "appleRightEye.json").write_text(json.dumps(valid))
    face = dict(valid, IsValid=[1, 0, 1, 1, 1][:n])
    (folder / "appleFace.json").write_text(json.dumps(face))
    # The release's split lives here; a recording without it is not read (split unknown).
    info = {"TotalFrames": n, "NumFaceDetections": n, "NumEyeDetections": n}
    info |= {"Dataset": "train", "DeviceName": "iPhone 6"}
    (folder / "info.json").write_text(json.dumps(info))


def test_gazecapture_reader(tmp_path):
    root = tmp_path / "GazeCapture"
    make_recording(root / "00002")
    make_recording(root / "00003")
    (root / "00003" / "dotInfo.json").write_text('{"XPts": [1, 2')  # cut short

    assert detect_kind(root) == "gazecapture"
    data = load([DataSource(path=root)])
    smp = data.samples
    assert "marked this frame invalid" in why_of(data, "00001.jpg")
    assert "outside the screen" in why_of(data, "00004.jpg")  # x 900 > W 568
    assert any(s.source.endswith("00003") and "not valid JSON" in s.why for s in data.skipped)
    assert smp.person.tolist() == ["gazecapture:00002:o1"] * 2 + ["gazecapture:00002:o3"]
    np.testing.assert_allclose(
        smp.screen, [[0.5, 0.5], [0.125, 100 / 568], [500 / 568, 0.3125]], atol=1e-6
    )
    np.testing.assert_array_equal(smp.screen_px, [[320, 568], [320, 568], [568, 320]])
    assert len(np.unique(smp.target)) == 3


def test_gazecapture_recording_without_its_split_is_named_once(tmp_path):
    root = tmp_path / "GazeCapture"
    make_recording(root / "00002")
    make_recording(root / "00003")
    (root / "00003" / "info.json").unlink()
    data = load([DataSource(path=root)])
    (skip,) = [s for s in data.skipped if s.source.endswith("00003")]
    # One mention of the file: "…/00003: info.json: missing; split unknown, not read".
    assert str(skip) == f"{root / '00003'}: info.json: missing; split unknown, not read"
    assert set(data.samples.person.tolist()) == {"gazecapture:00002:o1", "gazecapture:00002:o3"}


# --- TFRecord, protobuf, jspsych ------------------------------------------------------------


def test_crc32c_known_value_and_masking():
    assert tfr.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tfr.crc32c(b"") == 0
    c = tfr.crc32c(b"abc")
    assert tfr.masked_crc32c(b"abc") == ((((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _official_example_classes():
    """tf.train.Example & co. built in the official protobuf runtime from a descriptor, so
    the hand-written wire reader is checked against protobuf itself."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="t_example.proto", package="tt", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto

    def msg(name, *flds, options=None):
        m = fdp.message_type.add(name=name)
        for num, fname, ftype, label, tname in flds:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                f.type_name = tname
        return m

    rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL
    msg("BytesList", (1, "value", T.TYPE_BYTES, rep, None))
    msg("FloatList", (1, "value", T.TYPE_FLOAT, rep, None))
    msg("Int64List", (1, "value", T.TYPE_INT64, rep, None))
    feat = msg(
        "Feature",
        (1, "bytes_list", T.TYPE_MESSAGE, opt, ".tt.BytesList"),
        (2, "float_list", T.TYPE_MESSAGE, opt, ".tt.FloatList"),
        (3, "int64_list", T.TYPE_MESSAGE, opt, ".tt.Int64List"),
    )
    feat.oneof_decl.add(name="kind")
    for f in feat.field:
        f.oneof_index = 0
    fs = msg("Features", (1, "feature", T.TYPE_MESSAGE, rep, ".tt.Features.FeatureEntry"))
    entry = fs.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=opt, type_name=".tt.Feature")
    entry.options.map_entry = True
    msg("Example", (1, "features", T.TYPE_MESSAGE, opt, ".tt.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tt.Example"))


def test_example_wire_format_matches_official_protobuf():
    Example = _official_example_classes()
    ex = Example()
    ex.features.feature["subject_id"].int64_list.value.extend([int("k3x9", 36), -5])
    ex.features.feature["x"].float_list.value.append(12.5)
    ex.features.feature["eye_img"].bytes_list.value.extend([b"\x00\xffabc", b""])
    parsed = tfr.parse_example(ex.SerializeToString())
    assert parsed["subject_id"].tolist() == [int("k3x9", 36), -5]
    assert parsed["x"].tolist() == [12.5]
    assert parsed["eye_img"] == [b"\x00\xffabc", b""]
    # And the other way: our encoder is what protobuf reads back.
    mine = tfr.encode_example({"subject_id": [7, -1], "y": [0.25, 99.0], "b": [b"zz"]})
    back = Example.FromString(mine)
    assert list(back.features.feature["subject_id"].int64_list.value) == [7, -1]
    assert list(back.features.feature["y"].float_list.value) == [0.25, 99.0]
    assert list(back.features.feature["b"].bytes_list.value) == [b"zz"]


def test_tensor_proto_roundtrip_and_typed_values():
    a = (np.arange(36 * 144) % 251).astype(np.uint8).reshape(36, 144)
    np.testing.assert_array_equal(tfr.parse_tensor(tfr.encode_tensor(a)), a)
    f = np.random.default_rng(0).normal(size=(478, 3)).astype(np.float32)
    np.testing.assert_array_equal(tfr.parse_tensor(tfr.encode_tensor(f)), f)
    # dtype uint8 (4), shape [2, 2], values as packed int_val (field 7) with a single fill.
    shape = tfr._enc_len(2, b"".join(tfr._enc_len(2, b"\x08" + bytes([2])) for _ in range(2)))
    fill = b"\x08\x04" + shape + tfr._enc_len(7, bytes([9]))
    np.testing.assert_array_equal(tfr.parse_tensor(fill), np.full((2, 2), 9, np.uint8))
    with pytest.raises(tfr.ProtoError):
        tfr.parse_tensor(b"\x08\x04" + shape + tfr._enc_len(4, b"\x00" * 3))


def synthetic_landmarks() -> np.ndarray:
    """Normalised frame landmarks for the points the strip and the fast path's eye
    features use: a frontal face, eyes on y = 0.45."""
    lm = np.full((478, 3), [0.5, 0.6, 0.0])
    pts = {
        33: (0.40, 0.45), 133: (0.46, 0.45), 362: (0.54, 0.45), 263: (0.60, 0.45),
        468: (0.43, 0.45), 473: (0.57, 0.45),
        226: (0.38, 0.45), 446: (0.62, 0.45), 27: (0.43, 0.42), 23: (0.43, 0.48),
        257: (0.57, 0.42), 253: (0.57, 0.48),
    }  # fmt: skip
    for i, (x, y) in pts.items():
        lm[i, :2] = (x, y)
    for up, lo in ((159, 145), (158, 153), (160, 144), (386, 374), (385, 380), (387, 373)):
        cx = 0.43 if up < 300 else 0.57
        lm[up, :2], lm[lo, :2] = (cx, 0.438), (cx, 0.462)
    return lm


def synthetic_strip() -> np.ndarray:
    """Image-left half dark, image-right half bright, a white dot at the right eye's iris
    (landmark 468 mapped into the 144×36 strip: u = 0.06/0.26·144, v = 0.04/0.08·36)."""
    strip = np.full((36, 144), DARK, np.uint8)
    strip[:, 72:] = BRIGHT
    u, v = 0.06 / 0.26 * 144, 0.04 / 0.08 * 36
    cv2.circle(strip, (round(u), round(v)), 2, 255, -1)
    return strip


def jspsych_record(x: float, y: float, *, subject: str = "a7k2", **override) -> bytes:
    feats = {
        "subject_id": [int(subject, 36)],
        "x": [float(x)],
        "y": [float(y)],
        "img_width": [144],
        "img_height": [36],
        "eye_img": [tfr.encode_tensor(synthetic_strip())],
        "landmarks": [tfr.encode_tensor(synthetic_landmarks().astype(np.float32))],
        "phase": [1],
    }
    feats.update(override)
    return tfr.encode_example({k: v for k, v in feats.items() if v is not None})


def test_jspsych_tfrecord_reader_geometry(tmp_path):
    path = tmp_path / "a7k2.tfrecords"
    tfr.write_records(
        path, [jspsych_record(25, 50), jspsych_record(75, 50), jspsych_record(25, 50)]
    )
    reader = JsPsychTFRecordReader(path, head_pose=lambda pts, size: np.zeros(3))
    (unit,), _ = reader.units()
    smp, skipped = reader.read(unit, LazyFastPath(FakeFastPath, None))
    assert skipped == [] and len(smp) == 3
    assert set(smp.person) == {"jspsych:a7k2"}
    np.testing.assert_allclose(smp.screen, [[0.25, 0.5], [0.75, 0.5], [0.25, 0.5]])
    assert smp.target.tolist() == [0, 1, 0]
    assert np.isnan(smp.screen_px).all()
    left, right = smp.left[0].astype(float), smp.right[0].astype(float)
    # `left` is the person's right eye (image-left, dark), centred on its corners' midpoint,
    # where the iris dot is: the landmark→strip mapping and the eye assignment both hold.
    assert left[29:31, 29:31, 0].mean() > 240
    peak = np.unravel_index(np.argmax(left[..., 0]), (60, 60))
    assert abs(peak[0] - 29.5) <= 1 and abs(peak[1] - 29.5) <= 1
    assert abs(np.median(left) - DARK) < 5 and abs(np.median(right) - BRIGHT) < 5
    np.testing.assert_allclose(smp.head, 0.0)


def _half_closed() -> bytes:
    """Lids a third as far apart as `synthetic_landmarks`' (aperture ≈ 0.11, above the shut
    floor): a half-blink for a person whose eyes measure 0.33 open."""
    lm = synthetic_landmarks()
    for up, lo in ((159, 145), (158, 153), (160, 144), (386, 374), (385, 380), (387, 373)):
        lm[up, 1], lm[lo, 1] = 0.446, 0.454
    return tfr.encode_tensor(lm.astype(np.float32))


def test_jspsych_half_blinks_are_judged_against_each_persons_open_eyes(tmp_path):
    # The fast path's blink rule (fastpath.blink), per person: a7k2's half-closed frame
    # after six open ones is a blink; the same frame as b3's first has nothing to compare
    # with and only a shut eye would be refused.
    recs = [jspsych_record(10 * k, 50) for k in range(1, 7)]
    recs += [jspsych_record(70, 50, landmarks=[_half_closed()])]
    recs += [jspsych_record(80, 50, subject="b3", landmarks=[_half_closed()])]
    path = tmp_path / "two.tfrecords"
    tfr.write_records(path, recs)
    reader = JsPsychTFRecordReader(path, head_pose=lambda pts, size: np.zeros(3))
    (unit,), _ = reader.units()
    smp, skipped = reader.read(unit, LazyFastPath(FakeFastPath, None))
    assert [(s.item, s.why) for s in skipped] == [("record 6", "eyes closed (blink)")]
    assert len(smp) == 7 and sorted(set(smp.person)) == ["jspsych:a7k2", "jspsych:b3"]


def test_jspsych_bad_records_are_skipped_with_reasons(tmp_path, face_task):
    # face_task: the good record's head pose comes from the face model's canonical face.
    recs = [
        jspsych_record(10, 10),
        jspsych_record(20, 20, landmarks=[tfr.encode_tensor(np.zeros((468, 3), np.float32))]),
        jspsych_record(30, 30, landmarks=None),
        jspsych_record(140, 30),
        jspsych_record(50, 50),
        jspsych_record(60, 60),
    ]
    path = tmp_path / "s.tfrecords"
    tfr.write_records(path, recs)
    raw = bytearray(path.read_bytes())
    # Corrupt one byte inside record 4's data: its CRC fails, the framing survives.
    start = sum(16 + len(r) for r in recs[:4]) + 12
    raw[start + 5] ^= 0xFF
    # And cut the file inside record 5: a partial file.
    path.write_bytes(bytes(raw[: len(raw) - 20]))

    data = load_data(
        [DataSource(path=path, kind="jspsych")], preprocessor=FakeFastPath(), min_screen_samples=1
    )
    reasons = {s.item: s.why for s in data.skipped}
    assert "468" in reasons["record 1"]
    assert "no landmarks" in reasons["record 2"]
    assert "not in 0-100" in reasons["record 3"]
    assert "data CRC mismatch" in reasons[f"record 4 at byte {start - 12}"]
    assert any("truncated record" in w and "rest of the file" in w for w in reasons.values())
    assert len(data.samples) == 1


def test_tfrecord_not_a_tfrecord(tmp_path):
    path = tmp_path / "junk.tfrecord"
    path.write_bytes(struct.pack("<Q", 5) + b"\x00" * 20)
    data = load_data([DataSource(path=path)], preprocessor=FakeFastPath(), min_screen_samples=1)
    assert len(data.samples) == 0
    assert any("length CRC mismatch" in s.why for s in data.skipped)


# --- cache ----------------------------------------------------------------------------------


def test_cache_roundtrip_hit_invalidation_and_damage(tmp_path):
    make_session(tmp_path / "s", 6)
    cache = tmp_path / "cache"
    fake = FakeFastPath()
    first = load_data(
        [DataSource(path=tmp_path / "s")], cache_dir=cache, preprocessor=fake, min_screen_samples=1
    )
    assert [u.cached for u in first.units] == [False] and fake.frames == 6
    (npz,) = cache.glob("*.npz")
    with np.load(npz, allow_pickle=False) as z:  # plain arrays only
        assert z["left"].dtype == np.uint8 and z["person"].dtype.kind == "U"
    again = load_data(
        [DataSource(path=tmp_path / "s")], cache_dir=cache, preprocessor=fake, min_screen_samples=1
    )
    assert [u.cached for u in again.units] == [True] and fake.frames == 6
    for k, v in first.samples.arrays().items():
        np.testing.assert_array_equal(getattr(again.samples, k), v, err_msg=k)
    # Another preprocessing tag (fast-path crop settings) is another cache entry.
    other = load_data(
        [DataSource(path=tmp_path / "s")],
        cache_dir=cache,
        preprocessor=fake,
        fastpath_config=type("Cfg", (), {"crop_scale": 2.0})(),
        min_screen_samples=1,
    )
    assert [u.cached for u in other.units] == [False] and fake.frames == 12
    # A damaged cache file is rebuilt, not trusted.
    npz.write_bytes(npz.read_bytes()[:100])
    rebuilt = load_data(
        [DataSource(path=tmp_path / "s")], cache_dir=cache, preprocessor=fake, min_screen_samples=1
    )
    assert [u.cached for u in rebuilt.units] == [False] and len(rebuilt.samples) == 6
    # A changed source file changes the key.
    write_record(tmp_path / "s", 1_800_000_000_000, face_image(), (1.0, 1.0))
    grown = load_data(
        [DataSource(path=tmp_path / "s")], cache_dir=cache, preprocessor=fake, min_screen_samples=1
    )
    assert [u.cached for u in grown.units] == [False] and len(grown.samples) == 7


def test_cache_keeps_skip_reasons(tmp_path):
    b = SampleBuilder()
    b.add(
        left=face_image(60, 60),
        right=face_image(60, 60),
        head=np.zeros(3),
        roll=0.0,
        person="p",
        name="n",
    )
    from gazeloop.trainer.readers.common import Skipped

    path = tmp_path / "x.npz"
    save_cache(path, b.build(), [Skipped("u", "f.jpg", "no face found")])
    s, skipped = load_cache(path)
    assert len(s) == 1 and skipped == [Skipped("u", "f.jpg", "no face found")]


def test_unknown_layout_is_a_reason_not_a_crash(tmp_path):
    (tmp_path / "empty").mkdir()
    data = load([DataSource(path=tmp_path / "empty"), DataSource(path=tmp_path / "missing")])
    assert len(data.samples) == 0 and len(data.skipped) == 2
    assert "no known layout" in data.skipped[0].why and "does not exist" in data.skipped[1].why


# --- the real fast path on real frames (../shared) --------------------------------------------


@pytest.fixture(scope="module")
def real_fp(shared):
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig

    fp = FastPath(FastPathConfig())
    yield fp
    fp.close()


def test_sessions_give_exactly_the_fast_path_pixels(shared, real_fp, tmp_path):
    """Training sees what the product computes: the cached crops equal collect_session's."""
    from gazeloop.fastpath.collect import collect_session
    from gazeloop.fastpath.pipeline import FastPathConfig

    grid9 = shared / "data" / "sessions" / "grid9"
    src = DataSource(path=grid9, screen_px=(1920, 1080), mirrored=True)
    data = load_data(
        [src],
        cache_dir=tmp_path,
        preprocessor=real_fp,
        fastpath_config=FastPathConfig(),
        min_screen_samples=9,
    )
    assert len(data.samples) == 9 and data.skipped == []
    ref = collect_session(grid9, real_fp, screen_px=(1920, 1080), mirrored=True)
    for i, ls in enumerate(ref.samples):
        np.testing.assert_array_equal(data.samples.left[i], ls.sample.features.right.crop)
        np.testing.assert_array_equal(data.samples.right[i], ls.sample.features.left.crop)
    # Head pose: yaw within ±30°, roll zeroed (crops are roll-aligned), as GazeModel feeds.
    assert np.all(np.abs(data.samples.head[:, 0]) < 30) and np.all(data.samples.head[:, 2] == 0)
    # And in the frame the fast path tells the network (the eyes' ray frame by default), not
    # the camera's: the pose a trained model is served is the pose it was trained with.
    from gazeloop.fastpath.gaze_model import head_pose_to_omz_degrees

    frame = FastPathConfig().gaze_frame
    told = [ls.sample.features.network_head(frame) for ls in ref.samples]
    assert {f for _, f in told} == {ls.sample.head_frame for ls in ref.samples} == {"ray"}
    served = head_pose_to_omz_degrees(np.array([h for h, _ in told]))
    np.testing.assert_allclose(data.samples.head[:, :2], served[:, :2], atol=1e-4)
    camera = head_pose_to_omz_degrees(np.array([ls.sample.features.head_ypr for ls in ref.samples]))
    assert np.abs(camera[:, :2] - served[:, :2]).max() > 1.0  # the two frames differ here


def test_image_datasets_through_the_real_fast_path(shared, real_fp, tmp_path):
    """MPII, GazeCapture and ETH-XGaze layouts made of real grid9 frames (un-mirrored)."""
    h5py = pytest.importorskip("h5py")
    from gazeloop.fastpath.pipeline import FastPathConfig

    frames = sorted((shared / "data" / "sessions" / "grid9").glob("img_*.jpg"))[:3]
    images = [cv2.flip(cv2.imread(str(f)), 1) for f in frames]
    small = [cv2.resize(im, (960, 540), interpolation=cv2.INTER_AREA) for im in images]

    make_mpii(tmp_path / "mpii", "p05", 3)
    for i, im in enumerate(small):
        jpeg(tmp_path / "mpii" / "p05" / f"day01/{i + 1:04d}.jpg", im)
    make_recording(tmp_path / "gc" / "00010", 3)
    for i, im in enumerate(small):
        jpeg(tmp_path / "gc" / "00010" / "frames" / f"{i:05d}.jpg", im)
    (tmp_path / "xg").mkdir()
    with h5py.File(tmp_path / "xg" / "subject0007.h5", "w") as f:
        # The face region of a 1920x1080 grid9 frame, as a 224x224 normalised patch.
        f["face_patch"] = np.stack([cv2.resize(im[200:800, 660:1260], (224, 224)) for im in images])
        f["face_gaze"] = np.zeros((3, 2))

    data = load_data(
        [DataSource(path=tmp_path / p) for p in ("mpii", "gc", "xg")],
        preprocessor=real_fp,
        fastpath_config=FastPathConfig(),
        min_screen_samples=1,
    )
    counts = {
        k: int(sum(p.startswith(k) for p in data.samples.person))
        for k in ("mpii", "gazecapture", "xgaze")
    }
    # GazeCapture frame 1 is marked invalid by the dataset itself; every other frame has a face.
    assert counts == {"mpii": 3, "gazecapture": 2, "xgaze": 3}, [str(s) for s in data.skipped]
    assert np.all(np.isfinite(data.samples.head))
    # Real eye crops: textured, not the flat fill of a failed crop.
    assert float(data.samples.left.std(axis=(1, 2, 3)).min()) > 5


def test_corrupt_real_session_file_is_skipped(shared, real_fp, tmp_path):
    from gazeloop.fastpath.pipeline import FastPathConfig

    s = tmp_path / "g"
    shutil.copytree(shared / "data" / "sessions" / "grid9", s)
    victim = sorted(s.glob("img_*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    data = load_data(
        [DataSource(path=s, screen_px=(1920, 1080), mirrored=True)],
        preprocessor=real_fp,
        fastpath_config=FastPathConfig(),
        min_screen_samples=9,
    )
    assert len(data.samples) == 0
    assert "truncated JPEG" in why_of(data, victim.name)
    (ex,) = data.excluded
    assert "8 sample(s)" in ex.why


def test_datasets_command_reports_json(shared, tmp_path, capsys):
    from gazeloop.trainer.datasets import main

    grid9 = shared / "data" / "sessions" / "grid9"
    args = [str(grid9), "--screen-px", "1920", "1080", "--mirrored", "--cache", str(tmp_path)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 9 and report["persons"] == 1 and report["with_screen"] == 9
    assert report["units"][0]["cached"] is False and report["skipped"] == 0
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["units"][0]["cached"] is True
