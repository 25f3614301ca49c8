"""The calibration procedure as a reusable core: targets, collection, cleaning, fit, report.

A program (the on-screen grid, a test, a replayed session) shows `current` to the user and
feeds every fast-path sample to `feed`; the run decides when a target has settled, what to
keep, and when it is done. Samples are duck-typed: anything with `feature_dict()` and a
`quality` carrying `usable` works, so this module does not depend on the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calibration.evaluate import evaluate_arrays, robust_keep
from calibration.geometry import ScreenGeometry
from calibration.mapping import fit_select
from calibration.profile import DEFAULT_FEATURES, FitReport, MappingSpec, Profile

LAYOUTS = (9, 16, 25)


def grid_targets(n: int = 25, margin: float = 0.08) -> np.ndarray:
    """n targets (9, 16 or 25) on a square grid inside `margin` of each edge, normalised,
    in serpentine order so the eye never jumps across the whole screen between targets."""
    if n not in LAYOUTS:
        raise ValueError(f"a calibration grid has {', '.join(map(str, LAYOUTS))} targets, not {n}")
    k = int(round(np.sqrt(n)))
    ticks = np.linspace(margin, 1 - margin, k)
    pts = []
    for r, y in enumerate(ticks):
        row = ticks if r % 2 == 0 else ticks[::-1]
        pts.extend((x, y) for x in row)
    return np.array(pts, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class ProcedureConfig:
    n_targets: int = 25
    margin: float = 0.08
    settle_s: float = 0.8  # after the dot arrives: a saccade plus the eye's settling
    collect_s: float = 1.0  # then frames are kept for this long
    min_frames: int = 8  # a target with fewer usable frames is retried once, then skipped
    features: tuple[str, ...] = tuple(DEFAULT_FEATURES)
    mapping: str = "ridge"


@dataclass
class TargetLog:
    xy: np.ndarray
    kept: list[np.ndarray] = field(default_factory=list)
    t_ns: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    tries: int = 0


class CalibrationRun:
    """Feed samples in time order; read `current` (normalised target or None when done)."""

    def __init__(self, cfg: ProcedureConfig | None = None, targets: np.ndarray | None = None):
        self.cfg = cfg or ProcedureConfig()
        pts = grid_targets(self.cfg.n_targets, self.cfg.margin) if targets is None else targets
        self.targets = [TargetLog(np.asarray(p, dtype=np.float64)) for p in pts]
        self._i = 0
        self._t0: int | None = None  # when the current target appeared
        self.skipped: list[int] = []

    @property
    def done(self) -> bool:
        return self._i >= len(self.targets)

    @property
    def current(self) -> np.ndarray | None:
        return None if self.done else self.targets[self._i].xy

    @property
    def index(self) -> int:
        return self._i

    def phase(self, t_ns: int) -> str:
        """ "settle" (dot shown, nothing kept yet), "collect", or "done" — for the display."""
        if self.done:
            return "done"
        if self._t0 is None or t_ns - self._t0 < self.cfg.settle_s * 1e9:
            return "settle"
        return "collect"

    def feed(self, t_ns: int, sample) -> None:
        if self.done:
            return
        if self._t0 is None:
            self._t0 = t_ns
        tgt = self.targets[self._i]
        elapsed = (t_ns - self._t0) / 1e9
        if elapsed < self.cfg.settle_s:
            return
        if elapsed > self.cfg.settle_s + self.cfg.collect_s:
            self._next(t_ns)
            return
        q = sample.quality
        if not q.face:
            why = "no face"
        elif q.blink:
            why = "blink"
        elif not q.usable:
            why = q.error or "unusable"
        else:
            d = sample.feature_dict()
            why = "" if d else "no gaze"
        if why:
            tgt.dropped[why] = tgt.dropped.get(why, 0) + 1
            return
        tgt.kept.append(np.array([d[n] for n in self.cfg.features], dtype=np.float64))
        tgt.t_ns.append(t_ns)

    def _next(self, t_ns: int) -> None:
        tgt = self.targets[self._i]
        tgt.tries += 1
        if len(tgt.kept) < self.cfg.min_frames and tgt.tries < 2:
            tgt.kept.clear()
            tgt.t_ns.clear()
        else:
            if len(tgt.kept) < self.cfg.min_frames:
                self.skipped.append(self._i)
            self._i += 1
        self._t0 = t_ns

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, Y normalised, target ids) of what was kept, skipped targets left out."""
        xs, ys, gs = [], [], []
        for i, t in enumerate(self.targets):
            if i in self.skipped or not t.kept:
                continue
            xs.extend(t.kept)
            ys.extend([t.xy] * len(t.kept))
            gs.extend([i] * len(t.kept))
        d = len(self.cfg.features)
        return (
            np.asarray(xs, dtype=np.float64).reshape(-1, d),
            np.asarray(ys, dtype=np.float64).reshape(-1, 2),
            np.asarray(gs, dtype=np.int64),
        )


def fit_profile(
    x: np.ndarray,
    y_norm: np.ndarray,
    groups: np.ndarray,
    *,
    screen: ScreenGeometry,
    features: list[str],
    user: str,
    device: str,
    gaze_model_id: str,
    gaze_model_sha256: str,
    mapping: str = "ridge",
    calibration_session: str | None = None,
) -> Profile:
    """Clean (per-target outliers), fit with nested selection, and report the honest
    leave-one-target-out error in the profile itself."""
    keep = robust_keep(x, groups)
    x, y_norm, groups = x[keep], y_norm[keep], groups[keep]
    aspect = screen.px[0] / screen.px[1]
    m, hyper, _ = fit_select(mapping, x, y_norm, groups, aspect=aspect)
    labels_px = screen.to_px(y_norm)
    ev = evaluate_arrays(
        x,
        labels_px,
        groups,
        session=calibration_session or "calibration",
        features=features,
        screen=screen,
        mapping=mapping,
    )
    r = ev.report
    return Profile(
        user=user,
        device=device,
        screen=screen,
        features=list(features),
        gaze_model_id=gaze_model_id,
        gaze_model_sha256=gaze_model_sha256,
        mapping=MappingSpec(name=mapping, params=m.params()),
        fit=FitReport(
            targets=r.targets,
            frames=r.frames_used,
            mean_px=r.mean_px,
            median_px=r.median_px,
            baseline_mean_px=r.baseline_mean_px,
            hyper={k: float(v) for k, v in hyper.items()},
        ),
        calibration_session=calibration_session,
    )
