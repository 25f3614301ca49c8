"""The fast path on real frames: faces found, signs pinned, bad input flagged."""

from __future__ import annotations

import importlib.util
import logging
import math

import cv2
import numpy as np
import pytest

from gazeloop.fastpath.features import RIGHT_EYE, aligned_crop, eye_features
from gazeloop.fastpath.gaze_model import ModelLoadError
from gazeloop.fastpath.models import ModelFileError
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.sources import ImageSource, SessionSource, VideoSource
from gazeloop.fastpath.types import Frame


@pytest.fixture(scope="module")
def fp(face_task, gaze_onnx):
    f = FastPath(FastPathConfig())
    yield f
    f.close()


@pytest.fixture(scope="module")
def grid9(shared, fp):
    """(frame, sample) for each grid9 frame, un-mirrored, in session order."""
    fp.reset()
    with SessionSource(shared / "data/sessions/grid9", unmirror=True) as src:
        return [(f, fp.process(f)) for f in src]


def _fresh(fp: FastPath, image: np.ndarray):
    fp.reset()
    return fp.process(Frame(t_ns=0, image=image, index=0))


def test_face_on_all_nine_grid_frames(grid9):
    assert len(grid9) == 9
    assert all(s.quality.face and s.quality.error is None for _, s in grid9)
    assert all(s.features.left.crop.shape == (60, 60, 3) for _, s in grid9)


@pytest.mark.slow
def test_face_on_at_least_70_of_74_video_frames(shared, fp):
    fp.reset()
    with VideoSource(shared / "data/video-corners4/calibrate.mp4") as src:
        samples = [fp.process(f) for f in src]
    assert len(samples) == 74
    assert sum(s.quality.face for s in samples) >= 70
    # Source times, not the wall clock: strictly increasing at the video's 20 fps.
    t = np.array([s.t_ns for s in samples])
    assert np.all(np.diff(t) > 0)
    assert np.median(np.diff(t)) == pytest.approx(50e6, rel=0.05)


def test_same_input_same_output(shared, fp):
    def run():
        fp.reset()
        with VideoSource(shared / "data/video-corners4/calibrate.mp4", max_frames=20) as src:
            return np.array([fp.process(f).gaze_yp for f in src])

    np.testing.assert_array_equal(run(), run())


def test_eyes_closed_frame_is_flagged_and_empty_room_has_no_face(shared, fp):
    # `no_face.jpg` does show a person, eyes closed (the shared README calls it an empty
    # room): it must come out flagged as a blink with no gaze. Its upper-left part, the
    # room alone, must come out with no face at all.
    fp.reset()
    with ImageSource([shared / "data/video-corners4/no_face.jpg"]) as src:
        (frame,) = list(src)
    s = fp.process(frame)
    assert s.quality.face and s.quality.blink and not s.quality.usable
    assert s.gaze_yp is None and s.quality.confidence == 0.0
    room = _fresh(fp, np.ascontiguousarray(frame.image[:360, :560]))
    assert not room.quality.face and room.gaze_yp is None and room.quality.error is None


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(x, y, 1)[0])


def test_horizontal_flip_flips_yaw_signs_and_keeps_pitch(grid9, fp):
    """Mirroring the frame negates head yaw, the horizontal iris offset and gaze yaw, and
    leaves pitch alone: this pins the (yaw, pitch) order as well as the signs. Neither
    MediaPipe nor the gaze network is exactly mirror-symmetric (each has a small bias), so
    the test regresses mirrored against original values over the nine frames."""
    head, head_m, gaze, gaze_m, iris, iris_m = [], [], [], [], [], []
    for frame, s in grid9:
        m = _fresh(fp, np.ascontiguousarray(frame.image[:, ::-1]))
        assert m.quality.face
        head.append(s.landmarks.head_ypr)
        head_m.append(m.landmarks.head_ypr)
        gaze.append(s.gaze_yp_raw)
        gaze_m.append(m.gaze_yp_raw)
        iris.append(s.features.left.iris_offset[0] + s.features.right.iris_offset[0])
        iris_m.append(m.features.left.iris_offset[0] + m.features.right.iris_offset[0])
    head, head_m, gaze, gaze_m = map(np.array, (head, head_m, gaze, gaze_m))
    assert -1.3 < _slope(head[:, 0], head_m[:, 0]) < -0.7
    # Head pitch barely varies over grid9 (about 2°, each still detected afresh), too little
    # for a slope: mirroring must leave it where it was, within the detector's own noise.
    assert np.median(np.abs(head[:, 1] - head_m[:, 1])) < math.radians(2)
    assert -1.4 < _slope(gaze[:, 0], gaze_m[:, 0]) < -0.7
    assert 0.7 < _slope(gaze[:, 1], gaze_m[:, 1]) < 1.3
    # Frames looking clearly sideways flip the sign outright.
    big = np.abs(gaze[:, 0]) > math.radians(10)
    assert big.sum() >= 3 and np.all(np.sign(gaze_m[big, 0]) == -np.sign(gaze[big, 0]))
    assert np.corrcoef(iris, iris_m)[0, 1] < -0.5


def test_gaze_follows_the_screen_targets(grid9):
    """Known images: in an un-mirrored frame, looking at the screen's left means looking
    toward image right (yaw > 0), and lower targets mean lower pitch."""
    xy = np.array([f.label_px for f, _ in grid9])
    yp = np.array([s.gaze_yp_raw for _, s in grid9])
    assert np.corrcoef(xy[:, 0], yp[:, 0])[0, 1] < -0.8
    assert np.corrcoef(xy[:, 1], yp[:, 1])[0, 1] < -0.8
    # ...and not the other way round (swapped yaw/pitch would correlate across).
    assert abs(np.corrcoef(xy[:, 0], yp[:, 1])[0, 1]) < 0.5


def test_crop_at_frame_edge_is_padded_and_flagged(grid9, fp):
    frame, s = grid9[4]
    # Cut the frame just right of the person's left eye (image right) so its crop overhangs.
    eye = s.features.left
    cut = int(eye.centre_px[0] + 0.5 * eye.width_px)
    m = _fresh(fp, np.ascontiguousarray(frame.image[:, :cut]))
    assert m.quality.face and m.quality.crop_clipped
    assert m.features.left.crop.shape == (60, 60, 3)
    assert m.quality.confidence < s.quality.confidence


def test_two_faces_pick_the_nearest(grid9, face_task, gaze_onnx):
    frame, s = grid9[4]
    cx, cy = (s.landmarks.points[:468, :2].min(0) + s.landmarks.points[:468, :2].max(0)) / 2
    x0, y0 = int(cx) - 350, max(0, int(cy) - 350)
    face = frame.image[y0 : y0 + 700, x0 : x0 + 700]
    small = cv2.resize(face, (490, 490))  # the same person, farther away
    canvas = np.zeros((700, 1200, 3), np.uint8)
    canvas[:, 500:] = face
    canvas[100:590, :490] = small
    fp2 = FastPath(FastPathConfig(max_faces=2))
    try:
        got = fp2.process(Frame(0, canvas, 0))
    finally:
        fp2.close()
    assert got.quality.face and got.quality.faces_seen == 2
    assert got.landmarks.points[33, 0] > 500  # the larger face, not the small one


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((480, 640), np.uint8),
        np.zeros((480, 640, 3), np.float32),
        np.full((480, 640, 3), 255, np.uint8),
    ],
    ids=["empty", "gray", "float", "white"],
)
def test_bad_images_flag_never_raise(fp, image):
    s = _fresh(fp, image)
    assert not s.quality.usable and s.gaze_yp is None


def test_nan_from_a_stage_is_flagged(grid9, fp, monkeypatch):
    frame, _ = grid9[0]
    real = fp.landmarks.pose.estimate
    monkeypatch.setattr(fp.landmarks.pose, "estimate", lambda *a: real(*a) * np.nan)
    s = _fresh(fp, frame.image)
    assert s.quality.face and s.quality.error and "not finite" in s.quality.error
    assert s.gaze_yp is None


def test_closed_eye_sets_blink():
    pts = np.zeros((478, 3), np.float32)
    pts[33, :2], pts[133, :2] = (100, 100), (140, 100)
    pts[468, :2] = (120, 100)
    for u, lo in RIGHT_EYE.lids:  # lids 1 px apart on a 40 px eye: closed
        pts[u, :2], pts[lo, :2] = (120, 99.5), (120, 100.5)
    img = np.zeros((200, 200, 3), np.uint8)
    e = eye_features(pts, RIGHT_EYE, 0.0, img)
    assert e.blink and e.aperture == pytest.approx(1 / 40)
    for u, lo in RIGHT_EYE.lids:  # 12 px apart: open
        pts[u, :2], pts[lo, :2] = (120, 94), (120, 106)
    assert not eye_features(pts, RIGHT_EYE, 0.0, img).blink


def test_aligned_crop_rotates_eye_line_to_horizontal():
    img = np.zeros((200, 200, 3), np.uint8)
    roll = math.radians(30)
    c = np.array([100.0, 100.0])
    d = 20 * np.array([math.cos(roll), math.sin(roll)])
    cv2.circle(img, tuple(int(v) for v in c + d), 4, (255, 255, 255), -1)
    crop, clipped = aligned_crop(img, c, 60.0, roll)
    ys, xs = np.nonzero(crop[:, :, 0] > 128)
    assert not clipped
    assert xs.mean() == pytest.approx(29.5 + 20, abs=1.5)  # on the horizontal line, right
    assert ys.mean() == pytest.approx(29.5, abs=1.5)


def test_missing_or_corrupt_models_fail_before_the_first_frame(tmp_path, shared):
    with pytest.raises(ModelFileError, match="not found"):
        FastPath(FastPathConfig(face_model=tmp_path / "none.task"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        FastPath(FastPathConfig(gaze_model=bad))


# The optional legacy FaceMesh (mediapipe 0.10.21, the `legacy` extra); the suite runs on the
# maintained MediaPipe, where these skip.
def _has_legacy_facemesh() -> bool:
    try:
        return importlib.util.find_spec("mediapipe.python.solutions.face_mesh") is not None
    except ImportError:  # no mediapipe, or a mediapipe without the python solutions
        return False


needs_legacy = pytest.mark.skipif(
    not _has_legacy_facemesh(),
    reason="the legacy FaceMesh needs mediapipe 0.10.21 (the `legacy` extra)",
)


@needs_legacy
def test_lean_facemesh_call_matches_the_public_process(shared, face_task):
    """The legacy backend skips SolutionBase.process overhead; its landmarks must be the
    very numbers the public API gives on the same frames."""
    from gazeloop.fastpath.landmarks import LegacyFaceMesh

    lean = LegacyFaceMesh(face_task)
    public = LegacyFaceMesh(face_task)
    assert lean._lean is not None  # mediapipe 0.10.21 internals are there
    public._lean = None
    try:
        with VideoSource(shared / "data/video-corners4/calibrate.mp4", max_frames=12) as src:
            pairs = [(lean.detect(f.image, f.t_ns), public.detect(f.image, f.t_ns)) for f in src]
    finally:
        lean.close()
        public.close()
    assert sum(a is not None for a, _ in pairs) >= 10
    for a, b in pairs:
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a.points, b.points)
            np.testing.assert_allclose(a.head_ypr, b.head_ypr, atol=1e-9)


@needs_legacy
def test_landmark_bytes_parser_reads_records_and_falls_back_to_protobuf():
    from mediapipe.framework.formats import landmark_pb2

    from gazeloop.fastpath.landmarks import parse_landmark_list

    msg = landmark_pb2.NormalizedLandmarkList()
    for i in range(5):
        msg.landmark.add(x=0.1 * i, y=-0.5 + i, z=0.0 if i == 2 else 1e-3 * i)
    want = np.array([(p.x, p.y, p.z) for p in msg.landmark], np.float32)
    np.testing.assert_array_equal(parse_landmark_list(msg.SerializeToString()), want)
    # A landmark with an extra field breaks the fixed record layout: protobuf reads it.
    msg.landmark[3].visibility = 0.7
    np.testing.assert_array_equal(parse_landmark_list(msg.SerializeToString()), want)
    assert parse_landmark_list(b"").shape == (0, 3)


def test_independent_stills_are_detected_afresh_not_tracked(shared, face_task, gaze_onnx):
    """Issue 12, cause 2 (and issue 16's no_face.jpg): a still seconds after the last frame
    is seen as it would be alone, whatever came before; a stream keeps tracking."""
    img = cv2.imread(str(shared / "data/video-corners4/no_face.jpg"))
    alone = FastPath(FastPathConfig())
    a = alone.process(Frame(t_ns=0, image=img, index=0))
    after = FastPath(FastPathConfig())
    with SessionSource(shared / "data/sessions/grid9", unmirror=True) as src:
        t = max(after.process(f).t_ns for f in src)
    b = after.process(Frame(t_ns=t + 5_000_000_000, image=img, index=9))
    assert (b.quality.face, b.quality.blink) == (a.quality.face, a.quality.blink)
    if a.landmarks is not None:
        assert np.abs(b.landmarks.points - a.landmarks.points).max() < 1e-3

    resets = []
    stream = FastPath(FastPathConfig())
    stream.landmarks.reset = lambda: resets.append(1)  # count, keep the tracked face
    for i in range(5):  # 30 fps: one stream
        stream.process(Frame(t_ns=i * 33_000_000, image=img, index=i))
    assert resets == []
    stream.process(Frame(t_ns=2 * 10**9, image=img, index=5))  # a 1.9 s gap: a new still
    stream.process(Frame(t_ns=10**9, image=img, index=6))  # back in time: a new still
    assert len(resets) == 2
    for f in (alone, after, stream):
        f.close()


def _shifted(image: np.ndarray, du: float) -> np.ndarray:
    """The image moved right by `du` of its width: the scene turned about the camera, so
    the eye crops are the same pictures (see `calibration.metrics.head_shift`)."""
    h, w = image.shape[:2]
    m = np.float32([[1, 0, du * w], [0, 1, 0]])
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.slow
def test_a_face_moved_in_the_image_keeps_its_ray_frame_gaze(grid9, fp):
    """Told the head pose in the eyes' ray frame (the default), the gaze network gives the
    same answer for the same eyes anywhere in the image; told the camera-axes pose, its
    answer leans by about 3 degrees for an 8 % sideways move (51 px)."""
    assert fp.cfg.gaze_frame == "ray"
    camera = FastPath(FastPathConfig(gaze_frame="camera"))
    try:
        for frame, _ in grid9[:3]:
            for path, most, least in ((fp, 1.0, 0.0), (camera, 90.0, 2.0)):
                yaw = [
                    math.degrees(_fresh(path, _shifted(frame.image, du)).gaze_yp_raw[0])
                    for du in (-0.08, 0.0, 0.08)
                ]
                moved = max(abs(yaw[0] - yaw[1]), abs(yaw[2] - yaw[1]))
                assert least < moved < most, (path.cfg.gaze_frame, yaw)
    finally:
        camera.close()


def test_a_configured_focal_length_reaches_the_eye_position(grid9, face_task, gaze_onnx):
    """Head pose and the eyes' position in mm must use the same camera: with `focal_px`
    set, the depth scales with it (x and y in mm do not depend on it)."""
    frame, base = grid9[4]
    w = frame.image.shape[1]
    fp = FastPath(FastPathConfig(focal_px=2.0 * w))
    try:
        s = _fresh(fp, frame.image)
    finally:
        fp.close()
    ours, default = s.features.eye_mm, base.features.eye_mm
    assert ours[2] == pytest.approx(2.0 * default[2], rel=0.05)
    assert ours[:2] == pytest.approx(default[:2], rel=0.05, abs=2.0)


def test_gaze_in_the_eyes_ray_frame():
    """On the camera's axis the ray frame is the camera's; off it, a gaze straight back at
    the camera is (0, 0) in the ray frame whatever the camera-axes angles."""
    from gazeloop.fastpath.gaze_model import vector_to_yaw_pitch
    from gazeloop.fastpath.types import gaze_in_eye_frame

    v = np.array([np.sin(0.2) * np.cos(0.1), np.sin(0.1), np.cos(0.2) * np.cos(0.1)])
    on_axis = gaze_in_eye_frame(v, np.array([0.0, 0.0, -600.0]))
    assert np.allclose(on_axis, vector_to_yaw_pitch(v))
    eye = np.array([150.0, -80.0, -550.0])
    back = -eye / np.linalg.norm(eye)
    assert np.allclose(gaze_in_eye_frame(back, eye), [0.0, 0.0], atol=1e-12)
    assert np.abs(vector_to_yaw_pitch(back)).min() > 0.1  # not zero in camera axes
    assert gaze_in_eye_frame(None, eye) is None
    assert gaze_in_eye_frame(back, np.array([np.nan, 0.0, -500.0])) is None


def test_the_features_a_frame_offers_are_those_a_profile_may_name(grid9):
    from gazeloop.calibration.profile import FEATURE_NAMES

    for _, s in grid9:
        named = sorted(n for n in s.feature_dict() if not n.startswith("emb_"))
        assert named == sorted(FEATURE_NAMES)


def test_every_frame_with_a_gaze_has_its_ray_frame_angles(grid9):
    """Told the ray-frame pose (the default), the network's own angles are the ray-frame
    ones; told the camera-axes pose, they are its vector turned into the eyes' frame."""
    from gazeloop.fastpath.types import gaze_in_eye_frame

    for _, s in grid9:
        d = s.feature_dict()
        assert s.head_frame == "ray"
        assert (d["gaze_ray_yaw"], d["gaze_ray_pitch"]) == (d["gaze_yaw"], d["gaze_pitch"])
        s.head_frame = "camera"  # the shared fixture's sample: put back below
        d = s.feature_dict()
        s.head_frame = "ray"
        want = gaze_in_eye_frame(s.gaze_vector, s.features.eye_mm)
        assert np.allclose([d["gaze_ray_yaw"], d["gaze_ray_pitch"]], want, atol=1e-12)
        assert abs(d["gaze_ray_yaw"] - d["gaze_yaw"]) > 1e-4  # the head is off the axis


def test_ray_frame_angles_are_the_eye_ray_frame_turned_vector():
    from gazeloop.fastpath.gaze_model import vector_to_yaw_pitch
    from gazeloop.fastpath.headpose import eye_ray_frame
    from gazeloop.fastpath.types import gaze_in_eye_frame

    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.normal(size=3)
        eye = np.r_[rng.normal(scale=100, size=2), -rng.uniform(300, 900)]
        want = vector_to_yaw_pitch(eye_ray_frame(eye) @ v)
        assert np.allclose(gaze_in_eye_frame(v, eye), want, atol=1e-12)


def test_a_failure_on_every_frame_is_warned_about_once(grid9, fp, caplog):
    """A profile naming a feature no frame offers failed every frame at debug level only:
    a live run showed no cursor and said nothing."""

    def needs_a_feature_no_frame_has(sample):
        return sample.feature_dict()["bogus"]

    frames = [f for f, _ in grid9[:4]]
    fp.reset()
    fp.mapper, before = needs_a_feature_no_frame_has, fp.mapper
    try:
        with caplog.at_level(logging.WARNING, logger="gazeloop.fastpath.pipeline"):
            samples = [fp.process(f) for f in frames]
    finally:
        fp.mapper = before
    assert all(s.quality.error == "KeyError: 'bogus'" for s in samples)
    (said,) = [r.getMessage() for r in caplog.records]
    assert "KeyError: 'bogus'" in said


class _Recording:
    """A filter of one's own: passes samples through and says what it was asked."""

    def __init__(self):
        self.calls, self.resets = [], 0

    def __call__(self, t_ns, x):
        self.calls.append(t_ns)
        return np.array(x, dtype=float)

    def reset(self):
        self.resets += 1

    def hold(self):
        pass


def test_a_filter_object_passed_in_is_the_one_that_runs(shared, face_task, gaze_onnx):
    """Strategies are objects (norfair's filter factories): the fast path runs the filter it
    is given, every sample through it; a name is the shortcut, the config the default."""
    own = _Recording()
    fp = FastPath(FastPathConfig(filter="kalman"), filter=own)
    try:
        assert fp.filter is own and own.resets == 1  # restarted once, with no mapping yet
        with VideoSource(shared / "data/video-corners4/calibrate.mp4") as src:
            samples = [fp.process(f) for _, f in zip(range(12), src, strict=False)]
        faced = [s for s in samples if s.gaze_yp is not None]
        assert len(faced) >= 10 and own.calls == [s.t_ns for s in faced]
    finally:
        fp.close()
    named = FastPath(FastPathConfig(filter="kalman"), filter="none")
    try:
        assert type(named.filter).__name__ == "NoFilter"
    finally:
        named.close()


def test_something_that_is_not_a_filter_is_refused_before_the_models_load(tmp_path):
    cfg = FastPathConfig(face_model=tmp_path / "absent.task")  # would fail on loading
    with pytest.raises(TypeError, match="filter: int is not a Filter"):
        FastPath(cfg, filter=3)
    from gazeloop.fastpath.filters import OneEuroFilter

    with pytest.raises(TypeError, match="filter: type is not a Filter"):  # the class, not one
        FastPath(cfg, filter=OneEuroFilter)


def test_a_point_past_the_screens_edge_is_shown_clipped_and_kept_where_it_is(grid9, fp):
    """The cursor stays on the screen; the History (the drift loop, the click rules) gets
    the filtered point where it is."""
    frames = [f for f, _ in grid9[:3]]
    fp.reset()
    fp.mapper, before = (lambda sample: np.array([0.4, 1.3])), fp.mapper
    try:
        samples = [fp.process(f) for f in frames]
    finally:
        fp.mapper = before
    s = samples[-1]
    assert s.quality.usable
    assert np.allclose(s.screen_xy, [0.4, 1.0]) and np.allclose(s.screen_xy_unclipped, [0.4, 1.3])


def test_the_read_names_the_eye_squares_when_they_are_not_the_networks_own(fp, face_task):
    """A profile records the fast path's read; the crop framing was not part of it, so a
    profile fitted on other eye squares was applied without a word (`calibration.profile`)."""
    assert fp.gaze.read == "ray:mirror_average"
    other = FastPath(FastPathConfig(crop_scale=1.5))
    try:
        assert other.gaze.read == "ray:mirror_average@crop1.5"
    finally:
        other.close()
