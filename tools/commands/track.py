"""`gazeloop track SOURCE`: run the fast path over a camera, video or session and report."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gazeloop.calibration.profile import Profile, ProfileError, ProfileMapper
from gazeloop.calibration.store.session import SessionError, read_session
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.sources import is_camera, open_source
from gazeloop.fastpath.types import GazeSample
from gazeloop.tools.commands._args import add_fastpath_args, fastpath_config, positive_int
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.labelled import read_as_fitted, refuse_mirrored


def add_parser(sub) -> None:
    p = sub.add_parser(
        "track",
        help="run the fast path over a source and print the gaze stream",
        description="Run the fast path over a camera index, a video file or a session folder. "
        "Prints a status line per second of source time and a summary; --jsonl prints one "
        "JSON object per frame instead of the status lines, and the summary as a last JSON "
        "line.",
    )
    p.add_argument("source", help="camera index (0), video file, session folder or image")
    p.add_argument("--frames", type=positive_int, help="stop after this many frames")
    p.add_argument("--jsonl", action="store_true", help="one JSON line per sample")
    p.add_argument("--profile", type=Path, help="calibration profile: output screen points")
    p.add_argument(
        "--model-id",
        help="with --profile: the registry's model to serve, when it holds several",
    )
    p.add_argument(
        "--screen-px",
        type=positive_int,
        nargs=2,
        metavar=("W", "H"),
        help="with --profile: the screen in use now, if its resolution differs from the profile's",
    )
    p.add_argument(
        "--mirrored",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a session folder's images are selfie views (default: its manifest's word, "
        "else read as the --profile's own frames were)",
    )
    add_fastpath_args(p)
    p.set_defaults(func=run)


# The latencies kept for the percentiles: a uniform sample of every frame's (a reservoir),
# so a run of hours holds a fixed amount; every frame's up to this many (30 min at 60 Hz).
_KEPT_LATENCIES = 100_000


@dataclass
class Tally:
    """Running counts for the per-second lines and the summary, in fixed memory: each frame
    kept 168 bytes before, 290 MB over 8 hours at 60 Hz."""

    frames: int = 0
    faces: int = 0
    blinks: int = 0
    errors: int = 0
    clipped: int = 0
    total_ms: list[float] = field(default_factory=list)
    gazes: int = 0
    yp_min: np.ndarray = field(default_factory=lambda: np.full(2, np.inf))
    yp_max: np.ndarray = field(default_factory=lambda: np.full(2, -np.inf))
    yp_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    _rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def add(self, s: GazeSample) -> None:
        self.frames += 1
        q = s.quality
        self.faces += q.face
        self.blinks += q.blink
        self.errors += q.error is not None
        self.clipped += q.crop_clipped
        self._keep_latency(sum(s.stage_ms.values()))
        if s.gaze_yp is not None and not q.blink and q.error is None:
            yp = np.degrees(np.asarray(s.gaze_yp, dtype=np.float64))
            self.gazes += 1
            self.yp_min = np.minimum(self.yp_min, yp)
            self.yp_max = np.maximum(self.yp_max, yp)
            self.yp_sum += yp

    def _keep_latency(self, ms: float) -> None:
        if len(self.total_ms) < _KEPT_LATENCIES:
            self.total_ms.append(ms)
            return
        k = int(self._rng.integers(self.frames))  # reservoir sampling (Vitter's R)
        if k < _KEPT_LATENCIES:
            self.total_ms[k] = ms

    def summary(self) -> dict:
        ms = np.array(self.total_ms) if self.total_ms else np.zeros(1)
        return {
            "frames": self.frames,
            "face_found": self.faces,
            "blinks": self.blinks,
            "errors": self.errors,
            "crop_clipped": self.clipped,
            "latency_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "latency_p95_ms": round(float(np.percentile(ms, 95)), 3),
            "gaze_yaw_deg": self._range(0),
            "gaze_pitch_deg": self._range(1),
        }

    def _range(self, axis: int) -> dict | None:
        if self.gazes == 0:
            return None
        return {
            "min": round(float(self.yp_min[axis]), 2),
            "max": round(float(self.yp_max[axis]), 2),
            "mean": round(float(self.yp_sum[axis] / self.gazes), 2),
        }


def sample_json(s: GazeSample) -> dict:
    q = s.quality
    d = {
        "t_ns": s.t_ns,
        "index": s.index,
        "face": q.face,
        "blink": q.blink,
        "clipped": q.crop_clipped,
        "confidence": round(q.confidence, 3),
        "error": q.error,
        "ms": {k: round(v, 3) for k, v in s.stage_ms.items()},
    }
    if s.gaze_yp is not None:
        d["gaze_deg"] = [round(math.degrees(v), 3) for v in s.gaze_yp]
    if s.landmarks is not None:
        d["head_deg"] = [round(math.degrees(v), 3) for v in s.landmarks.head_ypr]
    if s.screen_xy is not None:
        d["screen_xy"] = [round(float(v), 5) for v in s.screen_xy]
    if s.screen_px is not None:
        d["screen_px"] = [round(float(v), 1) for v in s.screen_px]
    return d


def status_line(t_s: float, window: list[GazeSample]) -> str:
    n = len(window)
    faces = sum(s.quality.face for s in window)
    ms = np.median([sum(s.stage_ms.values()) for s in window]) if window else 0.0
    last = next((s for s in reversed(window) if s.gaze_yp is not None), None)
    on_screen = next((s for s in reversed(window) if s.screen_px is not None), None)
    if on_screen is not None:
        x, y = on_screen.screen_px
        gaze = f"screen ({x:7.1f}, {y:7.1f}) px"
    elif last is not None:
        yaw, pitch = (math.degrees(v) for v in last.gaze_yp)
        gaze = f"gaze yaw {yaw:+6.1f}° pitch {pitch:+6.1f}°"
    else:
        gaze = "gaze   —"
    return f"t={t_s:6.1f}s  {n:3d} frames  face {faces:3d}/{n:<3d} {gaze}  fast path {ms:5.2f} ms"


def run_stream(source, fp: FastPath, *, frames: int | None, jsonl: bool, out=None) -> dict:
    out = out or sys.stdout  # looked up now: a default would keep the stdout of import time
    tally = Tally()
    window: list[GazeSample] = []
    t_first = t_mark = None
    for i, frame in enumerate(source):
        if frames is not None and i >= frames:
            break
        s = fp.process(frame)
        tally.add(s)
        if jsonl:
            print(json.dumps(sample_json(s)), file=out)
            continue
        if t_first is None:
            t_first = t_mark = frame.t_ns
        window.append(s)
        # One line per second of *source* time, so a video prints the same lines every run.
        if frame.t_ns - t_mark >= 1_000_000_000:
            print(status_line((frame.t_ns - t_first) / 1e9, window), file=out, flush=True)
            window, t_mark = [], frame.t_ns
    if window and not jsonl:
        print(status_line((window[-1].t_ns - (t_first or 0)) / 1e9, window), file=out)
    return tally.summary()


def load_mapper(path: Path, fp: FastPath, screen_px=None) -> ProfileMapper:
    """The profile's fit for the gaze model this fast path runs (kept, or refitted once from
    its calibration session; `tools.runtime.hotreload.profile_for_model`)."""
    from gazeloop.tools.runtime.hotreload import profile_for_model

    prof, said = profile_for_model(Path(path), fp)
    print(said, file=sys.stderr, flush=True)
    screen = prof.screen.with_px(*screen_px) if screen_px else None
    return ProfileMapper(prof, screen)


def _profile_user(path) -> str:
    """Whose registry serves a profile's points: the user it was made for."""
    if not Path(path).is_file():
        raise ProfileError(f"{path}: no such profile")
    return Profile.load(path).user


def run(args: argparse.Namespace) -> int:
    for flag in ("screen_px", "model_id"):  # they were silently ignored
        if getattr(args, flag) and not args.profile:
            raise UserError(f"--{flag.replace('_', '-')} is for a --profile's points; give one")
    cfg: FastPathConfig = fastpath_config(args)
    if args.profile:  # the model the profile's user is served: their promoted one
        from gazeloop.tools.runtime.hotreload import startup_model

        user = _profile_user(args.profile)
        cfg, said = startup_model(cfg, user=user, model_id=args.model_id)
        print(said, file=sys.stderr, flush=True)
    fp = FastPath(cfg)
    mapper = None
    if args.profile:
        mapper = load_mapper(args.profile, fp, args.screen_px)
        fp.set_mapper(mapper)
    with open_source(args.source, **_read_as(args, mapper)) as src:
        summary = run_stream(src, fp, frames=args.frames, jsonl=args.jsonl)
    fp.close()
    print(json.dumps({"summary": summary}) if args.jsonl else _pretty(summary))
    return 0


def _read_as(args: argparse.Namespace, mapper: ProfileMapper | None) -> dict:
    """How a session folder's images are read: flipped back when they are selfie views.
    The flag, else the manifest; a folder that says nothing is read as the profile's
    frames were (`eval --profile` does the same): a mapping fitted on un-mirrored frames
    puts a mirrored face's gaze on the other side of the screen."""
    refuse_mirrored(args.source, args.mirrored)
    folder = Path(str(args.source)).expanduser()
    if is_camera(args.source) or not folder.is_dir():  # as `open_source` decides
        return {}
    if args.mirrored is not None:
        return {"unmirror": args.mirrored}
    chosen = mapper.profile.fit.chosen if mapper is not None else None
    if chosen is None or chosen.mirrored is None:
        return {}
    try:
        stated = read_session(folder).mirrored_stated
    except SessionError:
        return {}  # the source says what is wrong with it, in its own words
    unmirror = read_as_fitted(stated, mapper.profile)
    return {} if unmirror is None else {"unmirror": unmirror}


def _pretty(s: dict) -> str:
    lines = ["summary:"]
    for k, v in s.items():
        if isinstance(v, dict):  # a range: words, not a Python dict
            v = ", ".join(f"{name} {x:g}" for name, x in v.items())
        lines.append(f"  {k:16s} {'—' if v is None else v}")
    return "\n".join(lines)
