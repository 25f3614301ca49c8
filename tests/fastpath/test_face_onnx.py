"""Landmark backend `onnx`: the face landmarker's TFLite networks rebuilt as ONNX, tracked.

Reference for parity: MediaPipe's own FaceLandmarker (Tasks API, IMAGE mode: detector on
every image, no smoothing) on the shared stills; it runs the same two networks in TFLite with
MediaPipe's pre- and post-processing. Measured on 99 stills (grid9, evit p1_s00, every frame
of calibrate.mp4): x/y max 0.017 px, median 0.001 px; z max 0.054 px (an iris point). The
crop is OpenCV's warpPerspective, as in MediaPipe, and its rounding moves with the OpenCV
release (4.11 vs 5.1: up to 0.05 px x/y, 0.11 px z on 4 stills), so the tolerances below are
0.1 px (x/y) and 0.25 px (z). With LiteRT importable (`ai-edge-litert`,
not a project dependency) the networks themselves are compared on the same inputs too
(measured on 99 real face crops: max 2.6e-4 of the 256 px input scale, 0.0006 image px).
"""

from __future__ import annotations

import glob
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.fastpath import models
from gazeloop.fastpath.face_onnx import (
    FaceOnnxError,
    OnnxFaceLandmarker,
    _warp_matrix,
    ssd_anchor_centres,
)
from gazeloop.fastpath.landmarks import LandmarkError, make_backend
from gazeloop.fastpath.tflite_onnx import read_bundle_member, tflite_bytes_to_onnx
from gazeloop.fastpath.tflite_reader import (
    TFLiteFormatError,
    input_normalization,
    parse_tflite,
)
from tests.paths import SHARED

GRID9 = SHARED / "data" / "sessions" / "grid9"
EVIT = SHARED / "data" / "evit" / "p1_s00"
VIDEO = SHARED / "data" / "video-corners4" / "calibrate.mp4"
TOLERANCE_PX = 0.1  # whole pipeline vs MediaPipe's FaceLandmarker: x/y, per point
Z_TOLERANCE_PX = 0.25  # z (iris z is the most sensitive output to sub-pixel input changes)


def _video(step: int = 1, limit: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VIDEO))
    out, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            out.append(frame)
        i += 1
        if limit is not None and len(out) >= limit:
            break
    cap.release()
    assert out, f"no frames read from {VIDEO}"
    return out


def _stills(video_step: int) -> list[tuple[str, np.ndarray]]:
    files = sorted(glob.glob(str(GRID9 / "*.jpg"))) + sorted(glob.glob(str(EVIT / "*.jpg")))
    assert files, "shared stills missing"
    stills = [(Path(f).name, cv2.imread(f)) for f in files]
    stills += [(f"calibrate.mp4#{i}", f) for i, f in enumerate(_video(video_step))]
    return stills


@pytest.fixture(scope="module")
def backend(face_task) -> OnnxFaceLandmarker:
    # MediaPipe's own graph, step for step: no refinement of fresh detections (tested below).
    b = OnnxFaceLandmarker(face_task, refine_fresh=False)  # builds the ONNX files into the cache
    yield b
    b.close()


# -- the reader and the rebuild -----------------------------------------------------------


def test_reader_sees_the_bundle_networks(face_task):
    det = parse_tflite(read_bundle_member(face_task, "face_detector.tflite"), "det")
    lm = parse_tflite(read_bundle_member(face_task, "face_landmarks_detector.tflite"), "lm")
    assert det.tensor(det.inputs[0]).shape == (1, 128, 128, 3)
    assert [det.tensor(t).shape for t in det.outputs] == [(1, 896, 16), (1, 896, 1)]
    assert lm.tensor(lm.inputs[0]).shape == (1, 256, 256, 3)
    assert lm.tensor(lm.outputs[0]).shape == (1, 1, 1, 1434)  # 478 x (x, y, z)
    # Input ranges come from the models' own metadata: [-1, 1] and [0, 1].
    assert input_normalization(det).range() == (-1.0, 1.0)
    assert input_normalization(lm).range() == (0.0, 1.0)
    assert "PRELU" in lm.op_types and "DEQUANTIZE" in det.op_types


def test_reader_refuses_other_files_naming_them(tmp_path):
    with pytest.raises(TFLiteFormatError, match="junk.tflite"):
        parse_tflite(b"\x00" * 64, tmp_path / "junk.tflite")
    with pytest.raises(TFLiteFormatError, match="cut.tflite"):
        parse_tflite(b"\x10\x00\x00\x00TFL3" + b"\x00" * 8, tmp_path / "cut.tflite")


def _face_crop(face_task) -> np.ndarray:
    img = cv2.imread(sorted(glob.glob(str(GRID9 / "*.jpg")))[0])
    b = OnnxFaceLandmarker(face_task)
    roi = b.detect_rois(img)[0]
    m, _ = _warp_matrix(roi, (img.shape[1], img.shape[0]), 256)
    return cv2.warpPerspective(img, m, (256, 256), flags=cv2.INTER_LINEAR)


def _planar(crop_bgr: np.ndarray) -> np.ndarray:
    """What the folded landmark network takes: NCHW BGR pixels as float32."""
    return np.ascontiguousarray(crop_bgr.transpose(2, 0, 1), dtype=np.float32)[None]


@pytest.mark.slow
def test_fast_rebuild_equals_literal_translation(face_task):
    """The landmark network as built for speed (PReLU decomposed, folded into neighbouring
    convolutions where it can be, channel padding as a conv, BGR pixels in with the
    normalisation folded into the first conv) against the literal translation (ONNX PRelu
    and Pad, NHWC RGB in [0, 1]) on a real face crop. Measured: max 3e-5 of the 256 px
    input scale on the landmarks."""
    import onnxruntime as ort

    data = read_bundle_member(face_task, "face_landmarks_detector.tflite")
    crop = _face_crop(face_task)
    x = (cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)[None]
    literal = tflite_bytes_to_onnx(data, "lm", prelu="op", fold_channels=0)
    fast = tflite_bytes_to_onnx(data, "lm", fold_image_input=True)
    outs = []
    for model, inp in ((literal, x), (fast, _planar(crop))):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(s.run(None, {"input_12": inp}))
    for a, c in zip(*outs, strict=True):
        np.testing.assert_allclose(a, c, atol=2e-3, rtol=0)


def test_fast_rebuild_has_no_input_transpose_pad_or_prelu(face_task):
    """Layout changes are what the blocked-layout convolutions pay for: the literal graph
    transposes its NHWC input and pads channels with Pad; the fast one does neither, and
    keeps only the transposes of its three outputs back to the TFLite layout."""
    data = read_bundle_member(face_task, "face_landmarks_detector.tflite")

    def ops(model) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in model.graph.node:
            out[n.op_type] = out.get(n.op_type, 0) + 1
        return out

    literal = tflite_bytes_to_onnx(data, "lm", prelu="op", fold_channels=0)
    fast = tflite_bytes_to_onnx(data, "lm", fold_image_input=True)
    before, after = ops(literal), ops(fast)
    assert before["Transpose"] == 4 and before["Pad"] == 3 and before["PRelu"] == 69
    assert after["Transpose"] == 3 and "Pad" not in after and "PRelu" not in after
    first = next(n for n in fast.graph.node if "input_12" in n.input)
    assert first.op_type == "Conv"  # the input goes straight into the first convolution
    assert [d.dim_value for d in fast.graph.input[0].type.tensor_type.shape.dim] == [
        1,
        3,
        256,
        256,
    ]
    meta = {p.key: p.value for p in fast.metadata_props}
    assert meta["gazeloop.input_layout"] == "NCHW BGR" and meta["gazeloop.input_std"] == "1.0"


def test_input_fold_refused_for_a_nonzero_mean(face_task):
    """The detector's [-1, 1] input has a mean: zero padding would no longer be zero after
    folding, so the fold is refused, naming the model."""
    data = read_bundle_member(face_task, "face_detector.tflite")
    with pytest.raises(TFLiteFormatError) as e:
        tflite_bytes_to_onnx(data, "bundle.task:face_detector.tflite", fold_image_input=True)
    assert "face_detector.tflite" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_rebuild_matches_litert(face_task, backend):
    """Both networks against TFLite itself (LiteRT), on real inputs."""
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT is the reference")
    import onnxruntime as ort

    from gazeloop.fastpath.models import resolve_face_onnx

    det_onnx, lm_onnx = resolve_face_onnx(face_task)
    img = cv2.imread(sorted(glob.glob(str(EVIT / "*.jpg")))[0])
    roi = backend.detect_rois(img)[0]
    m, _ = _warp_matrix(roi, (img.shape[1], img.shape[0]), 256)
    crop = cv2.warpPerspective(img, m, (256, 256), flags=cv2.INTER_LINEAR)
    x_lm = (cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)[None]
    small = cv2.resize(img, (128, 128))
    x_det = (cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0)[None]
    # The cached landmark network takes BGR pixels, NCHW (normalisation folded in).
    for member, path, x, x_onnx, atol in (
        ("face_detector.tflite", det_onnx, x_det, x_det, 1e-3),
        ("face_landmarks_detector.tflite", lm_onnx, x_lm, _planar(crop), 2e-3),
    ):
        it = litert.Interpreter(model_content=read_bundle_member(face_task, member))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = dict(
            zip(
                [o.name for o in s.get_outputs()],
                s.run(None, {s.get_inputs()[0].name: x_onnx}),
                strict=True,
            )
        )
        for d in it.get_output_details():
            np.testing.assert_allclose(got[d["name"]], it.get_tensor(d["index"]), atol=atol, rtol=0)


# -- the backend against MediaPipe --------------------------------------------------------


@pytest.mark.slow
def test_landmarks_match_mediapipe_facelandmarker_on_stills(face_task, backend):
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    ref = vision.FaceLandmarker.create_from_options(
        vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(face_task)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=1,
        )
    )
    worst = 0.0
    n = 0
    for name, img in _stills(video_step=3):
        h, w = img.shape[:2]
        backend.reset()
        got = backend.detect(img, 0)
        res = ref.detect(
            mp.Image(image_format=mp.ImageFormat.SRGB, data=cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        )
        assert (got is None) == (not res.face_landmarks), name
        if got is None:
            continue
        want = np.array([(p.x * w, p.y * h, p.z * w) for p in res.face_landmarks[0]])
        d = np.linalg.norm(got.points[:, :2] - want[:, :2], axis=1)
        assert d.max() < TOLERANCE_PX, f"{name}: max {d.max():.3f} px"
        assert np.abs(got.points[:, 2] - want[:, 2]).max() < Z_TOLERANCE_PX, name
        worst = max(worst, float(d.max()))
        n += 1
    ref.close()
    assert n >= 45, f"only {n} stills had a face"


def test_contract_points_iris_and_head_pose(face_task, backend):
    img = cv2.imread(sorted(glob.glob(str(GRID9 / "*.jpg")))[0])
    backend.reset()
    f = backend.detect(img, 0)
    assert f is not None
    assert f.points.shape == (478, 3) and f.points.dtype == np.float32
    assert f.image_size == (img.shape[1], img.shape[0])
    assert f.blendshapes is None and f.faces_seen == 1
    for centre, ring, corners in (
        (468, range(469, 473), (33, 133)),
        (473, range(474, 478), (362, 263)),
    ):
        eye_w = np.linalg.norm(f.points[corners[0], :2] - f.points[corners[1], :2])
        mid = (f.points[corners[0], :2] + f.points[corners[1], :2]) / 2
        assert np.linalg.norm(f.points[centre, :2] - mid) < 0.35 * eye_w  # iris in the eye
        radius = np.linalg.norm(f.points[list(ring), :2] - f.points[centre, :2], axis=1)
        assert np.all((radius > 0.1 * eye_w) & (radius < 0.5 * eye_w))
    assert np.all(np.isfinite(f.head_ypr)) and np.all(np.abs(f.head_ypr) < np.radians(60))
    # Head pose is the shared estimator's: the same points give the same angles.
    from gazeloop.fastpath.headpose import HeadPoseEstimator

    est = HeadPoseEstimator(backend.pose.canonical)
    np.testing.assert_allclose(est.estimate(f.points, f.image_size), f.head_ypr, atol=1e-6)


def test_anchor_centres():
    a = ssd_anchor_centres()
    assert a.shape == (896, 2)
    np.testing.assert_allclose(a[0], (0.5 / 16, 0.5 / 16))  # 16x16 grid, 2 per cell
    np.testing.assert_allclose(a[511], (15.5 / 16, 15.5 / 16))
    np.testing.assert_allclose(a[512], (0.5 / 8, 0.5 / 8))  # then 8x8, 6 per cell
    np.testing.assert_allclose(a[-1], (7.5 / 8, 7.5 / 8))


# -- tracking -----------------------------------------------------------------------------


def test_detector_runs_on_first_frame_and_after_reset_only(backend):
    frames = _video(limit=12)
    backend.reset()
    d0, l0 = backend.detector_runs, backend.landmark_runs
    t = 0
    for i, img in enumerate(frames[:8]):
        assert backend.detect(img, t) is not None, f"frame {i}"
        t += 33_000_000
        assert backend.detector_runs == d0 + 1, f"detector ran again at frame {i}"
    assert backend.landmark_runs == l0 + 8  # one landmark run per frame while tracking
    backend.reset()
    assert backend.detect(frames[8], t) is not None
    assert backend.detector_runs == d0 + 2
    for img in frames[9:]:
        t += 33_000_000
        assert backend.detect(img, t) is not None
    assert backend.detector_runs == d0 + 2


def test_no_face_gives_none_and_a_lost_face_is_detected_again(backend):
    frames = _video(limit=3)
    blank = np.full_like(frames[0], 127)
    noise = np.random.default_rng(0).integers(0, 256, frames[0].shape, dtype=np.uint8)
    backend.reset()
    assert backend.detect(blank, 0) is None
    assert backend.detect(noise, 1) is None
    assert backend.detect(frames[0], 2) is not None  # tracked from here
    d = backend.detector_runs
    assert backend.detect(blank, 3) is None  # tracked ROI fails -> detector on this frame
    assert backend.detector_runs == d + 1
    assert backend.detect(frames[1], 4) is not None  # nothing tracked -> detector again
    assert backend.detector_runs == d + 2
    assert backend.detect(frames[2], 5) is not None
    assert backend.detector_runs == d + 2


def test_a_fresh_detection_is_the_mean_of_seven_crops_and_tracking_is_one(face_task, backend):
    """Stills (and the first frame) average the mesh over 7 nudged crops; frames after it
    run the mesh once. The average sits within the crops' spread of the single crop."""
    frames = _video(limit=3)
    refined = OnnxFaceLandmarker(face_task)
    try:
        single = backend
        single.reset()
        a = single.detect(frames[0], 0)
        l0 = refined.landmark_runs
        b = refined.detect(frames[0], 0)
        assert refined.landmark_runs == l0 + 1 + 7  # the detector's ROI, then the 7 crops
        eye = np.linalg.norm(a.points[33, :2] - a.points[263, :2])
        d = np.linalg.norm(a.points[:, :2] - b.points[:, :2], axis=1)
        assert 0 < np.median(d) < 0.03 * eye
        refined.detect(frames[1], 33_000_000)
        assert refined.landmark_runs == l0 + 9  # tracking: one run
        refined.reset()
        refined.detect(frames[2], 66_000_000)
        assert refined.landmark_runs == l0 + 9 + 8  # fresh again after reset()
    finally:
        refined.close()


def test_make_backend_and_config_know_onnx(face_task):
    from gazeloop.fastpath.pipeline import FastPathConfig

    b = make_backend("onnx", face_task)
    assert b.name == "onnx"
    b.close()
    assert FastPathConfig(landmarks="onnx").landmarks == "onnx"


# -- model files --------------------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_missing_bundle_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "face_landmarker.task"
    with pytest.raises(LandmarkError) as e:
        OnnxFaceLandmarker(missing)
    assert str(missing) in _one_line(e)


def test_corrupt_bundle_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path / "cache"))
    bad = tmp_path / "broken.task"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(FaceOnnxError) as e:
        OnnxFaceLandmarker(bad)
    assert str(bad) in _one_line(e)
    # A zip without the networks, too.
    empty = tmp_path / "empty.task"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("readme.txt", "no models here")
    with pytest.raises(FaceOnnxError) as e:
        OnnxFaceLandmarker(empty)
    assert str(empty) in _one_line(e) and "face_detector.tflite" in str(e.value)


def test_corrupt_onnx_given_explicitly_is_a_one_line_error_naming_it(face_task, tmp_path):
    det, lm = models.resolve_face_onnx(face_task)
    bad = tmp_path / "landmarks.onnx"
    bad.write_bytes(b"\x08\x07 definitely not onnx")
    with pytest.raises(FaceOnnxError) as e:
        OnnxFaceLandmarker(face_task, detector_onnx=det, landmarks_onnx=bad)
    assert str(bad) in _one_line(e)
    with pytest.raises(FaceOnnxError) as e:
        OnnxFaceLandmarker(face_task, detector_onnx=det, landmarks_onnx=tmp_path / "gone.onnx")
    assert "gone.onnx" in _one_line(e)


def test_corrupt_or_stale_cached_onnx_is_rebuilt(face_task, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.ENV_CACHE, str(cache))
    det, lm = models.resolve_face_onnx(face_task)
    assert det.parent == cache and lm.parent == cache
    digest = models.sha256_file(face_task)
    assert models.face_onnx_is_current(lm, digest)
    assert not models.face_onnx_is_current(lm, "0" * 64)
    lm.write_bytes(b"truncated")
    assert not models.face_onnx_is_current(lm, digest)
    det2, lm2 = models.resolve_face_onnx(face_task)
    assert lm2 == lm and models.face_onnx_is_current(lm2, digest)
    with pytest.raises(models.ModelFileError, match="gazeloop models build"):
        monkeypatch.setenv(models.ENV_CACHE, str(tmp_path / "empty-cache"))
        models.resolve_face_onnx(face_task, build=False)


# -- in the fast path -----------------------------------------------------------------------


@pytest.mark.slow
def test_fast_path_with_onnx_landmarks_on_grid9(shared, face_task, gaze_onnx):
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.fastpath.sources import SessionSource

    fp = FastPath(FastPathConfig(landmarks="onnx"))
    try:
        with SessionSource(shared / "data/sessions/grid9", unmirror=True) as src:
            samples = [fp.process(f) for f in src]
    finally:
        fp.close()
    assert len(samples) == 9
    for s in samples:
        assert s.quality.face and s.quality.error is None, s.quality
        assert s.landmarks.points.shape == (478, 3)
        assert np.all(np.isfinite(s.gaze_yp_raw)) and np.all(np.isfinite(s.landmarks.head_ypr))


def test_two_faces_pick_the_nearest(face_task):
    img = cv2.imread(sorted(glob.glob(str(GRID9 / "*.jpg")))[4])
    b = OnnxFaceLandmarker(face_task)
    one = b.detect(img, 0)
    cx, cy = (one.points[:468, :2].min(0) + one.points[:468, :2].max(0)) / 2
    x0, y0 = int(cx) - 350, max(0, int(cy) - 350)
    face = img[y0 : y0 + 700, x0 : x0 + 700]
    canvas = np.zeros((700, 1200, 3), np.uint8)
    canvas[:, 500:] = face
    canvas[100:590, :490] = cv2.resize(face, (490, 490))  # the same person, farther away
    b2 = OnnxFaceLandmarker(face_task, max_faces=2)
    got = b2.detect(canvas, 0)
    assert got is not None and got.faces_seen == 2
    assert got.points[33, 0] > 500  # the larger face, not the small one
    d = b2.detector_runs
    again = b2.detect(canvas, 1)  # both tracked now: no detector
    assert again.faces_seen == 2 and b2.detector_runs == d
