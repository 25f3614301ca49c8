"""The ONNX rebuild of gaze-estimation-adas-0002 against OpenVINO, and the GazeModel wrapper."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from gazeloop.fastpath.gaze_model import (
    GazeModel,
    ModelLoadError,
    head_pose_to_omz_degrees,
    mirror_averaged,
    omz_gaze_to_camera,
    rotate_vector_roll,
    vector_to_yaw_pitch,
)
from gazeloop.fastpath.ir_onnx import build_default, build_onnx, sha256_file
from gazeloop.fastpath.ir_reader import IRFormatError, constant_value, find_head_input, read_ir
from tests.paths import SHARED

IR_DIR = SHARED / "models" / "gaze-estimation-adas-0002"
XML = IR_DIR / "gaze-estimation-adas-0002.xml"
BIN = IR_DIR / "gaze-estimation-adas-0002.bin"
GRID9 = SHARED / "data" / "sessions" / "grid9"

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared material folder not found at {SHARED}"
)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared material folder not found at {SHARED}")
    # Present shared folder but missing model is a failure, not a skip.
    return build_default(SHARED / "models", tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="session")
def ort_session(onnx_path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def ov_model(onnx_path: Path):
    ov = pytest.importorskip("openvino", reason="openvino (dev extra) is the reference")
    core = ov.Core()
    # bf16-capable CPUs would otherwise compute in bf16 and miss 1e-3.
    return core.compile_model(
        str(XML), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )


@pytest.fixture(scope="session")
def gaze_model(onnx_path: Path) -> GazeModel:
    return GazeModel(onnx_path, threads=1)


def synthetic_eye(dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """A 60x60 BGR eye: skin, a light sclera ellipse, a dark iris + pupil moved by (dx, dy)
    pixels (image axes, y down)."""
    yy, xx = np.mgrid[0:60, 0:60].astype(np.float64)
    img = np.empty((60, 60, 3))
    img[:] = (120, 140, 180)
    sclera = ((xx - 30) / 20) ** 2 + ((yy - 30) / 9) ** 2 <= 1
    img[sclera] = (215, 220, 225)
    r2 = (xx - 30 - dx) ** 2 + (yy - 30 - dy) ** 2
    img[(r2 <= 64) & sclera] = (40, 50, 60)
    img[(r2 <= 9) & sclera] = (10, 10, 10)
    return img.astype(np.uint8)


def _feeds(rng: np.random.Generator):
    """Random and structured inputs (1 x ...) as the network takes them."""

    def nchw(img: np.ndarray) -> np.ndarray:
        return img.transpose(2, 0, 1)[None].astype(np.float32)

    grad = np.broadcast_to(np.linspace(0, 255, 60)[None, :, None], (60, 60, 3))
    cases = [
        (rng.uniform(0, 255, (60, 60, 3)), rng.uniform(0, 255, (60, 60, 3)), (0, 0, 0)),
        (rng.uniform(0, 255, (60, 60, 3)), rng.uniform(0, 255, (60, 60, 3)), (25, -10, 5)),
        (np.zeros((60, 60, 3)), np.full((60, 60, 3), 255.0), (-30, 15, -8)),
        (grad, grad[:, ::-1], (10, 20, 0)),
        (synthetic_eye(6, 2), synthetic_eye(6, 2), (-5, 3, 1)),
        (synthetic_eye(-7, -3), synthetic_eye(-7, -3), (40, -25, 20)),
    ]
    for left, right, head in cases:
        yield {
            "left_eye_image": nchw(np.asarray(left)),
            "right_eye_image": nchw(np.asarray(right)),
            "head_pose_angles": np.array([head], np.float32),
        }


# -- the rebuild ----------------------------------------------------------------------------


@needs_shared
def test_model_structure_and_metadata(onnx_path: Path) -> None:
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    ins = {i.name: i for i in model.graph.input}
    assert list(ins) == ["left_eye_image", "right_eye_image", "head_pose_angles"]
    for vi in model.graph.input:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert vi.type.tensor_type.shape.dim[0].dim_param == "N"
    outs = [o.name for o in model.graph.output]
    assert outs == ["gaze_vector", "embedding"]
    emb_dims = model.graph.output[1].type.tensor_type.shape.dim
    assert emb_dims[0].dim_param == "N" and emb_dims[1].dim_value == 80
    # float32 compute: no f16 tensors left anywhere
    assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["gazeloop.model_id"] == "gaze-estimation-adas-0002-onnx"
    assert meta["gazeloop.source.xml_sha256"] == sha256_file(XML)
    assert meta["gazeloop.source.bin_sha256"] == sha256_file(BIN)
    assert meta["gazeloop.builder"]
    assert not list(onnx_path.parent.glob("*.tmp")), "temporary file left behind"


@needs_shared
def test_matches_openvino_single(ort_session, ov_model) -> None:
    rng = np.random.default_rng(1)
    for feed in _feeds(rng):
        ours = ort_session.run(["gaze_vector"], feed)[0]
        ref = ov_model(feed)[ov_model.output(0)]
        assert ours.shape == ref.shape == (1, 3)
        assert np.abs(ours - ref).max() <= 1e-3, (ours, ref)


@needs_shared
def test_dynamic_batch_matches_single_runs(ort_session, ov_model) -> None:
    feeds = list(_feeds(np.random.default_rng(2)))[:4]
    batch = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    gaze, emb = ort_session.run(["gaze_vector", "embedding"], batch)
    assert gaze.shape == (4, 3) and emb.shape == (4, 80)
    for i, f in enumerate(feeds):
        single_g, single_e = ort_session.run(["gaze_vector", "embedding"], f)
        np.testing.assert_allclose(gaze[i], single_g[0], atol=1e-5)
        np.testing.assert_allclose(emb[i], single_e[0], atol=1e-4)
        assert np.abs(gaze[i] - ov_model(f)[ov_model.output(0)][0]).max() <= 1e-3


@needs_shared
def test_embedding_is_the_gaze_head_input(ort_session) -> None:
    """gaze_vector must be exactly the last 1x1 conv (+ bias) applied to `embedding`."""
    graph = read_ir(XML, BIN)
    head, _ = find_head_input(graph)
    assert head.type == "Convolution" and head.inputs[1].shape == (3, 80, 1, 1)
    w = constant_value(graph, graph.producer(head.id, head.inputs[1].id)).astype(np.float64)
    ((add_layer, _),) = graph.consumers(head.id, head.outputs[0].id)
    bias_src = [s for s in graph.input_sources(graph.layers[add_layer]) if s[0] != head.id][0]
    b = constant_value(graph, bias_src).astype(np.float64).reshape(3)
    feed = next(_feeds(np.random.default_rng(3)))
    gaze, emb = ort_session.run(["gaze_vector", "embedding"], feed)
    np.testing.assert_allclose(emb @ w.reshape(3, 80).T + b, gaze, atol=1e-5)


@needs_shared
def test_missing_bin_names_the_file(tmp_path: Path) -> None:
    xml = tmp_path / "m.xml"
    shutil.copy(XML, xml)
    missing = tmp_path / "m.bin"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_onnx(xml, missing, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()

    models = tmp_path / "models"
    (models / "gaze-estimation-adas-0002").mkdir(parents=True)
    shutil.copy(XML, models / "gaze-estimation-adas-0002" / XML.name)
    with pytest.raises(FileNotFoundError, match=r"gaze-estimation-adas-0002\.bin"):
        build_default(models, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_default(tmp_path / "nowhere", tmp_path / "out")


@needs_shared
def test_truncated_bin_names_the_file(tmp_path: Path) -> None:
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    shutil.copy(XML, xml)
    bin_.write_bytes(BIN.read_bytes()[: BIN.stat().st_size // 2])
    with pytest.raises(IRFormatError, match=str(bin_)) as info:
        build_onnx(xml, bin_, tmp_path / "out.onnx")
    assert "truncated" in str(info.value)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.tmp"))


# -- GazeModel ----------------------------------------------------------------------------


def test_corrupt_or_missing_model_fails_at_construction(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not an onnx model" * 50)
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        GazeModel(bad)
    with pytest.raises(ModelLoadError, match="absent.onnx"):
        GazeModel(tmp_path / "absent.onnx")
    # A valid ONNX file that is not a gaze model is refused too, before any frame.
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    other = tmp_path / "other.onnx"
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(other))
    with pytest.raises(ModelLoadError, match="other.onnx"):
        GazeModel(other)


@needs_shared
def test_predict_outputs(gaze_model: GazeModel, onnx_path: Path) -> None:
    assert gaze_model.model_id == "gaze-estimation-adas-0002-onnx"
    assert gaze_model.sha256 == sha256_file(onnx_path)
    assert gaze_model.embedding_dim == 80
    out = gaze_model.predict(synthetic_eye(4, 1), synthetic_eye(4, 1), np.array([0.1, -0.2, 0.05]))
    assert out.vector.shape == (3,) and abs(np.linalg.norm(out.vector) - 1) < 1e-9
    assert out.yaw_pitch.shape == (2,) and np.isfinite(out.yaw_pitch).all()
    assert out.embedding is not None and out.embedding.shape == (80,)
    assert out.raw.shape == (3,) and np.isfinite(out.raw).all()
    # yaw/pitch are the vector's angles, yaw first
    x, y, z = out.vector
    np.testing.assert_allclose(out.yaw_pitch, [math.atan2(x, z), math.asin(y)], atol=1e-12)
    with pytest.raises(ValueError):
        gaze_model.predict(np.zeros((30, 60, 3), np.uint8), synthetic_eye(), np.zeros(3))


@needs_shared
def test_predict_batch_matches_predict(gaze_model: GazeModel) -> None:
    left = np.stack([synthetic_eye(dx, 0) for dx in (-6, 0, 6)])
    right = np.stack([synthetic_eye(dx, 2) for dx in (-5, 1, 7)])
    head = np.array([[0.1, 0.0, 0.2], [-0.2, 0.1, 0.0], [0.0, -0.1, -0.3]])
    batch = gaze_model.predict_batch(left, right, head)
    assert batch.vectors.shape == (3, 3) and batch.embeddings.shape == (3, 80)
    for i in range(3):
        one = gaze_model.predict(left[i], right[i], head[i])
        np.testing.assert_allclose(batch.vectors[i], one.vector, atol=1e-5)
        np.testing.assert_allclose(batch.yaw_pitch[i], one.yaw_pitch, atol=1e-5)


@needs_shared
def test_predict_batch_matches_predict_mirror_averaged(gaze_model: GazeModel) -> None:
    left = np.stack([synthetic_eye(dx, 0) for dx in (-6, 6)])
    right = np.stack([synthetic_eye(dx, 2) for dx in (-5, 7)])
    head = np.array([[0.1, 0.0, 0.2], [0.0, -0.1, -0.3]])
    batch = gaze_model.predict_batch(left, right, head, mirror_average=True)
    for i in range(2):
        one = gaze_model.predict(left[i], right[i], head[i], mirror_average=True)
        np.testing.assert_allclose(batch.yaw_pitch[i], one.yaw_pitch, atol=1e-5)
        single = gaze_model.predict(left[i], right[i], head[i]).yaw_pitch
        assert np.abs(one.yaw_pitch - single).max() > 1e-4  # the second run did something


def test_mirror_averaged_cancels_a_left_right_bias() -> None:
    """A network that reads every face `bias` further toward image right reads the mirrored
    face's answer with the same bias, which the un-mirroring turns the other way."""
    truth = np.array([[0.3, -0.2, -0.93], [-0.1, 0.05, -0.99]])
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    bias = np.array([0.08, 0.0, 0.0])
    raw = truth + bias
    raw_mirrored = truth * [-1, 1, 1] + bias
    got = mirror_averaged(raw, raw_mirrored)
    yaw = lambda v: np.arctan2(v[..., 0], -v[..., 2])  # noqa: E731
    np.testing.assert_allclose(yaw(got), yaw(truth), atol=2e-3)
    assert np.all(np.abs(yaw(raw) - yaw(truth)) > 0.07)


@needs_shared
def test_mirror_averaged_read_is_exactly_mirror_symmetric(gaze_model: GazeModel) -> None:
    """The mirrored face (crops flipped, eyes swapped, yaw and roll negated) reads as the
    mirror of the face: yaw negated, pitch the same, to float precision; the single read
    is off by the network's asymmetry, which this read exists to remove."""
    left, right = synthetic_eye(6, 1), synthetic_eye(5, 1)
    head = np.array([0.15, 0.05, 0.1])
    mirror = (right[:, ::-1], left[:, ::-1], head * [-1, 1, -1])
    a = gaze_model.predict(left, right, head, mirror_average=True).yaw_pitch
    b = gaze_model.predict(*mirror, mirror_average=True).yaw_pitch
    np.testing.assert_allclose([b[0], b[1]], [-a[0], a[1]], atol=1e-6)
    a1 = gaze_model.predict(left, right, head).yaw_pitch
    b1 = gaze_model.predict(*mirror).yaw_pitch
    assert abs(a1[0] + b1[0]) > math.radians(0.5)
    # the model's own default read follows its constructor
    assert gaze_model.read == "single" and not gaze_model.mirror_average


@needs_shared
def test_synthetic_iris_direction(gaze_model: GazeModel) -> None:
    """An iris moved toward image right means looking toward image right: yaw > 0; moved
    down in the image: pitch lower."""
    zero = np.zeros(3)
    right = gaze_model.predict(synthetic_eye(7), synthetic_eye(7), zero).yaw_pitch
    left = gaze_model.predict(synthetic_eye(-7), synthetic_eye(-7), zero).yaw_pitch
    assert right[0] > math.radians(8) and left[0] < -math.radians(8)
    up = gaze_model.predict(synthetic_eye(0, -3), synthetic_eye(0, -3), zero).yaw_pitch
    down = gaze_model.predict(synthetic_eye(0, 3), synthetic_eye(0, 3), zero).yaw_pitch
    assert up[1] > down[1]


@needs_shared
def test_mirror_flips_yaw_synthetic(gaze_model: GazeModel) -> None:
    """Mirroring a frame: each crop flips, the eyes swap, head yaw and roll negate."""
    left, right = synthetic_eye(6, 1), synthetic_eye(5, 1)
    head = np.array([0.15, 0.05, 0.1])
    a = gaze_model.predict(left, right, head).yaw_pitch
    b = gaze_model.predict(right[:, ::-1], left[:, ::-1], head * [-1, 1, -1]).yaw_pitch
    assert abs(a[0]) > math.radians(8)
    assert np.sign(b[0]) == -np.sign(a[0])
    assert 0.6 < abs(b[0]) / abs(a[0]) < 1.6
    assert abs(a[1] - b[1]) < math.radians(5)


# Eye corners (x, y) in the UN-mirrored 1920x1080 frame (the stored grid9 frames are a
# selfie view, so the test flips them first), from one MediaPipe FaceMesh run. "il" is the
# eye on the image left (the person's right eye), corners ordered left to right.
_CORNERS = {
    # target at the screen's bottom left: the person looks toward image right (yaw > 0)
    "img_1766068433975": {"il": ((891.3, 412.7), (965.7, 410.9)),
                          "ir": ((1050.8, 417.6), (1113.6, 420.8))},
    # target at the screen's top right: toward image left (yaw < 0)
    "img_1766068421832": {"il": ((787.0, 408.9), (857.2, 405.4)),
                          "ir": ((946.0, 403.7), (1022.4, 400.0))},
}  # fmt: skip


def _eye_crop(frame: np.ndarray, p1, p2, size: int = 60, scale: float = 1.8):
    """OMZ-style crop: a square of 1.8 x the corner distance centred between the corners,
    rotated so the corners are horizontal. Returns the crop and the corner-line angle in
    radians (> 0 when the line descends to the right, i.e. our roll sign)."""
    import cv2

    p1, p2 = np.asarray(p1, float), np.asarray(p2, float)
    c, d = (p1 + p2) / 2, p2 - p1
    ang = math.atan2(d[1], d[0])
    m = cv2.getRotationMatrix2D(
        (float(c[0]), float(c[1])), math.degrees(ang), size / (scale * np.hypot(*d))
    )
    m[:, 2] += size / 2 - c
    crop = cv2.warpAffine(
        frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, ang


def _frame_gaze(model: GazeModel, frame: np.ndarray, il, ir) -> np.ndarray:
    crop_il, a1 = _eye_crop(frame, *il)
    crop_ir, a2 = _eye_crop(frame, *ir)
    roll = (a1 + a2) / 2
    # person's left eye = image-right eye in an un-mirrored frame
    return model.predict(crop_ir, crop_il, np.array([0.0, 0.0, roll])).yaw_pitch


@needs_shared
@pytest.mark.parametrize("name", sorted(_CORNERS))
def test_mirror_flips_yaw_real_frame(gaze_model: GazeModel, name: str) -> None:
    """On real eyes the network is not mirror-equivariant: over the nine grid9 frames,
    yaw(frame) + yaw(mirror) is +4..+14 deg (a bias toward image right), so the test checks
    the antisymmetric part (a - b) / 2 for sign and size, bounds the symmetric part, and
    requires pitch to be unchanged by the mirror."""
    import cv2

    frame = cv2.imread(str(GRID9 / f"{name}.jpg"))
    assert frame is not None, f"cannot read {GRID9 / name}.jpg"
    frame = np.ascontiguousarray(frame[:, ::-1])  # stored mirrored; un-mirror
    w = frame.shape[1]
    c = _CORNERS[name]
    a = _frame_gaze(gaze_model, frame, c["il"], c["ir"])

    def mirror(p):
        return (w - 1 - p[0], p[1])

    # In the mirrored frame the image-left eye is the old image-right one, corners reordered.
    mirrored = np.ascontiguousarray(frame[:, ::-1])
    il_m = (mirror(c["ir"][1]), mirror(c["ir"][0]))
    ir_m = (mirror(c["il"][1]), mirror(c["il"][0]))
    b = _frame_gaze(gaze_model, mirrored, il_m, ir_m)
    expected_sign = 1 if name == "img_1766068433975" else -1
    antisym, sym = (a[0] - b[0]) / 2, (a[0] + b[0]) / 2
    assert np.sign(antisym) == expected_sign and abs(antisym) > math.radians(4), (a, b)
    assert abs(sym) < math.radians(8), (a, b)
    assert abs(a[1] - b[1]) < math.radians(2), (a, b)


@needs_shared
def test_roll_consistency_loose(gaze_model: GazeModel) -> None:
    """Rotating the whole frame by a roll and re-cropping should rotate the answer by about
    that roll (the crops come out nearly the same; only the back-rotation differs)."""
    import cv2

    name = "img_1766068433975"
    frame = np.ascontiguousarray(cv2.imread(str(GRID9 / f"{name}.jpg"))[:, ::-1])
    c = _CORNERS[name]
    base = _frame_gaze(gaze_model, frame, c["il"], c["ir"])
    roll = math.radians(15)  # face turned clockwise in the image
    centre = np.mean([*c["il"], *c["ir"]], axis=0)
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -math.degrees(roll), 1.0)
    rotated = cv2.warpAffine(frame, m, (frame.shape[1], frame.shape[0]))

    def move(p):
        return tuple(m[:, :2] @ np.asarray(p) + m[:, 2])

    got = _frame_gaze(gaze_model, rotated, [move(p) for p in c["il"]], [move(p) for p in c["ir"]])
    yaw, pitch = base
    v = np.array(
        [math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]
    )
    want = vector_to_yaw_pitch(rotate_vector_roll(v, roll))
    assert np.abs(np.degrees(got - want)).max() < 3.0, (np.degrees(got), np.degrees(want))


# -- conventions as pure functions --------------------------------------------------------


def test_rotate_vector_roll_maths() -> None:
    v = np.array([0.3, -0.2, 0.9])
    np.testing.assert_allclose(rotate_vector_roll(v, 0.0), v)
    r = 0.4
    # "up" in the roll-aligned eye frame is, in the image, tilted toward image right when the
    # face is rotated clockwise (roll > 0).
    np.testing.assert_allclose(rotate_vector_roll([0, 1, 0], r), [math.sin(r), math.cos(r), 0])
    np.testing.assert_allclose(rotate_vector_roll([1, 0, 0], r), [math.cos(r), -math.sin(r), 0])
    out = rotate_vector_roll(v, r)
    assert out[2] == v[2] and math.isclose(np.linalg.norm(out), np.linalg.norm(v))
    np.testing.assert_allclose(rotate_vector_roll(out, -r), v, atol=1e-12)
    # mirror equivariance: mirroring x and negating roll commute with the rotation
    mx = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(rotate_vector_roll(v * mx, -r), out * mx, atol=1e-12)
    # vectorised over N
    vs = np.random.default_rng(0).normal(size=(5, 3))
    rs = np.linspace(-1, 1, 5)
    batch = rotate_vector_roll(vs, rs)
    for i in range(5):
        np.testing.assert_allclose(batch[i], rotate_vector_roll(vs[i], rs[i]))


def test_rotate_vector_roll_undoes_opencv_crop_alignment() -> None:
    """Tie the back-rotation to the alignment the caller performs: crops are rotated with
    cv2.getRotationMatrix2D(angle=+roll in degrees), counter-clockwise on screen."""
    import cv2

    for roll in (0.3, -0.5):
        m = cv2.getRotationMatrix2D((30.0, 30.0), math.degrees(roll), 1.0)[:, :2]
        for d_up in (np.array([1.0, 0.0]), np.array([0.2, 0.7])):  # image direction, y up
            d_px = d_up * [1, -1]
            aligned_px = m @ d_px
            aligned_up = aligned_px * [1, -1]
            back = rotate_vector_roll([*aligned_up, 0.5], roll)
            np.testing.assert_allclose(back[:2], d_up, atol=1e-12)


def test_convention_helpers() -> None:
    # Only pitch changes sign between our head pose and OMZ's head_pose_angles.
    np.testing.assert_allclose(
        head_pose_to_omz_degrees([math.radians(10), math.radians(20), math.radians(-5)]),
        [10, -20, -5],
    )
    # OMZ z is negative toward the camera; ours positive.
    np.testing.assert_allclose(omz_gaze_to_camera([0.1, 0.2, -0.9]), [0.1, 0.2, 0.9])
    # yaw first, then pitch: looking toward image right and a little up
    yp = vector_to_yaw_pitch([math.sin(0.3), 0.0, math.cos(0.3)])
    np.testing.assert_allclose(yp, [0.3, 0.0], atol=1e-12)
    yp = vector_to_yaw_pitch([0.0, math.sin(0.2), math.cos(0.2)])
    np.testing.assert_allclose(yp, [0.0, 0.2], atol=1e-12)


def test_scalar_postprocess_matches_vectorised() -> None:
    from gazeloop.fastpath.gaze_model import _postprocess_one, postprocess

    rng = np.random.default_rng(4)
    for raw, roll in zip(rng.normal(size=(20, 3)), rng.uniform(-0.6, 0.6, 20), strict=True):
        v1, yp1 = _postprocess_one(raw.astype(np.float32), float(roll))
        v2, yp2 = postprocess(raw.astype(np.float32), roll)
        np.testing.assert_allclose(v1, v2, atol=1e-12)
        np.testing.assert_allclose(yp1, yp2, atol=1e-12)
    for bad in (np.zeros(3), np.array([np.nan, 0.0, 1.0])):
        assert np.isnan(_postprocess_one(bad, 0.1)[0]).all()
        assert np.isnan(postprocess(bad, 0.1)[0]).all()


@pytest.mark.parametrize(
    ("op", "says"), [("Slice", "is [1, 2], not [1, 3]"), ("Div", "is not finite")]
)
def test_a_gaze_model_answering_in_another_shape_or_nan_is_refused_at_load(
    tmp_path: Path, op: str, says: str
) -> None:
    """Such a model loaded, then failed on every frame: a run without a profile to refit it
    on showed "eyes closed" for ever."""
    from onnx import TensorProto, helper, numpy_helper

    ins = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
        for n, shape in (
            ("left_eye_image", [1, 3, 60, 60]),
            ("right_eye_image", [1, 3, 60, 60]),
            ("head_pose_angles", [1, 3]),
        )
    ]
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("s", [0]), ("e", [2]), ("a", [1]))]  # fmt: skip
    consts.append(numpy_helper.from_array(np.zeros((1, 3), np.float32), "zero"))
    if op == "Slice":  # two numbers where three are read
        node = helper.make_node("Slice", ["head_pose_angles", "s", "e", "a"], ["gaze_vector"])
    else:  # 0 / 0 on the zero input of the first run
        node = helper.make_node("Div", ["head_pose_angles", "zero"], ["gaze_vector"])
    out = helper.make_tensor_value_info("gaze_vector", TensorProto.FLOAT, None)
    g = helper.make_graph([node], "g", ins, [out], initializer=consts)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / f"{op}.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelLoadError, match=re.escape(f"{op}.onnx: gaze_vector {says}")):
        GazeModel(path)
