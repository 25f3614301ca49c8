"""`gazeloop oracle eval`: an oracle over a labelled session, measured against its targets.

Per label: returned or not (and why not), the distance from the truth (a point label) or the
perpendicular distance and the angle between the line and the direction from its origin to
the truth (a line label), and latency; then medians. Which oracle ran is in the output:

- `targets`: the session's own targets handed to `TargetOracle` (the calibration grid's
  and the verify key's label): distance 0 by construction; it checks the plumbing.
- `clicks`: clicks at each target with human timing (`tools.runtime.click_replay`), judged
  by the click rules on the session's real fast-path points (leave-one-target-out mapping).
  A kept click's label is the click, on the target, so its distance is 0 by construction;
  what is measured is which clicks are kept, and how far the fixation that vouched for each
  was from the target (`fixation_px`).
- `moondream`: `MoondreamOracle` on every settled frame, through the API-shaped double
  unless real weights are asked for (`--weights`); the output's `oracle_note` says which.

Frames marked settling (the eyes still moving to the target) are not given to the oracle:
the truth is not where the person looks. The summary counts them under `not_scored`.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import LineObservation, PointObservation, Snapshot
from gazeloop.calibration.store.session import (
    ImageDecodeError,
    Session,
    SessionItem,
    load_image,
    read_session,
)
from gazeloop.fastpath.collect import target_ids
from gazeloop.oracle.base import OracleError, check_label
from gazeloop.tools.errors import UserError

DEFAULT_CAMERA_NORM = (0.5, -0.03)  # a webcam centred just above the visible area


@dataclass(frozen=True, slots=True)
class LabelResult:
    item: str  # the frame (or click) this label is about
    target: int  # the session's target id (`fastpath.collect.target_ids`)
    truth_px: tuple[float, float]
    returned: bool
    why_not: str | None = None
    kind: str | None = None  # "point" or "line"
    distance_px: float | None = None
    perpendicular_px: float | None = None
    angle_deg: float | None = None
    latency_ms: float | None = None
    fixation_px: float | None = None
    point_px: tuple[float, float] | None = None  # a point label, on the screen
    # a line label: its origin on the screen and its unit direction on the glass (px)
    line_px: tuple[float, float, float, float] | None = None


def point_distance_px(xy_norm, truth_px, size) -> float:
    d = np.asarray(xy_norm, dtype=np.float64) * size - np.asarray(truth_px, dtype=np.float64)
    return float(np.hypot(*d))


def line_on_glass(origin_norm, direction_norm, size) -> tuple[np.ndarray, np.ndarray]:
    """A line's origin in px and its unit direction on the glass: the direction is
    unit-length in normalised units, which on a non-square screen is not the same direction
    on the glass."""
    o = np.asarray(origin_norm, dtype=np.float64) * size
    u = np.asarray(direction_norm, dtype=np.float64) * size
    return o, u / np.hypot(*u)


def line_errors(origin_norm, direction_norm, truth_px, size) -> tuple[float, float]:
    """(perpendicular distance px, angle degrees) of the truth from a line, in pixels
    (`line_on_glass`)."""
    o, u = line_on_glass(origin_norm, direction_norm, size)
    v = np.asarray(truth_px, dtype=np.float64) - o
    perp = abs(u[0] * v[1] - u[1] * v[0])
    angle = math.degrees(math.atan2(perp, float(u @ v)))
    return float(perp), float(angle)


def summarise(
    results: list[LabelResult], not_scored: dict[str, int] | None = None
) -> dict[str, Any]:
    """Counts and medians over `results`; `not_scored`: frames left out before labelling,
    by why, reported beside them and in none of the numbers."""

    def med(name: str, returned_only: bool = False) -> float | None:
        vals = [
            getattr(r, name)
            for r in results
            if getattr(r, name) is not None and (r.returned or not returned_only)
        ]
        return round(statistics.median(vals), 2) if vals else None

    returned = sum(r.returned for r in results)
    why: dict[str, int] = {}
    for r in results:
        if r.why_not:
            why[r.why_not] = why.get(r.why_not, 0) + 1
    return {
        "labels": len(results),
        "returned": returned,
        "returned_share": round(returned / len(results), 3) if results else None,
        "why_not": dict(sorted(why.items())),
        "not_scored": dict(sorted((not_scored or {}).items())),
        "median_distance_px": med("distance_px"),
        "median_perpendicular_px": med("perpendicular_px"),
        "median_angle_deg": med("angle_deg"),
        "median_latency_ms": med("latency_ms"),
        # a refused click's fixation vouched for nothing (a `far` one is far by definition)
        "median_fixation_px": med("fixation_px", returned_only=True),
    }


def scored_frames(session: Session) -> tuple[list[tuple[SessionItem, int]], dict[str, int]]:
    """The frames where the person looks at the truth, each with its target id (as
    `gazeloop eval` and the clicks replay number them), and how many were left out, by why:
    `settling` frames are left out as `gazeloop eval` and the demo leave them out."""
    frames, settling = [], 0
    for it, target in zip(session.items, target_ids(session), strict=True):
        if (it.record.model_extra or {}).get("settling"):
            settling += 1
        else:
            frames.append((it, target))
    return frames, ({"settling": settling} if settling else {})


def label_frames(
    oracle, session: Session, screen: ScreenGeometry, give_target: bool
) -> tuple[list[LabelResult], dict[str, int]]:
    """Each settled frame of the session as a snapshot through `oracle`, checked like the
    worker checks every answer; and the frames not scored, by why (`scored_frames`)."""
    size = np.asarray(screen.px, dtype=np.float64)
    frames, not_scored = scored_frames(session)
    if not frames and not_scored:  # medians of nothing would read as an oracle that failed
        raise UserError(
            f"{session.folder}: every frame is marked settling (eyes still on their way to the "
            "target); nothing to score"
        )
    out = []
    for it, target in frames:
        truth = tuple(float(v) for v in it.label_px)
        tn = (truth[0] / size[0], truth[1] / size[1])
        try:
            image = load_image(it.image)
        except ImageDecodeError as e:  # one bad picture is a frame not labelled, said
            out.append(LabelResult(it.name, target, truth, False, f"error: {it.image.name}: {e}"))
            continue
        snap = Snapshot(
            t_ns=it.t_ms * 1_000_000,
            image=image,
            snapshot_id=it.name,
            target_xy=tn if give_target else None,
        )
        t0 = time.perf_counter()
        try:
            label = check_label(oracle.label(snap, threading.Event()), snap)
        except OracleError as e:
            out.append(LabelResult(it.name, target, truth, False, f"error: {e}"))
            continue
        ms = (time.perf_counter() - t0) * 1e3
        out.append(_measured(it.name, target, truth, label, ms, size))
    return out, not_scored


def _measured(name, target, truth, label, ms, size) -> LabelResult:
    obs = label.observation
    if isinstance(obs, PointObservation):
        d = point_distance_px(obs.xy, truth, size)
        xy = (float(obs.xy[0] * size[0]), float(obs.xy[1] * size[1]))
        return LabelResult(name, target, truth, True, None, "point", d, latency_ms=ms, point_px=xy)
    if isinstance(obs, LineObservation):
        perp, ang = line_errors(obs.origin, obs.direction, truth, size)
        o, u = line_on_glass(obs.origin, obs.direction, size)
        line = (float(o[0]), float(o[1]), float(u[0]), float(u[1]))
        return LabelResult(
            name, target, truth, True, None, "line", None, perp, ang, ms, line_px=line
        )
    why = "no observation" + ("" if label.in_frame is None else f" (in_frame={label.in_frame})")
    return LabelResult(name, target, truth, False, why, latency_ms=ms)


def session_and_screen(folder: Path, screen_px, mirrored) -> tuple[Session, ScreenGeometry, str]:
    from gazeloop.calibration.drift.simulation import screen_from_targets

    session = read_session(folder, screen_px=screen_px, mirrored=mirrored)
    if not session.items:
        raise UserError(f"{folder}: no labelled frames")
    if session.screen_px is not None:
        px, basis = tuple(session.screen_px), "session"
    else:
        targets = np.array([it.label_px for it in session.items])
        if len(np.unique(targets, axis=0)) < 2:  # one target at (1675, 21) made 3351x42
            raise UserError(
                f"{folder}: the screen size is unknown (no session.json) and one target "
                "cannot tell it: give --screen-px W H"
            )
        px = screen_from_targets(targets)
        basis = "targets with equal margins (no session.json)"
    m = session.manifest
    mm = getattr(m, "screen_mm", None) if m else None
    cam = getattr(m, "camera_mm", None) if m else None
    return session, ScreenGeometry(px=px, mm=mm, camera_mm=cam), basis


def as_dicts(results: list[LabelResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        d = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(r).items()}
        d["truth_px"] = [round(v, 1) for v in r.truth_px]
        if r.point_px is not None:
            d["point_px"] = [round(v, 1) for v in r.point_px]
        if r.line_px is not None:
            d["line_px"] = [round(v, 1) for v in r.line_px[:2]] + [
                round(v, 4) for v in r.line_px[2:]
            ]
        out.append(d)
    return out


def eval_clicks(pts, screen_px, clicks_per_target: int, seed: int) -> list[LabelResult]:
    """`clicks_per_target` looks at each target from a random other one, each ending in a
    press with human timing (some mid-saccade, some doubled), judged by the click rules on
    the session's fast-path points (`pts`: `bench_loop.SessionPoints`)."""
    from gazeloop.calibration.mapping import loto_predict, min_targets
    from gazeloop.oracle.clicks import Click, ClickRules, judge
    from gazeloop.tools.runtime.bench_loop import MAPPING, need_targets
    from gazeloop.tools.runtime.click_replay import HumanTiming, one_look

    what = f"the click replay, predicting each from the others ({MAPPING}, leave-one-target-out),"
    need_targets(pts, min_targets(MAPPING) + 1, what)
    size = np.asarray(screen_px, dtype=np.float64)
    truth = pts.truth_px / size
    pred_px = loto_predict(MAPPING, pts.x, truth, pts.groups, aspect=size[0] / size[1]) * size
    rules, timing = ClickRules(), HumanTiming()
    rng = np.random.default_rng(seed)
    ids = sorted({int(g) for g in pts.groups})
    frames_of = {g: np.flatnonzero(pts.groups == g) for g in ids}
    out = []
    for g in ids:
        for j in range(clicks_per_target):
            prev = ids[int(rng.integers(len(ids)))] if len(ids) > 1 else g
            while prev == g and len(ids) > 1:
                prev = ids[int(rng.integers(len(ids)))]
            t, xy, _, presses, target = one_look(
                rng, frames_of, prev, g, pred_px, pts.truth_px, np.zeros(2), timing
            )
            clicks = [Click(round(p * 1e6), (float(target[0]), float(target[1]))) for p in presses]
            t0 = time.perf_counter()
            verdicts = judge(clicks, np.round(t * 1e6).astype(np.int64), xy, rules)
            # A label is known once no second press can follow: the burst window, then the
            # judging itself.
            ms = rules.burst_ms + (time.perf_counter() - t0) * 1e3 / len(verdicts)
            truth_px = (float(target[0]), float(target[1]))
            for k, v in enumerate(verdicts):
                fix = None
                if v.fixation is not None:
                    fix = float(np.hypot(*np.subtract(v.fixation.centre_px, truth_px)))
                out.append(
                    LabelResult(
                        f"target {g} look {j} press {k}",
                        g,
                        truth_px,
                        v.accepted,
                        None if v.accepted else v.reason,
                        "point" if v.accepted else None,
                        0.0 if v.accepted else None,
                        latency_ms=ms,
                        fixation_px=fix,
                        point_px=truth_px if v.accepted else None,
                    )
                )
    return out


def moondream_oracle(screen: ScreenGeometry, cfg, weights: bool):
    """(oracle, note): the real model when `weights` (which fails offline with the loader's
    own advice), else the API-shaped double, said so. `cfg`: a `MoondreamConfig`."""
    from gazeloop.oracle.moondream import MoondreamOracle, load_moondream
    from gazeloop.oracle.moondream_double import NOTE, MoondreamDouble

    cam = screen.camera_norm
    cam_note = "the session's camera position"
    if cam is None:
        cam, cam_note = DEFAULT_CAMERA_NORM, f"camera assumed at {DEFAULT_CAMERA_NORM} (normalised)"
    cam = (float(cam[0]), float(cam[1]))
    if not weights:
        model = MoondreamDouble()
        return MoondreamOracle(model, cfg, screen, camera_norm=cam), f"{NOTE}; {cam_note}"
    try:
        model = load_moondream(cfg)
    except OracleError as e:
        # Its lines as they are: the advice holds commands to copy, one per line.
        raise UserError(str(e).strip()) from None
    return MoondreamOracle(
        model, cfg, screen, camera_norm=cam
    ), f"Moondream {cfg.model_id}@{cfg.revision}; {cam_note}"


CLICKS_EVAL_NOTE = (
    "clicks replayed at the session's targets with human timing, judged by the click rules "
    "on the session's real fast-path points (leave-one-target-out mapping); a kept click's "
    "label is on its target (distance 0 by construction); latency is the burst window the "
    "rules wait for a second press, plus the judging. No person clicked"
)
