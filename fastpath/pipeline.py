"""The fast path: one frame in, one `GazeSample` out, never an exception.

Stages: landmarks → features → gaze_model → filter (→ mapping, once a profile exists). Each
stage's time is recorded on the sample so the benchmark and the live status line read the
same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gazeloop.fastpath import models
from gazeloop.fastpath.blink import BLINK_APERTURE, BLINK_RELATIVE, BlinkDetector
from gazeloop.fastpath.features import CROP_SCALE, extract
from gazeloop.fastpath.filters import Filter, make_filter
from gazeloop.fastpath.gaze_model import GazeModel
from gazeloop.fastpath.landmarks import make_backend
from gazeloop.fastpath.providers import resolve_providers
from gazeloop.fastpath.types import Features, Frame, GazeSample, Quality

log = logging.getLogger(__name__)

STAGES = ("landmarks", "features", "gaze_model", "mapping", "filter")


# The 1€ filter's defaults, tuned as its authors advise: min_cutoff as low as the lag allows,
# beta to follow fast moves. On the 4-corner recording's fixations (issue 12's precision
# spec: RMS sample-to-sample <= 10 px with at most one frame of lag at a change of target),
# with every settled frame kept (no outlier rejection hides the jitter a user sees):
# min_cutoff 1.0 Hz -> 11.9 px at 0.30 frames of lag; 0.5 Hz -> 8.6 px at 0.36 frames
# (2026-12, `gazeloop eval C4 --precision`). beta carries the lag at a saccade. That lag is
# of the recording's switches, screen-wide jumps; a smaller gaze shift is smoothed longer,
# since the filter opens with speed: 90 % of a noise-free step at 60 Hz is reached after
# 433 ms for 50 px, 267 ms for 150 px, 167 ms for 400 px, 100 ms for 1000 px (on a 2560 px
# screen; at 30 Hz 567, 400, 267, 167 ms; `test_filters.py` recomputes them). The price of
# the 10 px precision; what the loop compares labels with is the unfiltered point.
FILTER_DEFAULTS: dict[str, dict[str, float]] = {"one_euro": {"min_cutoff": 0.5, "beta": 1.0}}


def default_filter_params(name: str) -> dict[str, float]:
    """A filter's parameters when none are given: the fast path's tuning, else the filter's
    own defaults."""
    return dict(FILTER_DEFAULTS.get(name, {}))


MAX_THREADS = 128  # onnxruntime intra-op threads: more than any machine this runs on has cores
_FAILURES_SAID = 16  # distinct frame failures warned about, per fast path


_FEATURE_SETTINGS = {
    "landmarks", "max_faces", "crop_scale", "blink_aperture", "blink_relative", "focal_px",
    "still_gap_s", "gaze_frame", "mirror_average",
}  # fmt: skip


class FastPathConfig(BaseModel):
    """Everything the fast path needs: every field from a `--config` file, the common ones
    also as flags (`tools.commands._args.add_fastpath_args`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    landmarks: Literal["onnx", "tasks", "legacy"] = "onnx"
    face_model: Path | None = Field(None, description="face_landmarker.task (else resolved)")
    gaze_model: Path | None = Field(None, description="ONNX gaze model (else resolved/built)")
    filter: Literal["one_euro", "kalman", "none"] = "one_euro"
    # Parameters of the chosen filter; None: that filter's defaults (for the 1€ filter on gaze
    # angles in radians, tuned for a 30-60 Hz webcam with ~0.5° of jitter: FILTER_DEFAULTS).
    filter_params: dict[str, float] | None = None
    # Bounded: onnxruntime builds its pool up front, and 100000 threads hung it for minutes.
    threads: int = Field(1, ge=1, le=MAX_THREADS, description="onnxruntime intra-op threads")
    # onnxruntime execution provider of the ONNX networks (gaze model, `onnx` landmarks):
    # auto = CoreML on a Mac, CUDA when offered, CPU otherwise (fastpath.providers).
    ep: Literal["auto", "cpu", "cuda", "coreml"] = "auto"
    # The frame of the head pose the gaze network is told: the camera's axes, or the eyes'
    # ray frame (`headpose.ypr_in_eye_frame`), the one its eye crops can see. "ray" keeps
    # the gaze point still when the head turns about the camera (README, Conventions).
    gaze_frame: Literal["camera", "ray"] = "ray"
    # Average the network's answer with its answer on the mirrored face
    # (`gaze_model.mirror_averaged`): a second network run that removes the network's
    # left-right asymmetry. A profile records which read it was fitted on.
    mirror_average: bool = True
    max_faces: int = Field(1, ge=1)
    # An eye crop this many eye widths wide: 1e308 passed and gave numpy overflow warnings
    # and wrong numbers; past a few widths the crop is the whole face.
    crop_scale: float = Field(CROP_SCALE, gt=0, le=10)
    # A blink: an eye under `blink_aperture` of its width, or both eyes' mean under
    # `blink_relative` of the person's usual aperture (`fastpath.blink` says why).
    blink_aperture: float = Field(BLINK_APERTURE, ge=0)
    blink_relative: float = Field(BLINK_RELATIVE, ge=0, lt=1)
    focal_px: float | None = Field(None, gt=0, description="camera focal length, pixels")

    # Frames further apart than this (or going back in time) are independent stills, not a
    # stream: landmarks are detected afresh instead of tracked from the previous frame.
    # Tracking across stills seconds apart loses faces and jumps head pose (issue 12).
    still_gap_s: float = Field(0.5, gt=0, description="gap that makes frames independent")

    @model_validator(mode="after")
    def _filter_builds(self) -> FastPathConfig:
        # Built here once so a bad parameter (NaN, negative, another filter's) is a config
        # error where the config is read, not a traceback when the stream starts.
        make_filter(self.filter, **self.filter_kwargs())
        return self

    def feature_settings(self) -> dict[str, Any]:
        """The settings that decide a frame's features, the model files aside: what the
        feature cache keys on (with both models' content), and what a profile records of
        the frames it was fitted on (with the gaze model's; a face landmarker other than the
        one resolved, `face_model`, is not recorded), since the same model read with other
        settings gives other features. Not the filter (features are taken before it) nor
        the execution provider (the same numbers, up to precision)."""
        return self.model_dump(mode="json", include=_FEATURE_SETTINGS)

    def filter_kwargs(self) -> dict[str, float]:
        """The chosen filter's parameters: as given, else its defaults (never another
        filter's: `--filter none` takes none)."""
        if self.filter_params is not None:
            return dict(self.filter_params)
        return default_filter_params(self.filter)


def _camera_matrix(cfg: FastPathConfig, size: tuple[int, int]) -> np.ndarray | None:
    if cfg.focal_px is None:
        return None
    w, h = size
    return np.array([[cfg.focal_px, 0, w / 2], [0, cfg.focal_px, h / 2], [0, 0, 1.0]])


def _own_filter(given: Filter | str | None, cfg: FastPathConfig) -> Filter:
    """The fast path's filter: an object passed in (any `Filter`: `__call__(t_ns, x)`,
    `reset()`, `hold()`; strategies are objects), a filter's name with its default
    parameters, or, with neither, the config's. An object passed in is this fast path's
    alone: it keeps its state between frames and is reset when the face is lost."""
    if given is None:
        return make_filter(cfg.filter, **cfg.filter_kwargs())
    if isinstance(given, str):
        return make_filter(given, **default_filter_params(given))
    if isinstance(given, type) or not isinstance(given, Filter):  # a class is not a filter yet
        raise TypeError(
            f"filter: {type(given).__name__} is not a Filter "
            "(it needs __call__(t_ns, x), reset() and hold())"
        )
    return given


class FastPath:
    """Owns the landmark backend, the gaze model and the filter for one camera stream.

    `mapper`, when set, turns a sample (its unfiltered features) into a normalised screen
    point: the calibration profile plus drift offset. The filter then smooths that point.
    `on_sample` receives every sample (e.g. to append it to the history buffer).
    `filter`: a `Filter` object or a filter's name instead of the config's filter (`cfg`
    still names the config's; `self.filter` is the one that runs).
    Model files are resolved and loaded here, so a missing or corrupt file fails before the
    first frame.
    """

    def __init__(
        self,
        cfg: FastPathConfig | None = None,
        *,
        mapper: Callable[[GazeSample], np.ndarray | None] | None = None,
        on_sample: Callable[[GazeSample], None] | None = None,
        filter: Filter | str | None = None,
    ):
        self.cfg = cfg = cfg or FastPathConfig()
        own_filter = _own_filter(filter, cfg)  # a wrong one is said before the models load
        task = models.resolve(models.FACE_LANDMARKER, cfg.face_model)
        onnx_path = models.resolve_gaze_onnx(cfg.gaze_model)
        self.providers = resolve_providers(cfg.ep)  # ProviderError before any model loads
        self.landmarks = make_backend(
            cfg.landmarks, task, max_faces=cfg.max_faces, providers=self.providers
        )
        self.gaze = GazeModel(
            onnx_path,
            threads=cfg.threads,
            providers=self.providers,
            mirror_average=cfg.mirror_average,
            head_frame=cfg.gaze_frame,
            crop_scale=cfg.crop_scale,
        )
        self.filter = own_filter
        self.set_mapper(mapper)
        self.on_sample = on_sample
        self._last_yp: np.ndarray | None = None
        self._last_xy: np.ndarray | None = None
        self._swap: tuple[GazeModel, object] | None = None
        self._size: tuple[int, int] | None = None
        self._last_t: int | None = None
        self._failures_said: set[str] = set()
        self.blinks = BlinkDetector(cfg.blink_aperture, cfg.blink_relative)
        self._closed_since: int | None = None  # the first frame of the eyes' closing

    def set_mapper(self, mapper: Callable[[GazeSample], np.ndarray | None] | None) -> None:
        """Install (or remove) the calibration mapping; the filter restarts because its
        state was in the other space."""
        self.mapper = mapper
        self._to_px = getattr(mapper, "to_px", None)  # a profile knows the current screen
        self._restart_filter()

    def request_swap(self, gaze: GazeModel, mapper=None) -> None:
        """Hand over a new gaze model (and the profile refitted for it), loaded elsewhere;
        the next `process()` switches to both before touching its frame, so no frame mixes
        an old model with a new mapping."""
        self._swap = (gaze, mapper)

    def _apply_swap(self) -> None:
        gaze, mapper = self._swap
        self._swap = None
        self.gaze = gaze
        self.set_mapper(mapper)
        log.info("switched to gaze model %s (%s)", gaze.model_id, gaze.sha256[:12])

    def reset(self) -> None:
        """A new source: forget tracking state and the person's usual eye aperture."""
        self._reset_tracking()
        self.blinks.reset()

    def _reset_tracking(self) -> None:
        """A jump in time: the landmarks and the filter start afresh (the person is the
        same, so the blink reference stays)."""
        self.landmarks.reset()
        self._restart_filter()
        self._last_t = None

    def process(self, frame: Frame) -> GazeSample:
        if self._swap is not None:
            self._apply_swap()
        last = self._last_t
        if last is not None and not 0 <= frame.t_ns - last <= self.cfg.still_gap_s * 1e9:
            self._reset_tracking()
        self._last_t = frame.t_ns
        q = Quality()
        s = GazeSample(t_ns=frame.t_ns, index=frame.index, quality=q)
        try:
            self._run(frame, s)
        except Exception as e:  # a bad frame must never stop the stream
            q.error = f"{type(e).__name__}: {e}"
            q.confidence = 0.0
            self._restart_filter()
            self._say_failure(frame.index, q.error)
        if self.on_sample is not None:
            self.on_sample(s)
        return s

    def _say_failure(self, index: int, error: str) -> None:
        """Each kind of failure once as a warning, then at debug level: a fault that fails
        every frame (a profile the frames cannot feed, a broken model) must not leave a
        live run without a cursor and without a word, nor print a line per frame."""
        seen = self._failures_said
        if error in seen or len(seen) >= _FAILURES_SAID:
            log.debug("frame %d failed: %s", index, error)
            return
        seen.add(error)
        log.warning("frame %d failed: %s (later frames failing so: -vv)", index, error)

    def _run(self, frame: Frame, s: GazeSample) -> None:
        q, st = s.quality, s.stage_ms
        img = frame.image
        if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            q.error = "image is not an HxWx3 uint8 BGR array"
            return
        size = (img.shape[1], img.shape[0])
        if size != self._size:
            self._size = size
            self.landmarks.pose.camera_matrix = _camera_matrix(self.cfg, size)

        t0 = time.perf_counter_ns()
        face = self.landmarks.detect(img, frame.t_ns)
        t1 = time.perf_counter_ns()
        st["landmarks"] = (t1 - t0) / 1e6
        if face is None:
            self._restart_filter()
            return
        q.face = True
        q.faces_seen = face.faces_seen
        s.landmarks = face
        if not np.all(np.isfinite(face.head_ypr)):
            q.error = "head pose is not finite"
            return

        feats = extract(
            face,
            img,
            crop_scale=self.cfg.crop_scale,
            blink_aperture=self.cfg.blink_aperture,
            focal_px=self.cfg.focal_px,  # the camera head pose was solved with
        )
        t2 = time.perf_counter_ns()
        st["features"] = (t2 - t1) / 1e6
        s.features = feats
        q.crop_clipped = feats.left.crop_clipped or feats.right.crop_clipped
        q.blink = self.blinks.closed(feats.left.aperture, feats.right.aperture)
        if q.blink:
            self._hold_blink(s)
            return
        self._closed_since = None
        self._estimate(frame, s, feats, t2)

    def _restart_filter(self) -> None:
        """The filter and the last estimates start afresh: what they hold belongs to
        another face, another mapping or another stretch of time."""
        self.filter.reset()
        self._last_yp = self._last_xy = None
        self._closed_since = None

    def _hold_blink(self, s: GazeSample) -> None:
        """Hold across the blink: the filter keeps its state and the stream repeats the
        last estimate, flagged, so a cursor does not jump when the lids close. Closed for
        longer than `still_gap_s` (a look down at the keys reads so too), the filter starts
        afresh on the first open frame: it resumed as if one frame had passed, and the
        cursor glided from where the eyes had closed, half the screen away after 2 s."""
        if self._closed_since is None:
            self._closed_since = s.t_ns
        if s.t_ns - self._closed_since > self.cfg.still_gap_s * 1e9:
            self.filter.reset()
        self.filter.hold()
        s.gaze_yp = None if self._last_yp is None else self._last_yp.copy()
        if self._last_xy is not None:
            self._show(s, self._last_xy.copy())

    def _show(self, s: GazeSample, xy: np.ndarray) -> None:
        """Set the sample's screen point where it is, and clipped to the screen as shown (in
        pixels too when the profile knows the screen)."""
        s.screen_xy_unclipped = xy
        s.screen_xy = np.clip(xy, 0.0, 1.0)
        if self._to_px is not None:
            s.screen_px = self._to_px(s.screen_xy)

    def _estimate(self, frame: Frame, s: GazeSample, feats: Features, t2: int) -> None:
        """The gaze network on the eye crops, then the filter: on the gaze angles while there
        is no profile, else on the profile's screen point."""
        q, st = s.quality, s.stage_ms
        head, s.head_frame = feats.network_head(self.cfg.gaze_frame)
        out = self.gaze.predict(feats.left.crop, feats.right.crop, head)
        t3 = time.perf_counter_ns()
        st["gaze_model"] = (t3 - t2) / 1e6
        if not (np.all(np.isfinite(out.yaw_pitch)) and np.all(np.isfinite(out.vector))):
            q.error = "gaze model output is not finite"
            return
        s.gaze_yp_raw = out.yaw_pitch
        s.gaze_vector = out.vector
        s.embedding = out.embedding
        q.confidence = _confidence(feats.left.aperture, feats.right.aperture, q)
        if self.mapper is None:
            # No profile yet: smooth the gaze angles themselves.
            s.gaze_yp = self.filter(frame.t_ns, out.yaw_pitch)
            self._last_yp = s.gaze_yp
            st["filter"] = (time.perf_counter_ns() - t3) / 1e6
            return
        s.gaze_yp = self._last_yp = out.yaw_pitch
        self._map(frame, s, t3)

    def _map(self, frame: Frame, s: GazeSample, t3: int) -> None:
        """With a profile the filter runs last, on the screen point (mapping + drift offset
        first), as the design's data flow says: it smooths what the user sees."""
        q, st = s.quality, s.stage_ms
        xy = self.mapper(s)  # type: ignore[misc]
        t4 = time.perf_counter_ns()
        st["mapping"] = (t4 - t3) / 1e6
        if xy is None or not np.all(np.isfinite(xy)):
            q.error = "mapping output is not finite"
            return
        s.screen_xy_raw = xy
        self._last_xy = self.filter(frame.t_ns, xy)
        self._show(s, self._last_xy)
        st["filter"] = (time.perf_counter_ns() - t4) / 1e6

    def close(self) -> None:
        self.landmarks.close()


def _confidence(ap_left: float, ap_right: float, q: Quality) -> float:
    """A heuristic in [0, 1]: the appearance model gives no confidence of its own, so use
    what is known to hurt it: half-closed lids, a crop padded at the frame edge, and a
    second face that could have been the one tracked."""
    c = min(1.0, min(ap_left, ap_right) / 0.25)
    if q.crop_clipped:
        c *= 0.5
    if q.faces_seen > 1:
        c *= 0.8
    return float(c)
