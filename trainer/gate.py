"""The promotion gate: a trained candidate replaces its parent only if it is better on whole
sessions it never trained on, measured as the product measures a model.

Each held-out session is run through the fast path twice, once with the parent's ONNX and
once with the candidate's, and scored as `gazeloop eval` scores it: nested
leave-one-target-out among the product's candidates (read of the frames, feature set,
geometric or ridge mapping; `calibration.metrics.evaluate.evaluate_candidates`), the error
the user would see after calibrating with that model, whichever mapping suits it. (Until
2026-12-05 the gate fitted a plain ridge on the default features, which is not what a user
calibrates with: a model better only under that ridge could be promoted.) The comparison is
paired: per session, and inside a session per target (the same target held out for both
models), so the noise of which session or target is hard cancels out.

The margin is parent − candidate (px), and it and its standard error always weigh alike:
with at least `MIN_SESSIONS_FOR_SESSION_SE` sessions both come from the per-session margins
(each session weighing the same); with fewer (which give no usable spread between sessions)
both come from the pooled per-target paired differences, so each target weighs the same and
a session weighs by its targets. (Until 2026-12-06 the margin averaged sessions equally
under a per-target SE: a 2-target session at +30 px outvoted a 16-target one at −2 px.) The
parent's error the minimum gain is a percentage of is weighted the same way. The candidate
is promoted only when the margin exceeds both `z` standard errors
and `min_gain_pct` % of the parent's error: a change inside the noise, or too small to
matter, keeps the parent.

Beside the decision, consecutive held-out sessions on the same screen (a user's sittings, in
the order given) are also scored the way a user meets drift: the profile one sitting
would make, used unchanged on the next (`carry_over_px`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.geometry import ScreenGeometry, session_screen
from gazeloop.calibration.mapping.candidates import Choice
from gazeloop.calibration.metrics.evaluate import as_shown, evaluate_candidates
from gazeloop.calibration.store.session import copy_among, frame_times, read_session
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.views import NoUsableFrames, session_views
from gazeloop.trainer.datasets import DataSource, detect_kind
from gazeloop.trainer.readers.sessions import is_one_session, session_folders

log = logging.getLogger(__name__)

MIN_SESSIONS_FOR_SESSION_SE = 3


class SessionScore(BaseModel):
    """One held-out session scored with both models (leave-one-target-out, px)."""

    model_config = ConfigDict(extra="forbid")

    session: str
    targets: int
    parent_px: float
    candidate_px: float
    margin_px: float  # parent − candidate: positive means the candidate is better
    target_margins_px: list[float]
    # A profile fitted on the previous held-out session, scored on this one (px); None for
    # the first session or another screen.
    carry_parent_px: float | None = None
    carry_candidate_px: float | None = None


class GateResult(BaseModel):
    """What the gate decided and the numbers it decided on (stored in the model card)."""

    model_config = ConfigDict(extra="forbid")

    promoted: bool
    reason: str
    parent: str | None = None
    # The registry version served when it was judged (None: nothing was), which a relaunch
    # may still promote it over (`ship._finish_promotion`).
    parent_version: int | None = None
    candidate: str | None = None
    sessions: list[SessionScore] = []
    parent_px: float | None = None
    candidate_px: float | None = None
    margin_px: float | None = None
    margin_se_px: float | None = None
    se_basis: str | None = None
    needed_px: float | None = None
    carry_parent_px: float | None = None  # mean over the sessions that have one
    carry_candidate_px: float | None = None
    z: float | None = None
    min_gain_pct: float | None = None

    def text(self) -> str:
        """The decision and its numbers, for a person reading the terminal."""
        head = f"gate: {'PROMOTED' if self.promoted else 'NOT promoted'}: {self.reason}"
        lines = [head]
        for s in self.sessions:
            lines.append(
                f"  {s.session}: parent {s.parent_px:.1f} px, candidate {s.candidate_px:.1f} px "
                f"({s.targets} targets, leave-one-target-out)"
            )
        if self.carry_parent_px is not None:
            lines.append(
                f"  profile from the previous held-out session (not part of the decision): "
                f"parent {self.carry_parent_px:.1f} px, candidate {self.carry_candidate_px:.1f} px"
            )
        return "\n".join(lines)


def is_session(path: Path) -> bool:
    try:
        return detect_kind(Path(path)) == "session"
    except ValueError:
        return False


class _Held:
    """The sessions the gate judges on, to tell whether a training source is one of them:
    by resolved path (a link, `S/` for `S`), and by the capture times its frames are named
    by, so a copy of a held-out session (`cp -r`, a second mount of the same disk) is one
    too. A copy trained on was judged on its own frames, with no word."""

    def __init__(self, sessions: list[DataSource]) -> None:
        self.paths = {Path(h.path).resolve(): str(h.path) for h in sessions}
        self.times = {p: frame_times(p) for p in self.paths}

    def why(self, path: Path, named: str = "a --holdout") -> str | None:
        """Why `path` is held out, or None when it is not."""
        p = Path(path).resolve()
        if p in self.paths:
            return f"is {named}"
        if not is_one_session(p):
            return None
        copy = copy_among(frame_times(p), self.times.items())
        if copy is None:
            return None
        held, both = copy
        return f"holds {both} frames of {named} {self.paths[held]} (the same capture times: a copy)"


def _without_inside(src: DataSource, held: _Held, notes: list[str], named: str) -> DataSource:
    """`src` without the held-out sessions among the session folders inside it: a folder of
    sessions reads every one of them (`--data /data/sessions --holdout /data/sessions/a_3`),
    and the gate would judge on what was trained on."""
    folder = Path(src.path)
    if is_one_session(folder) or not folder.is_dir():
        return src
    inside = [(p, held.why(p, named)) for p in sorted(folder.iterdir()) if p.is_dir()]
    inside = [(p, why) for p, why in inside if why]
    if not inside:
        return src
    notes.extend(f"{p} {why}: not trained on (inside --data {src.path})" for p, why in inside)
    return src.model_copy(update={"exclude": [*src.exclude, *(p.resolve() for p, _ in inside)]})


@dataclass(slots=True)
class HoldoutChoice:
    train: list[DataSource]
    holdout: list[DataSource]
    notes: list[str] = field(default_factory=list)


def choose_holdout(data: list[DataSource], holdout: list[DataSource]) -> HoldoutChoice:
    """What trains and what the gate judges on. Named holdouts leave the training data if
    they were in it; without any, the last quarter (at least one) of the sessions of `data`
    is held out whole, as long as one session is left to train on. Sessions are counted
    inside folders of sessions too (`--data /data/sessions`): a held-out one is excluded
    from its folder's source. A held-out session is also one by another path or as a copy
    (`_Held`)."""
    if holdout:
        return _split(data, holdout, "a --holdout", [], say_same=True)
    sessions = [s for d in data for s in _sessions_of(d)]
    others = [d for d in data if not is_session(d.path)]
    n = max(1, len(sessions) // 4)
    if len(sessions) - n + len(others) < 1 or not sessions:
        why = "no session folder among --data to hold out whole: name one with --holdout"
        return HoldoutChoice(list(data), [], [why] if len(data) > 1 and not sessions else [])
    held = sessions[-n:]
    note = "held out for the promotion gate (not trained on): " + ", ".join(
        str(h.path) for h in held
    )
    return _split(data, held, "the held-out session", [note], say_same=False)


def _split(
    data: list[DataSource], held: list[DataSource], named: str, notes: list[str], say_same: bool
) -> HoldoutChoice:
    """`data` without `held` (whole sources, and sessions inside folders of them), each said
    in `notes` (`named`: how a held-out one is called); `say_same`: also those that are a
    held-out one itself, which the chosen ones' note has said already."""
    judged = _Held(held)
    train = []
    for d in data:
        why = judged.why(d.path, named)
        if why is None:
            train.append(_without_inside(d, judged, notes, named))
        elif say_same or Path(d.path).resolve() not in judged.paths:
            notes.append(f"{d.path} {why}: not trained on")
    return HoldoutChoice(train, list(held), notes)


def _sessions_of(src: DataSource) -> list[DataSource]:
    """The session folders `src` reads: itself, or the sessions inside a folder of them
    (each read as the folder's source says), in the reader's order."""
    if not is_session(src.path):
        return []
    folder = Path(src.path)
    if is_one_session(folder):
        return [src]
    excluded = {Path(p).resolve() for p in src.exclude}
    inside = [p for p in session_folders(folder) if p.resolve() not in excluded]
    keep = {"screen_px": src.screen_px, "mirrored": src.mirrored, "weight": src.weight}
    return [DataSource(path=p, **keep) for p in inside]


@dataclass(slots=True)
class SessionFeatures:
    """One session through the fast path with one gaze model, as the product reads it: the
    named feature columns per read of the frames that nested selection compares on."""

    source: DataSource
    reads: dict[str, LabelledFrames]
    screen: ScreenGeometry | None


def session_features(
    onnx_path: Path, source: DataSource, fp_cfg: FastPathConfig
) -> SessionFeatures:
    """Every usable frame's features, with this gaze model (`fastpath.views`, as `gazeloop
    eval` reads a session)."""
    session = read_session(source.path, screen_px=source.screen_px, mirrored=source.mirrored)
    fp = FastPath(fp_cfg.model_copy(update={"gaze_model": Path(onnx_path)}))
    try:
        v = session_views(session, fp, cache=False)
    except NoUsableFrames:
        raise ValueError(f"{source.path}: no usable frames for the gate") from None
    finally:
        fp.close()
    return SessionFeatures(source, v.reads, session_screen(session))


@dataclass(slots=True)
class Calibrated:
    """A session as `gazeloop eval` scores it with one model: the nested leave-one-target-out
    error per target, and the choice a profile of this session would keep."""

    per_target: dict[int, float]
    choice: Choice


def calibrate(f: SessionFeatures) -> Calibrated:
    """Nested selection among the product's candidates (read, features, mapping), exactly as
    `gazeloop eval` and `gazeloop profile fit` run it: the error the user would see after
    calibrating with this model, whichever mapping suits it."""
    ev, choice = evaluate_candidates(f.reads, session=str(f.source.path), screen=f.screen)
    return Calibrated({t.target: float(t.mean_px) for t in ev.report.per_target}, choice)


def carry_over_px(prev: Calibrated, prev_f: SessionFeatures, cur: SessionFeatures) -> float | None:
    """Mean error (px) on `cur` of the profile `prev` would make (a user's earlier sitting),
    applied unchanged and shown where the cursor would be: what drift between sittings does
    to a model. None when the two screens differ or `cur` lacks the chosen features."""
    if prev_f.screen is None or cur.screen is None or prev_f.screen.px != cur.screen.px:
        return None
    c = prev.choice.candidate
    frames = cur.reads.get(c.read, cur.reads["as read"])
    if frames.lacks(c.features):
        return None
    pred = cur.screen.to_px(prev.choice.mapping.predict(frames.matrix(c.features)))
    ok = np.isfinite(pred).all(axis=1)
    if not ok.any():
        return None
    shown, _ = as_shown(pred[ok], cur.screen)
    return float(np.linalg.norm(shown - frames.labels_px[ok], axis=1).mean())


def judge(
    parent: Path,
    candidate: Path,
    holdout: list[DataSource],
    fp_cfg: FastPathConfig,
    *,
    z: float = 1.0,
    min_gain_pct: float = 1.0,
) -> GateResult:
    """Score both models on every held-out session and decide (see the module docstring).
    Consecutive held-out sessions on the same screen also get the profile-from-the-previous-
    session error of both models, reported beside the decision (not part of it)."""
    common: dict[str, Any] = {"parent": str(parent), "candidate": str(candidate)}
    if not holdout:
        return GateResult(
            promoted=False,
            reason="too few sessions to judge: no held-out session (name one with --holdout "
            "SESSION, or give --data at least two sessions)",
            z=z,
            min_gain_pct=min_gain_pct,
            **common,
        )
    pf = [session_features(parent, h, fp_cfg) for h in holdout]
    cf = [session_features(candidate, h, fp_cfg) for h in holdout]
    pcal, ccal = [calibrate(f) for f in pf], [calibrate(f) for f in cf]
    scores = [_score(str(h.path), p, c) for h, p, c in zip(holdout, pcal, ccal, strict=True)]
    for i in range(1, len(scores)):
        pc = carry_over_px(pcal[i - 1], pf[i - 1], pf[i])
        cc = carry_over_px(ccal[i - 1], cf[i - 1], cf[i])
        if pc is not None and cc is not None:
            scores[i].carry_parent_px, scores[i].carry_candidate_px = round(pc, 2), round(cc, 2)
    return decide(scores, z=z, min_gain_pct=min_gain_pct, **common)


def _score(session: str, pcal: Calibrated, ccal: Calibrated) -> SessionScore:
    p, c = pcal.per_target, ccal.per_target
    targets = sorted(set(p) & set(c))  # the same frames feed both; a target lost by one drops
    pm = float(np.mean([p[t] for t in targets]))
    cm = float(np.mean([c[t] for t in targets]))
    return SessionScore(
        session=session,
        targets=len(targets),
        parent_px=round(pm, 2),
        candidate_px=round(cm, 2),
        margin_px=round(pm - cm, 2),
        target_margins_px=[round(p[t] - c[t], 3) for t in targets],
    )


def _margin(scores: list[SessionScore]) -> tuple[float, float, str, list[float]]:
    """(margin, its standard error, what the SE is over, each session's weight): the margin
    and its SE weigh alike. From `MIN_SESSIONS_FOR_SESSION_SE` sessions on, each session
    weighs the same in both; with fewer, both come from the pooled per-target differences,
    so a session weighs by its targets (else a 2-target session's +30 px, averaged equally
    with a 16-target session's −2 px, promoted against an SE of the 18 targets)."""
    margins = np.array([s.margin_px for s in scores])
    if len(scores) >= MIN_SESSIONS_FOR_SESSION_SE:
        se = float(margins.std(ddof=1) / math.sqrt(len(margins)))
        return float(margins.mean()), se, "sessions", [1.0] * len(scores)
    d = np.concatenate([s.target_margins_px for s in scores])
    if len(d) == 0:  # no paired target at all: nothing to weigh by
        return float(margins.mean()), math.inf, "0 paired targets", [1.0] * len(scores)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    # The sessions' own margins weighted by their targets: the mean of the pooled targets,
    # without the rounding of the per-target values.
    weights = [float(len(s.target_margins_px)) for s in scores]
    margin = float(np.average(margins, weights=weights))
    return margin, se, f"{len(d)} paired targets", weights


def decide(
    scores: list[SessionScore], *, z: float, min_gain_pct: float, **common: Any
) -> GateResult:
    """The decision from paired scores (pure arithmetic: tested without any model)."""
    margin, se, basis, weights = _margin(scores)
    parent_px = float(np.average([s.parent_px for s in scores], weights=weights))
    cand_px = float(np.average([s.candidate_px for s in scores], weights=weights))
    needed = max(z * se, min_gain_pct / 100 * parent_px)
    if not math.isfinite(cand_px):
        ok, why = False, "the candidate's error is not finite"
    elif margin > needed:
        ok, why = True, f"better than its parent by {margin:.1f} ± {se:.1f} px"
    elif margin > 0:
        ok, why = (
            False,
            (
                f"better by only {margin:.1f} ± {se:.1f} px; needs more than {needed:.1f} px "
                f"({z:g} standard errors and {min_gain_pct:g} % of the parent's error)"
            ),
        )
    elif margin == 0:
        ok, why = False, "no better than its parent (the same error to the pixel)"
    else:
        ok, why = False, f"worse than its parent by {-margin:.1f} ± {se:.1f} px"
    why += f" on {len(scores)} held-out session(s): {cand_px:.1f} vs {parent_px:.1f} px"
    carried = [s for s in scores if s.carry_parent_px is not None]
    carry = {}
    if carried:
        carry = {
            "carry_parent_px": round(float(np.mean([s.carry_parent_px for s in carried])), 2),
            "carry_candidate_px": round(float(np.mean([s.carry_candidate_px for s in carried])), 2),
        }
    return GateResult(
        promoted=ok,
        reason=why,
        **carry,
        sessions=scores,
        parent_px=round(parent_px, 2),
        candidate_px=round(cand_px, 2),
        margin_px=round(margin, 2),
        margin_se_px=round(se, 2) if math.isfinite(se) else None,
        se_basis=basis,
        needed_px=round(needed, 2) if math.isfinite(needed) else None,
        z=z,
        min_gain_pct=min_gain_pct,
        **common,
    )


__all__ = ["GateResult", "HoldoutChoice", "SessionScore", "choose_holdout", "decide", "judge"]
