"""The Moondream oracle without Moondream: a fake with the real API's shape (revision
2025-04-14, see oracle/moondream.py), canned answers, and the loader's failure paths driven
through fake modules. No torch, no transformers, no network."""

from __future__ import annotations

import copy
import math
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import LineObservation, OracleLabel, Snapshot
from gazeloop.oracle.base import Oracle, OracleCancelled, OracleError, check_label
from gazeloop.oracle.moondream import (
    MoondreamConfig,
    MoondreamOracle,
    bgr_to_rgb,
    commit_from_snapshot_path,
    load_moondream,
    revision_dtype,
    to_model_image,
)
from gazeloop.oracle.moondream_parse import NO_CAMERA, observation_from_answers, query_eye

try:
    from PIL import Image as PILImage
except ImportError:  # pillow is an [oracle] extra; everything but the PIL check runs without
    PILImage = None


@pytest.fixture(autouse=True)
def _numpy_images_without_pillow(monkeypatch):
    if PILImage is None:
        monkeypatch.setattr("gazeloop.oracle.moondream.to_model_image", bgr_to_rgb)


# A 15.6" 16:9 panel with the webcam centred 8 mm above the visible area.
SCREEN = ScreenGeometry(px=(1920, 1080), mm=(345.6, 194.4), camera_mm=(172.8, -8.0))
CAM = (0.5, -8.0 / 194.4)
W, H = 640, 480
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def snapshot(**kw: Any) -> Snapshot:
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = 10  # B
    image[..., 2] = 200  # R: the conversion must move this to channel 0
    base: dict[str, Any] = dict(
        t_ns=123_000_000,
        image=image,
        snapshot_id="s1",
        eye_px=(320.0, 200.0),  # normalised (0.5, 0.41667)
        pupils_px=((290.0, 200.0), (350.0, 200.0)),
    )
    base.update(kw)
    return Snapshot(**base)


EYE = (320 / W, 200 / H)
FACE = {"x_min": 0.4, "y_min": 0.25, "x_max": 0.6, "y_max": 0.65}  # 128 px wide
PUPILS = {"points": [{"x": 290 / W, "y": 200 / H}, {"x": 350 / W, "y": 200 / H}]}


def answers(**kw: Any) -> dict[str, Any]:
    """A screen-facing user: no gaze in the frame; forced target 256 px to image right."""
    a: dict[str, Any] = {
        "pupils": copy.deepcopy(PUPILS),
        "faces": {"objects": [dict(FACE)]},
        "eye": EYE,
        "gaze": {"gaze": None},
        "gaze_forced": {"gaze": {"x": EYE[0] + 0.4, "y": EYE[1]}},
    }
    a.update(kw)
    return a


def parse(a: Any, snap: Snapshot | None = None, screen=SCREEN, cam=CAM):
    return observation_from_answers(a, snap or snapshot(), screen, cam)


# --- the fake model -----------------------------------------------------------------------


@dataclass(frozen=True)
class FakeEncodedImage:
    """Like moondream's EncodedImage: a position and per-layer KV caches."""

    pos: int
    caches: list = field(default_factory=list)


class FakeMoondream:
    """HfMoondream at 2025-04-14, as far as the oracle can tell: same method names and
    arguments, same return shapes. Like the real one, each skill runs `encode_image` on its
    argument, which returns an EncodedImage unchanged and re-encodes a PIL image (so passing
    the picture instead of the encoding shows up as a second encode)."""

    def __init__(self, replies: dict[str, Any], hooks: dict[str, Any] | None = None) -> None:
        self.replies = replies
        self.hooks = hooks or {}
        self.encodes: list[np.ndarray] = []
        self.encodings: list[FakeEncodedImage] = []
        self.calls: list[tuple[str, bool, Any]] = []  # (method, got the encoding?, arg)

    def encode_image(self, image: Any) -> FakeEncodedImage:
        if isinstance(image, FakeEncodedImage):
            return image
        # The real one takes PIL only; numpy stands in when pillow is not installed.
        if not isinstance(image, PILImage.Image if PILImage else np.ndarray):
            raise ValueError("image must be a PIL Image or EncodedImage")
        self.encodes.append(np.asarray(image).copy())
        enc = FakeEncodedImage(pos=730 + len(self.encodes))
        self.encodings.append(enc)
        return enc

    def _skill(self, name: str, image: Any, arg: Any) -> Any:
        got_encoding = isinstance(image, FakeEncodedImage) and image is self.encodings[-1]
        self.encode_image(image)
        self.calls.append((name, got_encoding, arg))
        if name in self.hooks:
            self.hooks[name]()
        reply = self.replies[name]
        if isinstance(reply, Exception):
            raise reply
        return copy.deepcopy(reply)

    def point(self, image: Any, object: str, settings: dict | None = None) -> dict:
        return self._skill("point", image, object)

    def detect(self, image: Any, object: str, settings: dict | None = None) -> dict:
        return self._skill("detect", image, object)

    def detect_gaze(
        self,
        image: Any,
        eye: tuple[float, float] | None = None,
        face: dict[str, float] | None = None,
        unstable_settings: dict[str, Any] = {},  # noqa: B006 - upstream's exact signature
    ) -> dict:
        if eye is None:
            raise ValueError("eye must be provided when prioritize_accuracy=False")
        forced = bool(unstable_settings.get("force_detect", False))
        return self._skill("detect_gaze_forced" if forced else "detect_gaze", image, eye)


def fake_for(a: dict[str, Any], hooks: dict[str, Any] | None = None) -> FakeMoondream:
    return FakeMoondream(
        {
            "point": a["pupils"],
            "detect": a["faces"],
            "detect_gaze": a["gaze"],
            "detect_gaze_forced": a["gaze_forced"],
        },
        hooks,
    )


def oracle_for(model: Any, screen: ScreenGeometry = SCREEN, **kw: Any) -> MoondreamOracle:
    return MoondreamOracle(model, MoondreamConfig(code_commit=COMMIT), screen, **kw)


# --- parsing: the geometry ------------------------------------------------------------------


def test_target_to_image_right_is_a_ray_toward_screen_left_from_the_camera():
    obs, in_frame, conf, details = parse(answers())
    assert isinstance(obs, LineObservation)
    assert in_frame is False
    np.testing.assert_allclose(obs.origin, CAM)
    np.testing.assert_allclose(obs.direction, (-1.0, 0.0), atol=1e-12)
    assert conf == 1.0
    assert details["target_face_widths"] == pytest.approx(2.0)  # 256 px / 128 px
    assert details["pupils"].startswith("agree")


def test_mirror_sanity_target_to_image_left_and_down_is_screen_right_and_down():
    a = answers(gaze_forced={"gaze": {"x": EYE[0] - 0.3, "y": EYE[1] + 0.3}})
    obs, *_ = parse(a)
    assert obs.direction[0] > 0 and obs.direction[1] > 0


def test_direction_uses_square_pixels_and_the_screens_physical_aspect():
    # 0.4 of the width and 0.4 of the height are 256 px and 192 px: a 4:3 step in the image,
    # which in mm on the screen must stay 4:3 (mirrored in x), whatever the screen's px.
    a = answers(gaze_forced={"gaze": {"x": EYE[0] + 0.4, "y": EYE[1] + 0.4}})
    obs, *_ = parse(a)
    d_mm = np.array(obs.direction) * SCREEN.mm
    np.testing.assert_allclose(d_mm / np.linalg.norm(d_mm), (-0.8, 0.6), atol=1e-12)


def _project(p_mm: np.ndarray, cam_mm: np.ndarray, f: float = 500.0) -> tuple[float, float]:
    """A pinhole webcam in the screen plane, looking at the user (screen frame: x right,
    y down, z toward the user), un-mirrored: the user's left (screen −x) is image right."""
    d = p_mm - cam_mm
    u = W / 2 + f * (-d[0]) / d[2]
    v = H / 2 + f * d[1] / d[2]
    return (u / W, v / H)


@pytest.mark.parametrize("screen_pt", [(50.0, 120.0), (300.0, 20.0), (172.8, 180.0)])
def test_the_line_passes_through_the_true_screen_point_of_a_simulated_gaze(screen_pt):
    cam = np.array([172.8, -8.0, 0.0])
    eye = np.array([200.0, 60.0, 550.0])
    target_on_screen = np.array([*screen_pt, 0.0])
    # Gaze following names a point along the ray that is still inside the picture.
    along_ray = eye + 0.3 * (target_on_screen - eye)
    e, t = _project(eye, cam), _project(along_ray, cam)
    assert all(0 < c < 1 for c in (*e, *t))
    snap = snapshot(eye_px=(e[0] * W, e[1] * H), pupils_px=None)
    faces = {
        "objects": [
            {"x_min": e[0] - 0.1, "y_min": e[1] - 0.2, "x_max": e[0] + 0.1, "y_max": e[1] + 0.2}
        ]
    }
    a = answers(eye=e, faces=faces, gaze_forced={"gaze": {"x": t[0], "y": t[1]}})
    obs, _, conf, _ = parse(a, snap)
    s = np.array(SCREEN.mm_to_norm(screen_pt))
    rel = s - np.array(obs.origin)
    cross = obs.direction[0] * rel[1] - obs.direction[1] * rel[0]
    assert abs(cross) < 1e-9 and float(np.dot(obs.direction, rel)) > 0
    assert 0.0 < conf <= 1.0  # a short eye→target reach may lower it; the line is exact


def test_without_mm_an_explicit_camera_position_and_pixel_aspect_are_used():
    screen = ScreenGeometry(px=(1600, 900))
    a = answers(gaze_forced={"gaze": {"x": EYE[0] + 0.4, "y": EYE[1] + 0.4}})
    obs, *_ = parse(a, screen=screen, cam=(0.5, -0.02))
    d_px = np.array(obs.direction) * screen.px
    np.testing.assert_allclose(d_px / np.linalg.norm(d_px), (-0.8, 0.6), atol=1e-12)
    assert obs.origin == (0.5, -0.02)


def test_camera_position_unknown_means_no_observation_and_says_why():
    obs, in_frame, conf, details = parse(answers(), cam=None)
    assert (obs, in_frame, conf) == (None, False, 0.0)
    assert details["reason"] == NO_CAMERA
    screen = ScreenGeometry(px=(1920, 1080), mm=(345.6, 194.4))  # no camera_mm
    label = oracle_for(fake_for(answers()), screen).label(snapshot(), threading.Event())
    assert label.observation is None and label.details["reason"] == NO_CAMERA


# --- parsing: what the answers say about confidence -----------------------------------------


def test_gaze_inside_the_frame_means_looking_at_the_room_not_the_screen():
    obs, in_frame, conf, details = parse(answers(gaze={"gaze": {"x": 0.2, "y": 0.8}}))
    assert (obs, in_frame, conf) == (None, True, 0.0)
    assert details["gaze_in_frame"] == (0.2, 0.8)


def test_forced_gaze_none_as_in_later_revisions_gives_no_observation():
    obs, in_frame, conf, details = parse(answers(gaze_forced={"gaze": None}))
    assert (obs, in_frame, conf) == (None, False, 0.0)
    assert "no target" in details["reason"]


def test_nan_in_the_forced_target_is_rejected():
    obs, _, conf, details = parse(answers(gaze_forced={"gaze": {"x": math.nan, "y": 0.5}}))
    assert obs is None and conf == 0.0
    assert "forced gaze unusable" in details["reason"]
    assert details["answers"]["gaze_forced"]["gaze"]["x"] == "nan"  # stored, JSON-safe


@pytest.mark.parametrize("plain", [{"gaze": {"x": math.nan, "y": 0.1}}, "looking left", None])
def test_an_unusable_plain_gaze_leaves_in_frame_unknown_and_halves_confidence(plain):
    obs, in_frame, conf, details = parse(answers(gaze=plain))
    assert isinstance(obs, LineObservation)
    assert in_frame is None and conf == pytest.approx(0.5)
    assert details["factors"] == {"in_frame_unknown": 0.5}


@pytest.mark.parametrize(
    "objects",
    [
        [],
        [{"x_min": -3.0, "y_min": 0.2, "x_max": -2.0, "y_max": 0.6}],  # far off the image
        [{"x_min": 0.6, "y_min": 0.2, "x_max": 0.4, "y_max": 0.6}],  # inside out
        [{"x_min": 0.4, "y_min": 0.2, "x_max": 0.6, "y_max": math.inf}],
        [{"x_min": "0.4", "y_min": 0.2, "x_max": 0.6, "y_max": 0.6}],
    ],
)
def test_no_usable_face_means_no_observation(objects):
    obs, in_frame, conf, details = parse(answers(faces={"objects": objects}))
    assert (obs, conf) == (None, 0.0)
    assert in_frame is False  # the plain gaze answer was still understood
    assert "no face" in details["reason"]


def test_a_face_box_poking_slightly_out_of_the_image_is_clipped_not_dropped():
    faces = {"objects": [{"x_min": 0.4, "y_min": -0.1, "x_max": 0.6, "y_max": 0.65}]}
    obs, _, conf, details = parse(answers(faces=faces))
    assert isinstance(obs, LineObservation) and conf == 1.0
    assert "faces_dropped" not in details


def test_eye_outside_every_face_box_halves_confidence():
    faces = {"objects": [{"x_min": 0.0, "y_min": 0.0, "x_max": 0.2, "y_max": 0.3}]}
    obs, _, conf, details = parse(answers(faces=faces))
    assert isinstance(obs, LineObservation)
    assert details["factors"]["eye_outside_face"] == 0.5
    assert conf == pytest.approx(0.5)


def test_no_pupils_from_moondream_lowers_confidence():
    obs, _, conf, details = parse(answers(pupils={"points": []}))
    assert isinstance(obs, LineObservation)
    assert conf == pytest.approx(0.7) and details["pupils"] == "Moondream found no pupil"


def test_pupils_that_disagree_with_the_snapshot_lower_confidence_linearly():
    # Both Moondream pupils 37.5 px below the snapshot's: 0.625 IPD (60 px) off, halfway
    # between "agree" (0.25) and "another face" (1.0) → 1 − 0.5 · 0.75 = 0.625.
    dy = 37.5 / H
    pupils = {"points": [{"x": 290 / W, "y": 200 / H + dy}, {"x": 350 / W, "y": 200 / H + dy}]}
    _, _, conf, details = parse(answers(pupils=pupils))
    assert conf == pytest.approx(0.625)
    assert details["pupils"].startswith("disagree (0.62")
    far = {"points": [{"x": 0.05, "y": 0.9}]}
    assert parse(answers(pupils=far))[2] == pytest.approx(0.25)


def test_pupils_are_not_checked_when_the_snapshot_has_none():
    _, _, conf, details = parse(answers(pupils={"points": []}), snapshot(pupils_px=None))
    assert conf == 1.0 and details["pupils"].startswith("not checked")


def test_a_target_close_to_the_eye_gives_a_weaker_or_no_direction():
    # 0.25 face widths (32 px): half the full-trust reach → confidence 0.5.
    near = answers(gaze_forced={"gaze": {"x": EYE[0] + 32 / W, "y": EYE[1]}})
    obs, _, conf, details = parse(near)
    assert isinstance(obs, LineObservation) and conf == pytest.approx(0.5)
    assert details["factors"] == {"target_near_eye": pytest.approx(0.5)}
    # 0.05 face widths (6.4 px): noise.
    on_eye = answers(gaze_forced={"gaze": {"x": EYE[0] + 6.4 / W, "y": EYE[1]}})
    obs, _, conf, details = parse(on_eye)
    assert (obs, conf) == (None, 0.0) and "too close" in details["reason"]


@pytest.mark.parametrize(
    ("a", "snap_kw"),
    [
        (["not", "a", "dict"], {}),
        (None, {}),
        (answers(gaze_forced={"gaze": {"x": True, "y": 0.5}}), {}),
        (answers(gaze_forced={"gaze": [0.9, 0.4]}), {}),
        (answers(gaze_forced={"gaze": {"x": 1.5, "y": 0.5}}), {}),  # off the image
        (answers(gaze_forced={}), {}),
        (answers(faces={"objects": {"x_min": 0.1}}), {}),
        (answers(faces=None), {}),
        (answers(pupils="pupil", gaze_forced=None), {}),
        (answers(eye="middle"), {"eye_px": None, "pupils_px": None}),
        (answers(), {"image": None}),
        (answers(), {"image": np.zeros((0, 0, 3), np.uint8)}),
    ],
)
def test_garbage_never_raises_and_always_says_why(a, snap_kw):
    obs, _, conf, details = parse(a, snapshot(**snap_kw))
    assert obs is None and conf == 0.0
    assert isinstance(details["reason"], str) and details["reason"]


def test_garbage_in_the_pupil_answer_only_costs_the_pupil_check():
    obs, _, conf, details = parse(answers(pupils={"points": [{"x": "a"}, None, 3]}))
    assert isinstance(obs, LineObservation)
    assert details["pupils_dropped"] == 3 and conf == pytest.approx(0.7)


def test_query_eye_falls_back_from_snapshot_to_pupils_to_face():
    assert query_eye(snapshot(), None, None) == pytest.approx(EYE)
    no_eye = snapshot(eye_px=None)  # pupils midpoint (320, 200)
    assert query_eye(no_eye, None, None) == pytest.approx(EYE)
    blind = snapshot(eye_px=None, pupils_px=None)
    assert query_eye(blind, PUPILS, None) == pytest.approx(EYE)
    assert query_eye(blind, {"points": []}, {"objects": [FACE]}) == pytest.approx((0.5, 0.41))
    assert query_eye(blind, {"points": []}, {"objects": []}) is None


# --- the oracle -----------------------------------------------------------------------------


def test_one_encode_per_snapshot_and_every_call_gets_that_encoding():
    model = fake_for(answers())
    oracle = oracle_for(model)
    label = oracle.label(snapshot(), threading.Event())
    assert len(model.encodes) == 1
    assert [c[0] for c in model.calls] == ["point", "detect", "detect_gaze", "detect_gaze_forced"]
    assert all(got_encoding for _, got_encoding, _ in model.calls)
    assert model.calls[0][2] == "pupil" and model.calls[1][2] == "face"
    assert model.calls[2][2] == pytest.approx(EYE) and model.calls[3][2] == pytest.approx(EYE)
    oracle.label(snapshot(snapshot_id="s2"), threading.Event())
    assert len(model.encodes) == 2 and len(model.calls) == 8

    assert isinstance(oracle, Oracle)
    assert check_label(label, snapshot()) is label
    assert (label.t_ns, label.snapshot_id, label.oracle) == (123_000_000, "s1", "moondream")
    assert label.oracle_version == f"vikhyatk/moondream2@2025-04-14#{COMMIT[:12]}"
    np.testing.assert_allclose(label.observation.direction, (-1.0, 0.0), atol=1e-12)
    assert label.in_frame is False and label.confidence == 1.0 and label.latency_s >= 0
    OracleLabel.model_validate_json(label.model_dump_json())  # the store can round-trip it


def test_the_model_sees_rgb_not_bgr():
    model = fake_for(answers())
    oracle_for(model).label(snapshot(), threading.Event())
    seen = model.encodes[0]
    assert seen.shape == (H, W, 3)
    assert tuple(seen[0, 0]) == (200, 0, 10)


def test_gaze_in_the_frame_skips_the_forced_call():
    model = fake_for(answers(gaze={"gaze": {"x": 0.1, "y": 0.9}}))
    label = oracle_for(model).label(snapshot(), threading.Event())
    assert [c[0] for c in model.calls] == ["point", "detect", "detect_gaze"]
    assert label.in_frame is True and label.observation is None and label.confidence == 0.0


def test_without_any_eye_position_no_gaze_call_is_made():
    a = answers(pupils={"points": []}, faces={"objects": []})
    model = fake_for(a)
    label = oracle_for(model).label(snapshot(eye_px=None, pupils_px=None), threading.Event())
    assert [c[0] for c in model.calls] == ["point", "detect"]
    assert label.observation is None and "no face" in label.details["reason"]


@pytest.mark.parametrize(
    ("cancel_in", "made"),
    [
        ("point", ["point"]),
        ("detect", ["point", "detect"]),
        ("detect_gaze", ["point", "detect", "detect_gaze"]),
        ("detect_gaze_forced", ["point", "detect", "detect_gaze", "detect_gaze_forced"]),
    ],
)
def test_cancel_is_honoured_between_calls(cancel_in, made):
    cancel = threading.Event()
    model = fake_for(answers(), hooks={cancel_in: cancel.set})
    with pytest.raises(OracleCancelled):
        oracle_for(model).label(snapshot(), cancel)
    assert [c[0] for c in model.calls] == made


def test_cancelled_before_start_does_not_even_encode():
    cancel = threading.Event()
    cancel.set()
    model = fake_for(answers())
    with pytest.raises(OracleCancelled):
        oracle_for(model).label(snapshot(), cancel)
    assert model.encodes == [] and model.calls == []


def test_a_failing_model_call_is_an_oracle_error_and_close_stops_the_oracle():
    model = fake_for(answers())
    model.replies["detect"] = RuntimeError("MPS backend out of memory")
    oracle = oracle_for(model)
    with pytest.raises(OracleError, match="moondream detect failed: RuntimeError: MPS"):
        oracle.label(snapshot(), threading.Event())
    oracle.close()
    with pytest.raises(OracleError, match="closed"):
        oracle.label(snapshot(), threading.Event())


def test_image_conversion_checks_its_input():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(bgr_to_rgb(img), img[:, :, ::-1])
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)):
        with pytest.raises(OracleError, match="HxWx3 uint8"):
            bgr_to_rgb(bad)
    if PILImage is None:
        pytest.skip("pillow is not installed")
    pil = to_model_image(img)
    assert isinstance(pil, PILImage.Image) and pil.mode == "RGB" and pil.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(pil), img[:, :, ::-1])


# --- configuration --------------------------------------------------------------------------


def test_dtype_follows_the_revision():
    assert MoondreamConfig().dtype_name == "float16"
    assert MoondreamConfig(revision="2025-01-09").dtype_name == "float16"
    assert MoondreamConfig(revision="2025-06-21").dtype_name == "bfloat16"
    assert revision_dtype("main") is None
    assert MoondreamConfig(revision=COMMIT, dtype="bfloat16").dtype_name == "bfloat16"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"revision": "main"}, "dtype is unknown"),
        ({"dtype": "bfloat16"}, "runs in float16"),
        ({"code_commit": "abc123"}, "40-hex"),
        ({"device": "gpu"}, "device must be"),
        ({"local_file_only": True}, "Extra inputs"),
    ],
)
def test_config_rejects_what_cannot_work(kw, message):
    with pytest.raises(ValidationError, match=message):
        MoondreamConfig(**kw)


def test_config_defaults_are_offline_and_normalise_the_commit():
    cfg = MoondreamConfig(code_commit=COMMIT.upper())
    assert cfg.local_files_only is True and cfg.code_commit == COMMIT
    assert (cfg.model_id, cfg.revision, cfg.device) == ("vikhyatk/moondream2", "2025-04-14", "auto")


def test_commit_from_snapshot_path():
    p = f"/h/hub/models--vikhyatk--moondream2/snapshots/{COMMIT}/config.json"
    assert commit_from_snapshot_path(p) == COMMIT
    assert commit_from_snapshot_path("/models/moondream2/config.json") is None


# --- loading: every expected failure is one clear message -----------------------------------


class _Stack:
    """Fake torch / transformers / accelerate / huggingface_hub in sys.modules."""

    def __init__(self, monkeypatch, tf_version: str = "4.51.3") -> None:
        self.calls: list[tuple[str, dict]] = []
        self.snapshot_commit: str | None = COMMIT
        self.hub_error: Exception | None = None
        self.load_error: Exception | None = None
        self.loaded_commit: str | None = COMMIT
        self.mps = False
        self.cuda = False
        stack = self

        torch = types.ModuleType("torch")
        torch.float16, torch.bfloat16 = "torch.float16", "torch.bfloat16"
        torch.backends = types.SimpleNamespace(
            mps=types.SimpleNamespace(is_available=lambda: stack.mps)
        )
        torch.cuda = types.SimpleNamespace(is_available=lambda: stack.cuda)

        hub = types.ModuleType("huggingface_hub")

        def hf_hub_download(repo_id, filename, *, revision, local_files_only):
            stack.calls.append(("hf_hub_download", dict(repo_id=repo_id, revision=revision)))
            if stack.hub_error is not None:
                raise stack.hub_error
            return f"/c/hub/models--x/snapshots/{stack.snapshot_commit}/{filename}"

        hub.hf_hub_download = hf_hub_download

        class AutoModelForCausalLM:
            @staticmethod
            def from_pretrained(model_id, **kw):
                stack.calls.append(("from_pretrained", dict(kw, model_id=model_id)))
                if stack.load_error is not None:
                    raise stack.load_error
                model = types.SimpleNamespace(
                    config=types.SimpleNamespace(_commit_hash=stack.loaded_commit)
                )
                model.eval = lambda: model
                return model

        tf = types.ModuleType("transformers")
        tf.__version__ = tf_version
        tf.AutoModelForCausalLM = AutoModelForCausalLM

        for name, mod in [
            ("torch", torch),
            ("transformers", tf),
            ("accelerate", types.ModuleType("accelerate")),
            ("huggingface_hub", hub),
        ]:
            monkeypatch.setitem(sys.modules, name, mod)

    def loads(self) -> list[dict]:
        return [kw for name, kw in self.calls if name == "from_pretrained"]


def test_loading_here_fails_for_real_with_the_install_command():
    """No patching: this environment has no transformers (the tests must not need it)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("transformers is installed here")
    with pytest.raises(OracleError, match=r"needs transformers<5 \(not installed\)"):
        load_moondream(MoondreamConfig())


def test_transformers_that_fails_to_import_is_said_with_its_reason(monkeypatch, tmp_path):
    """An installed transformers that does not import (a tokenizers of the wrong version)
    was said to be "not installed", with the extra's install as the cure."""
    pkg = tmp_path / "transformers"
    pkg.mkdir()
    why = "tokenizers>=0.22.0,<=0.23.0 is required, but found tokenizers==0.23.3"
    (pkg / "__init__.py").write_text(f"raise ImportError({why!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "transformers", raising=False)
    with pytest.raises(OracleError) as e:
        load_moondream(MoondreamConfig())
    assert str(e.value) == (
        f"the Moondream oracle needs transformers<5, which is installed but does not import: {why}"
    )


def test_missing_transformers_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails, as when absent
    with pytest.raises(OracleError, match=r"pip install 'gazeloop\[oracle\]'") as e:
        load_moondream(MoondreamConfig())
    assert "transformers<5" in str(e.value) and e.value.__cause__ is None


def test_missing_torch_names_the_install_command(monkeypatch):
    _Stack(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(OracleError, match=r"needs torch .*gazeloop\[oracle\]"):
        load_moondream(MoondreamConfig())


def test_transformers_5_is_refused(monkeypatch):
    stack = _Stack(monkeypatch, tf_version="5.0.1")
    with pytest.raises(OracleError, match=r"needs transformers<5, found 5\.0\.1"):
        load_moondream(MoondreamConfig())
    assert stack.calls == []


@pytest.mark.parametrize("where", ["hub", "from_pretrained"])
def test_weights_not_cached_is_one_message_saying_how_to_get_them(monkeypatch, where):
    stack = _Stack(monkeypatch)
    monkeypatch.setenv("HF_HOME", "/data/hf")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    miss = OSError(
        "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find "
        "them in the cached files.\nCheck your internet connection or see how to run the "
        "library in offline mode."
    )
    if where == "hub":
        stack.hub_error = FileNotFoundError("Cannot find the requested files in the local cache")
    else:
        stack.load_error = miss
    with pytest.raises(OracleError) as e:
        load_moondream(MoondreamConfig(code_commit=COMMIT))
    msg = str(e.value)
    assert "huggingface-cli download vikhyatk/moondream2 --revision 2025-04-14" in msg
    assert "tokenizer.json --revision 2025-01-09" in msg
    assert "/data/hf/hub" in msg and "HF_HOME" in msg
    assert "Check your internet" not in msg  # only the cause's first line
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_commit_other_than_the_pinned_one_is_refused_before_any_code_runs(monkeypatch):
    stack = _Stack(monkeypatch)
    stack.snapshot_commit = OTHER
    with pytest.raises(OracleError, match=f"is commit {OTHER}, but code_commit pins {COMMIT}"):
        load_moondream(MoondreamConfig(code_commit=COMMIT))
    assert stack.loads() == []  # from_pretrained (and so the remote code) never ran


def test_a_loaded_model_from_another_commit_is_refused(monkeypatch):
    stack = _Stack(monkeypatch)
    stack.loaded_commit = OTHER
    with pytest.raises(OracleError, match=f"loaded commit {OTHER}"):
        load_moondream(MoondreamConfig(code_commit=COMMIT))


def test_the_pinned_load_uses_the_commit_offline_with_the_revisions_dtype(monkeypatch):
    stack = _Stack(monkeypatch)
    load_moondream(MoondreamConfig(code_commit=COMMIT))
    (kw,) = stack.loads()
    assert kw == {
        "model_id": "vikhyatk/moondream2",
        "revision": COMMIT,
        "code_revision": COMMIT,
        "trust_remote_code": True,
        "local_files_only": True,
        "device_map": {"": "cpu"},
        "torch_dtype": "torch.float16",
    }
    assert stack.calls[0] == (
        "hf_hub_download",
        {"repo_id": "vikhyatk/moondream2", "revision": "2025-04-14"},
    )


def test_newer_transformers_get_dtype_and_auto_prefers_mps_then_cuda(monkeypatch):
    stack = _Stack(monkeypatch, tf_version="4.57.1")
    stack.mps = stack.cuda = True
    load_moondream(MoondreamConfig(revision="2025-06-21", code_commit=COMMIT))
    stack.mps = False
    load_moondream(MoondreamConfig(revision="2025-06-21", code_commit=COMMIT))
    first, second = stack.loads()
    assert first["dtype"] == "torch.bfloat16" and "torch_dtype" not in first
    assert first["device_map"] == {"": "mps"} and second["device_map"] == {"": "cuda"}


def test_unpinned_remote_code_is_refused_by_default_and_loud_when_allowed(monkeypatch, caplog):
    from gazeloop.oracle.moondream import REVIEWED_CODE_COMMIT

    stack = _Stack(monkeypatch)
    assert MoondreamConfig().code_commit == REVIEWED_CODE_COMMIT
    if REVIEWED_CODE_COMMIT is None:
        with pytest.raises(OracleError, match="refusing to run Moondream's remote code unpinned"):
            load_moondream(MoondreamConfig())
        assert stack.loads() == []  # refused before any remote code was imported
    with caplog.at_level("WARNING"):
        load_moondream(MoondreamConfig(code_commit=None, allow_unpinned=True))
    assert "UNPINNED" in caplog.text and len(stack.loads()) == 1


def test_an_explicit_device_that_is_not_there_is_an_error(monkeypatch):
    _Stack(monkeypatch)
    with pytest.raises(OracleError, match="no CUDA device"):
        load_moondream(MoondreamConfig(device="cuda:1"))
