"""The canonical face is read without mediapipe; its values are pinned from mediapipe's own
parse (0.10.21's generated protobuf classes), which is also compared live where installed."""

import zipfile

import cv2
import numpy as np
import pytest

from gazeloop.fastpath.headpose import (
    CanonicalFaceError,
    eye_ray_frame,
    load_canonical_face,
    parse_canonical_face,
    rotation_to_ypr,
    ypr_in_eye_frame,
)

# What mediapipe 0.10.21's GeometryPipelineMetadata parse gives for the shared bundle.
PROCRUSTES_IDS = [4, 6, 10, 33, 54, 67, 117, 119, 121, 127, 129, 132, 133, 136, 143, 147, 198]
PROCRUSTES_IDS += [205, 263, 284, 297, 346, 348, 350, 356, 358, 361, 362, 365, 372, 376, 420]
PROCRUSTES_IDS += [425]


def test_canonical_face_matches_mediapipes_parse(face_task):
    face = load_canonical_face(face_task)
    assert face.ids.tolist() == PROCRUSTES_IDS
    np.testing.assert_allclose(face.points[0], (0.0, -0.46317, 7.58658), atol=1e-5)
    np.testing.assert_allclose(face.points[1], (0.0, 2.473255, 5.788627), atol=1e-5)
    np.testing.assert_allclose(np.abs(face.points).sum(), 338.301618, atol=1e-4)
    np.testing.assert_allclose(face.points.sum(0), (0.0, 37.167493, 92.873282), atol=1e-4)


def test_canonical_face_equals_legacy_mediapipe_where_installed(face_task):
    pb2 = pytest.importorskip(
        "mediapipe.tasks.cc.vision.face_geometry.proto.geometry_pipeline_metadata_pb2",
        reason="mediapipe's generated geometry classes ship only up to 0.10.x",
    )
    with zipfile.ZipFile(face_task) as z:
        raw = z.read("geometry_pipeline_metadata_landmarks.binarypb")
    meta = pb2.GeometryPipelineMetadata()
    meta.ParseFromString(raw)
    verts = np.asarray(meta.canonical_mesh.vertex_buffer, np.float64).reshape(-1, 5)[:, :3]
    ids = np.array([b.landmark_id for b in meta.procrustes_landmark_basis])
    ours = parse_canonical_face(raw)
    np.testing.assert_array_equal(ours.ids, ids)
    np.testing.assert_allclose(ours.points, verts[ids], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "raw, why",
    [(b"", "no canonical mesh"), (b"\x0a\x05\x1a", "truncated"), (b"\x0f", "wire type")],
)
def test_broken_geometry_metadata_is_one_clear_error(tmp_path, raw, why):
    bundle = tmp_path / "broken.task"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("geometry_pipeline_metadata_landmarks.binarypb", raw)
    with pytest.raises(CanonicalFaceError, match=why) as e:
        load_canonical_face(bundle)
    assert str(bundle) in str(e.value) and "\n" not in str(e.value)


def test_a_bundle_without_geometry_names_the_member(tmp_path):
    bundle = tmp_path / "empty.task"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("other", b"x")
    with pytest.raises(CanonicalFaceError, match="geometry_pipeline_metadata_landmarks"):
        load_canonical_face(bundle)


# -- the eyes' ray frame --------------------------------------------------------------------

EYES_MM = np.array([[0.0, 0.0, -600.0], [80.0, 30.0, -650.0], [-150.0, -60.0, -500.0]])


def test_eye_ray_frame_is_the_geometric_mappings_frame():
    from gazeloop.calibration.mapping.geometric import ray_frames

    want = ray_frames(EYES_MM)
    for eye, frame in zip(EYES_MM, want, strict=True):
        got = eye_ray_frame(eye)
        np.testing.assert_allclose(got, frame, atol=1e-12)
        np.testing.assert_allclose(got @ got.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(got[2], -eye / np.linalg.norm(eye), atol=1e-12)


def _look_along(direction_cv: np.ndarray) -> np.ndarray:
    """A head rotation (canonical face -> OpenCV camera axes) whose face looks along
    `direction_cv`, its up as close to the camera's up as it can be. The canonical face's z
    points out of the face and its y up; a frontal face is diag(1, -1, -1)."""
    z = direction_cv / np.linalg.norm(direction_cv)
    up = np.array([0.0, -1.0, 0.0])
    y = up - (up @ z) * z
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z], axis=1)


def test_a_face_looking_back_along_its_ray_has_zero_pose_in_the_eye_frame():
    for eye in EYES_MM:
        eye_cv = eye * np.array([1.0, -1.0, -1.0])
        r = _look_along(-eye_cv)  # from the eyes back to the camera
        ypr = ypr_in_eye_frame(r, eye)
        np.testing.assert_allclose(ypr[:2], 0.0, atol=1e-9)
        if eye[0] != 0:  # the same face in camera axes is turned toward the centre
            assert np.sign(rotation_to_ypr(r)[0]) == -np.sign(eye[0])


def test_the_eye_frame_is_the_camera_frame_on_the_optical_axis():
    rng = np.random.default_rng(0)
    for _ in range(5):
        r, _ = cv2.Rodrigues(rng.normal(0, 0.3, 3))
        r = r @ np.diag([1.0, -1.0, -1.0])
        np.testing.assert_allclose(ypr_in_eye_frame(r, EYES_MM[0]), rotation_to_ypr(r), atol=1e-12)
