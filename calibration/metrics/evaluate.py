"""Honest evaluation of a screen mapping: leave-one-TARGET-out, next to the constant baseline.

Frames of one target are not independent (same fixation, same head position), so holding
out single frames would let a mapping memorise the target; every number here holds out a
whole target, and hyper-parameters are chosen inside each fold (nested).

Errors are of the point the user would see: when the screen is known, a prediction off it is
taken at its edge, where the fast path shows the cursor (`fastpath.pipeline` clips the
same way), and the report counts how many were (`clamped`). Without a known screen (the targets'
bounding box stands in for it) nothing is clamped: the targets need not reach the edges.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from gazeloop.calibration.frames import Reads, pick, rows_of
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import constant_baseline_loto, loto_predict, min_targets
from gazeloop.calibration.mapping.candidates import (
    GAZE,
    Choice,
    choose,
    default_candidates,
    loto_predict_candidates,
)


class TargetResult(BaseModel):
    target: int
    label_px: tuple[float, float]
    frames: int
    mean_px: float
    pred_px: tuple[float, float]  # mean prediction while held out


class RejectedFile(BaseModel):
    file: str
    why: str


class SelectionReport(BaseModel):
    """What nested selection chose on all targets, and how often each candidate won an
    outer fold (the evaluated numbers are of those fold-by-fold choices)."""

    chosen: str
    feature_set: str
    read: str  # "as read", or "other": the frames flipped the other way won
    hyper: dict[str, float]
    inner_px: dict[str, float | None]  # inner LOTO error of each candidate (None: no spare)
    dropped: dict[str, str]  # candidates that could not compete, with the reason
    picked_per_fold: dict[str, int]
    candidates: list[str]


class EvalReport(BaseModel):
    session: str
    mapping: str
    features: list[str]
    screen_px: tuple[int, int] | None
    frames: int
    frames_used: int
    targets: int
    mean_px: float
    median_px: float
    mean_pct_diag: float
    diag_basis: str  # "screen" | "targets"
    baseline_mean_px: float
    mean_deg: float | None
    per_target: list[TargetResult]
    rejected: list[RejectedFile]
    precision: dict | None = None
    # Whether the frames were selfie views, and who said so (a manifest, the caller, or the
    # frames themselves: `fastpath.collect.looks_mirrored`).
    mirrored: bool | None = None
    mirrored_basis: str | None = None
    selection: SelectionReport | None = None
    profile: str | None = None  # set when a saved profile was applied (no refit)
    # With `profile`: it was fitted on these very frames (in-sample, said wherever shown).
    in_sample: bool = False
    # Targets outside the convex hull of the others: held out, their error is extrapolation
    # (every corner of a 4-corner session), which DESIGN asks to be said.
    extrapolated: int | None = None
    # Held-out predictions that fell off the screen and are scored where the cursor would
    # be, at its edge; None when the screen is unknown (nothing clamped).
    clamped: int | None = None
    # The gaze network behind the numbers (file, sha256, read), set by the command that ran
    # it: another model gives other numbers for the same session.
    gaze_model: dict | None = None


@dataclass(slots=True)
class Evaluated:
    """The report plus the arrays a plot needs."""

    report: EvalReport
    labels_px: np.ndarray  # (n, 2)
    pred_px: np.ndarray  # (n, 2) held-out predictions
    groups: np.ndarray  # (n,)


# Targets a nested selection needs: 3 to fit any candidate, one held out.
MIN_SELECTION_TARGETS = 4


def robust_keep(x: np.ndarray, groups: np.ndarray, z: float = 3.5) -> np.ndarray:
    """Mask of frames kept after per-target outlier removal (median absolute deviation on
    each feature, a frame goes if any feature is beyond `z` robust sigmas). Targets with
    fewer than 4 frames are kept whole: a MAD of three numbers says nothing."""
    keep = np.ones(len(x), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) < 4:
            continue
        xs = x[idx]
        med = np.median(xs, axis=0)
        mad = np.median(np.abs(xs - med), axis=0) * 1.4826
        mad[mad < 1e-12] = np.inf  # constant feature: nothing is an outlier
        keep[idx] = np.all(np.abs(xs - med) / mad <= z, axis=1)
    return keep


def outlier_mask(reads: Reads) -> np.ndarray:
    """Frames kept by `robust_keep` on the gaze angles of every read, within each target."""
    groups = rows_of(reads).groups
    keep = np.ones(len(groups), dtype=bool)
    for frames in reads.values():
        keep &= robust_keep(frames.matrix(GAZE), groups)
    return keep


def evaluate_arrays(
    x: np.ndarray,
    labels_px: np.ndarray,
    groups: np.ndarray,
    *,
    session: str,
    features: list[str],
    screen: ScreenGeometry | None,
    mapping: str = "ridge",
    frames: int | None = None,
    rejected: list[tuple[str, str]] | None = None,
    names: list[str] | None = None,
    keep: np.ndarray | None = None,
) -> Evaluated:
    """Leave-one-target-out evaluation of `mapping` on features `x` against `labels_px`.

    Without a known screen, normalisation and the % diagonal use the targets' bounding box
    (`diag_basis="targets"`). `keep`: the frames kept, when the caller has judged the
    per-target outliers already (`fixed_keep`, e.g. within a target of one sitting); by
    default they are judged here, within each target."""
    rejected = list(rejected or [])
    groups = np.asarray(groups)
    need = min_targets(mapping) + 1  # one more than the fit needs: one is always held out
    n_targets = len(np.unique(groups))
    if n_targets < need:
        raise ValueError(
            f"{session}: {n_targets} usable targets; leave-one-target-out evaluation of "
            f"'{mapping}' needs at least {need}"
        )
    if keep is None:
        keep = fixed_keep(x, features, groups)
    for i in np.flatnonzero(~keep):
        rejected.append((names[i] if names else f"frame {i}", "outlier within its target"))
    x, labels_px, groups = x[keep], labels_px[keep], groups[keep]
    geo, _ = _geometry(screen, labels_px)
    y = geo.to_norm(labels_px)
    aspect = geo.px[0] / geo.px[1]
    opts = mapping_options(mapping, screen)
    pred = geo.to_px(loto_predict(mapping, x, y, groups, aspect=aspect, options=opts))
    return _evaluated(
        pred,
        labels_px,
        groups,
        screen,
        session=session,
        mapping=mapping,
        features=features,
        frames=frames if frames is not None else len(x) + len(rejected),
        rejected=rejected,
    )


def as_shown(pred_px: np.ndarray, screen: ScreenGeometry) -> tuple[np.ndarray, int]:
    """Predictions (px) where the cursor would show them: on the screen, a point beyond an
    edge at that edge. Returns them and how many were moved."""
    norm = screen.to_norm(pred_px)
    off = np.any((norm < 0) | (norm > 1), axis=1)
    return screen.to_px(screen.clamp_norm(norm)), int(off.sum())


def _geometry(screen: ScreenGeometry | None, labels_px: np.ndarray):
    if screen is not None:
        return screen, "screen"
    return ScreenGeometry.from_targets(labels_px), "targets"


def _evaluated(
    pred: np.ndarray,
    labels_px: np.ndarray,
    groups: np.ndarray,
    screen: ScreenGeometry | None,
    *,
    session: str,
    mapping: str,
    features: list[str],
    frames: int,
    rejected: list[tuple[str, str]],
    held_out: bool = True,
) -> Evaluated:
    """The report of predictions `pred` (px) against `labels_px`, per target and overall,
    next to the constant predictor (the mean of the other targets)."""
    geo, basis = _geometry(screen, labels_px)
    clamped = None
    if screen is not None:
        pred, clamped = as_shown(pred, screen)
    y = geo.to_norm(labels_px)
    base = geo.to_px(constant_baseline_loto(y, groups))
    err = np.linalg.norm(pred - labels_px, axis=1)
    base_err = np.linalg.norm(base - labels_px, axis=1)
    diag = float(np.hypot(*geo.px))
    per_target = _per_target(pred, labels_px, groups, err)
    mean_deg = None
    if screen is not None:
        deg = screen.error_deg(err)
        mean_deg = None if deg is None else round(float(np.mean(deg)), 3)
    report = EvalReport(
        session=session,
        mapping=mapping,
        features=features,
        screen_px=screen.px if screen is not None else None,
        frames=frames,
        frames_used=len(pred),
        targets=len(per_target),
        mean_px=round(float(err.mean()), 2),
        median_px=round(float(np.median(err)), 2),
        mean_pct_diag=round(100 * float(err.mean()) / diag, 3),
        diag_basis=basis,
        baseline_mean_px=round(float(base_err.mean()), 2),
        mean_deg=mean_deg,
        per_target=per_target,
        rejected=[RejectedFile(file=f, why=w) for f, w in rejected],
        clamped=clamped,
        # `held_out`: each target predicted without its own frames; else nothing is
        # extrapolated (a saved profile applied unchanged).
        extrapolated=int(outside_the_others([t.label_px for t in per_target]).sum())
        if held_out
        else None,
    )
    return Evaluated(report=report, labels_px=labels_px, pred_px=pred, groups=groups)


def _per_target(
    pred: np.ndarray, labels_px: np.ndarray, groups: np.ndarray, err: np.ndarray
) -> list[TargetResult]:
    """Each target's frames, mean error and mean prediction."""
    out = []
    for g in np.unique(groups):
        m = groups == g
        out.append(
            TargetResult(
                target=int(g),
                label_px=tuple(float(v) for v in labels_px[m][0]),
                frames=int(m.sum()),
                mean_px=round(float(err[m].mean()), 2),
                pred_px=tuple(round(float(v), 2) for v in pred[m].mean(axis=0)),
            )
        )
    return out


def outside_the_others(points, tol: float = 0.02) -> np.ndarray:
    """(n,) whether each point lies outside the convex hull of the other points by more than
    `tol` of the points' span (so a grid's edge midpoint, a hair off its row, is inside;
    with the others all on a line, or fewer than 3, nothing is inside). Pure numpy: scipy is
    not among what a laptop installs."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    out = np.ones(len(pts), dtype=bool)
    span = float(np.hypot(*np.ptp(pts, axis=0))) if len(pts) else 0.0
    for i in range(len(pts)):
        hull = _hull(np.delete(pts, i, axis=0))
        if len(hull) < 3:  # no area to be inside
            continue
        edges = np.roll(hull, -1, axis=0) - hull
        normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)  # outward: hull is CCW
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        out[i] = float(((pts[i] - hull) * normals).sum(axis=1).max()) > tol * span
    return out


def _hull(pts: np.ndarray) -> np.ndarray:
    """The convex hull's corners, counter-clockwise (Andrew's monotone chain); collinear
    points give 2 or fewer."""
    pts = np.unique(pts, axis=0)  # sorted by x, then y
    if len(pts) < 3:
        return pts

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq) -> list:
        h: list = []
        for p in seq:
            while len(h) >= 2 and cross(h[-2], h[-1], p) <= 0:
                h.pop()
            h.append(p)
        return h

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def measured_as(r: EvalReport) -> str:
    """How a report's numbers were made, in the words every output uses (text, HTML, plot):
    an in-sample number must never read as leave-one-target-out."""
    if r.profile is not None:
        if r.in_sample:
            return (
                "a saved profile applied to the frames it was fitted on (in-sample: not the "
                "error a new point or a new sitting sees)"
            )
        return "a saved profile applied unchanged (no refit)"
    said = f"leave-one-target-out over {r.targets} targets"
    if r.extrapolated:
        said += f" ({r.extrapolated} outside the others' span: their error is extrapolation)"
    return said


def evaluate_candidates(
    reads: Reads,
    *,
    session: str,
    screen: ScreenGeometry | None,
    candidates: list | None = None,
    frames: int | None = None,
    rejected: list[tuple[str, str]] | None = None,
    drop_outliers: bool = True,
) -> tuple[Evaluated, Choice]:
    """Leave-one-target-out of the whole choice: in each outer fold the candidates (feature
    set, mapping family, read of the frames) compete by inner LOTO on the other targets
    (`mapping.candidates`), and the held-out target is predicted by the winner. Returns the
    evaluation and the choice made on all targets (what a profile would store). `frames`:
    how many the session had before any was left out (default: these and `rejected`).
    `drop_outliers` False: the caller removed per-target outliers already (pooled sittings,
    where a target's frames differ between sittings on purpose)."""
    rejected = list(rejected or [])
    cands = candidates or default_candidates(tuple(reads))
    names = rows_of(reads).names
    keep = outlier_mask(reads) if drop_outliers else np.ones(len(names), dtype=bool)
    rejected += [(str(names[i]), "outlier within its target") for i in np.flatnonzero(~keep)]
    reads = pick(reads, keep)
    kept = rows_of(reads)
    labels_px, groups = kept.labels_px, kept.groups
    n_targets = len(np.unique(groups))
    if n_targets < MIN_SELECTION_TARGETS:
        raise ValueError(
            f"{session}: {n_targets} usable targets; leave-one-target-out evaluation needs "
            f"at least {MIN_SELECTION_TARGETS} (3 to fit, one held out)"
        )
    geo, _ = _geometry(screen, labels_px)
    options = {"geometric": geometric_options(screen)}
    pred, picked = loto_predict_candidates(cands, reads, geo, options=options)
    final = choose(cands, reads, geo, options=options)
    c = final.candidate
    ev = _evaluated(
        geo.to_px(pred),
        labels_px,
        groups,
        screen,
        session=session,
        mapping=c.mapping,
        features=list(c.features),
        frames=frames if frames is not None else len(groups) + len(rejected),
        rejected=rejected,
    )
    ev.report.selection = SelectionReport(
        chosen=c.label,
        feature_set=c.feature_set,
        read=c.read,
        hyper=final.hyper,
        inner_px={k: _norm_to_px(v, geo) for k, v in final.scores.items()},
        dropped=final.dropped,
        picked_per_fold=picked,
        candidates=[x.label for x in cands],
    )
    return ev, final


def _norm_to_px(v: float, geo: ScreenGeometry) -> float | None:
    # inner errors are in screen heights (x scaled by the aspect): px via the height
    return None if not np.isfinite(v) else round(float(v) * geo.px[1], 2)


def fixed_keep(x: np.ndarray, features: list[str], cells) -> np.ndarray:
    """Per-target outliers of a fixed mapping's frames, judged as the selection judges every
    candidate's: on the gaze angles when the features hold them (a head that moved within a
    target is no outlier: `eval --mapping geometric` dropped 4 more corners4 frames on eye
    position than its selection did), else on every column."""
    cols = [features.index(n) for n in GAZE if n in features]
    return robust_keep(x[:, cols] if len(cols) == len(GAZE) else x, np.asarray(cells))


def mapping_options(mapping: str, screen: ScreenGeometry | None) -> dict | None:
    """What a mapping is told of the screen (`geometric_options` for the geometric one; the
    fixed paths left it at its laptop prior on a 597 mm monitor)."""
    return geometric_options(screen) if mapping == "geometric" else None


def geometric_options(screen: ScreenGeometry | None) -> dict:
    """The physical screen for the geometric mapping when known (else its laptop prior)."""
    if screen is None or screen.mm is None:
        return {}
    return {"screen_w_mm": float(screen.mm[0]), "screen_h_mm": float(screen.mm[1])}


def evaluate_fixed(
    mapping,
    x: np.ndarray,
    labels_px: np.ndarray,
    groups: np.ndarray,
    *,
    session: str,
    screen: ScreenGeometry,
    mapping_name: str,
    features: list[str],
    frames: int,
    rejected: list[tuple[str, str]],
) -> Evaluated:
    """A fitted mapping applied unchanged (a profile from another sitting): no refit, the
    same report as leave-one-target-out. Frames it cannot place (NaN) are left out."""
    pred = screen.to_px(mapping.predict(x))
    ok = np.isfinite(pred).all(axis=1)
    rejected = list(rejected) + [
        (f"frame {i}", "the mapping cannot place it") for i in np.flatnonzero(~ok)
    ]
    if ok.sum() == 0:
        raise ValueError(f"{session}: the profile's mapping placed no frame on the screen")
    return _evaluated(
        pred[ok],
        labels_px[ok],
        groups[ok],
        screen,
        session=session,
        mapping=mapping_name,
        features=features,
        frames=frames,
        rejected=rejected,
        held_out=False,
    )


def plot_report(ev: Evaluated, path, *, title: str | None = None) -> None:
    """Targets, held-out predictions and error vectors on the screen rectangle (PNG)."""
    from gazeloop.calibration.metrics.plotting import STRONG, drawable, pyplot, wrap

    plt = pyplot()
    r = ev.report
    w, h = r.screen_px or (
        float(ev.labels_px[:, 0].max() * 1.05),
        float(ev.labels_px[:, 1].max() * 1.05),
    )
    fig, ax = plt.subplots(figsize=(8, 8 * h / w + 1.0), dpi=110)
    ax.add_patch(plt.Rectangle((0, 0), w, h, fill=False, lw=1.5, ec="0.3"))
    if r.screen_px is None:
        # Not a screen: without its size, a box from the origin to just past the farthest
        # target stands in for it (the % of diagonal uses the targets' own bounding box).
        ax.annotate("screen size unknown: drawn to 1.05 × the farthest target", (w, h),
                    xytext=(-3, -3), textcoords="offset points", ha="right", va="top", fontsize=7,
                    color="0.3", style="italic")  # fmt: skip
    for i, t in enumerate(r.per_target):
        _draw_target(ax, ev, t, STRONG[i % len(STRONG)])
    # The screen with a margin, and every prediction: one beyond the margin was cut off
    # (its error printed at the target, its dot and arrow nowhere).
    lo = np.minimum([-0.05 * w, -0.05 * h], ev.pred_px.min(axis=0) - 0.02 * h)
    hi = np.maximum([1.05 * w, 1.05 * h], ev.pred_px.max(axis=0) + 0.02 * h)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(hi[1], lo[1])  # screen y grows downward
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    _legend(ax, held_out=r.profile is None)
    ax.set_title(drawable(wrap(title or r.session, 110) + "\n" + _subtitle(r)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _draw_target(ax, ev: Evaluated, t: TargetResult, colour) -> None:
    """A target's frames (dots), the arrow to their mean and its error, written on the side
    away from the arrow, where its own predictions do not land. The number is the mean of
    the frames' errors (what the report's table and mean are made of), which is at least
    the arrow's length: scattered frames about a close mean are still that far off."""
    m = ev.groups == t.target
    ax.scatter(ev.pred_px[m, 0], ev.pred_px[m, 1], s=9, color=colour, alpha=0.8, lw=0)
    ax.annotate(
        "", xy=t.pred_px, xytext=t.label_px, arrowprops=dict(arrowstyle="->", color=colour, lw=1.5)
    )
    ax.plot(*t.label_px, marker="+", ms=14, mew=2, color="k")
    d = np.subtract(t.pred_px, t.label_px)
    # Points, y up on the page, while screen y grows downward: away from d is (-dx, +dy).
    sx, sy = (-1.0 if d[0] > 0 else 1.0), (1.0 if d[1] > 0 else -1.0)
    ax.annotate(
        f"{t.mean_px:.0f}",
        xy=t.label_px,
        xytext=(7 * sx, 7 * sy),
        textcoords="offset points",
        ha="left" if sx > 0 else "right",
        va="bottom" if sy > 0 else "top",
        fontsize=8,
        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colour, lw=0.8, alpha=0.85),
    )


def _legend(ax, *, held_out: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="+", ms=9, mew=2, color="k", label="target"),
        Line2D([], [], ls="", marker="o", ms=4, color="0.35",
               label=("held-out " if held_out else "") + "prediction, one per frame"),
        Line2D([], [], color="0.35", lw=1.5,
               label="error: target → mean prediction (written: the frames' mean error, px)"),
    ]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09),
              ncol=3, frameon=False, borderaxespad=0.2)  # fmt: skip


def _subtitle(r: EvalReport) -> str:
    diagonal = "the screen's diagonal" if r.diag_basis == "screen" else "the targets' diagonal"
    return (
        textwrap.fill(
            f"{r.mapping} on {', '.join(r.features)}, {measured_as(r)}; "
            f"{r.targets} targets, {r.frames_used} of {r.frames} frames used",
            100,  # 110 reached the figure's edge at 9 pt on an 8-inch figure
        )
        + f"\nmean {r.mean_px:.0f} px ({r.mean_pct_diag:.1f}% of {diagonal}), "
        f"median {r.median_px:.0f} px; constant predictor {r.baseline_mean_px:.0f} px"
    )
