"""The demo's loop on a recording, no camera and no window (what `gazeloop demo` prints).

Calibrate on the recording's settled frames, then replay it as a live stream, several
passes, with a drift injected from about the second pass on (`DriftingMapper`), through the
real fast path, history, snapshot policy, oracle worker, drift loop and label store. The
oracle is the recording's own target labels, replayed: ground truth standing in for a model,
and every summary says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from gazeloop.calibration.drift.simulation import DriftingMapper
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.metrics.evaluate import Evaluated, evaluate_arrays, plot_report
from gazeloop.calibration.procedure import fit_profile
from gazeloop.calibration.profile import DEFAULT_FEATURES, Profile, ProfileMapper
from gazeloop.calibration.store.atomic import write_plot
from gazeloop.calibration.store.session import Session
from gazeloop.fastpath.collect import collect_session
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.fastpath.sources import SessionSource
from gazeloop.oracle.simple import TargetOracle
from gazeloop.tools.runtime.live import Live, model_record
from gazeloop.tools.runtime.made_by import made_by
from gazeloop.tools.runtime.mqtt.timebase import SourceClock
from gazeloop.tools.runtime.run_config import RunConfig

ORACLE_NOTE = "replay of the recording's own target labels (ground truth, not a model)"
# How long a replayed frame waits for its label: the replayed oracle answers in microseconds;
# only a broken worker takes this long.
_LABEL_WAIT_S = 30.0


def calibrate(session: Session, fp: FastPath, screen: ScreenGeometry, out: Path):
    """Fit a profile on the settled frames; the leave-one-target-out evaluation is plotted
    to `out/calibration.png`, the profile saved as `out/profile.json`."""
    col = collect_session(session, fp)
    used = col.labelled()
    names = list(DEFAULT_FEATURES)
    x, labels, groups = used.matrix(names), used.labels_px, used.groups
    ev = evaluate_arrays(
        x,
        labels,
        groups,
        session=str(session.folder),
        features=names,
        screen=screen,
        frames=col.frames,
        names=used.names.tolist(),
    )
    write_plot(
        lambda f: plot_report(ev, f, title="calibration (4 corners)"), out / "calibration.png"
    )
    prof = fit_profile(
        x,
        screen.to_norm(labels),
        groups,
        screen=screen,
        features=names,
        user="demo",
        device="corners4",
        **made_by(fp),
        calibration_session=str(session.folder),
    )
    prof.save(out / "profile.json")
    return ev, prof


def drift_onset_ns(session: Session) -> int:
    """Roughly the start of the second pass: one recording's span after its first frame."""
    span_ns = (session.items[-1].t_ms - session.items[0].t_ms) * 1_000_000
    return session.items[0].t_ms * 1_000_000 + span_ns


def open_label_store(out: Path):
    """The label store under `out/labels` and a line saying so (or why there is none)."""
    try:
        from gazeloop.calibration.store.labelstore import LabelStore
    except ImportError:  # the store is optional for the demo's numbers
        return None, "label store not available"
    return LabelStore(out / "labels"), f"labels kept in {out / 'labels'}"


def demo_live(
    fp: FastPath,
    prof: Profile,
    session: Session,
    screen: ScreenGeometry,
    drift_norm: np.ndarray,
    onset_ns: int,
    *,
    cfg: RunConfig,
    store=None,
) -> Live:
    """The running system with the drifting profile and the replayed-targets oracle, with
    the run's loop, policy and oracle settings; the label store records the run as
    `gazeloop run` does (`LabelStore.begin_run`)."""
    settings = {
        "command": "demo",
        "source": str(session.folder),
        "oracle": "targets (the recording's own, replayed)",
        "profile": None,  # fitted by the demo itself, in its --out folder
        "gaze_model": model_record(fp.gaze),
        "config": cfg.model_dump(mode="json"),
    }
    return Live(
        fp,
        mapper=DriftingMapper(ProfileMapper(prof), drift_norm, onset_ns),
        oracle=TargetOracle(),
        policy=cfg.policy.build(),
        loop_cfg=cfg.loop_config(),  # Live takes the profile's screen for the aspect
        oracle_timeout_s=cfg.oracle.timeout_s,
        store=store,
        snapshot_hook=_target_hook(session, screen),
        run_settings=settings,
    )


def _target_hook(session: Session, screen: ScreenGeometry):
    items = {it.name: it for it in session.items}

    def with_target(snap, frame):
        it = items.get(frame.name)
        extra = (it.record.model_extra or {}) if it else {}
        if it is None or extra.get("settling"):
            return None  # the eyes are still moving to the target: no label to give
        snap.target_xy = tuple(float(v) for v in screen.to_norm(np.array(it.label_px)))
        return snap

    return with_target


def replay(
    live: Live,
    session: Session,
    screen: ScreenGeometry,
    passes: int,
    onset_ns: int,
    on_status: Callable[[str], None] | None = None,
) -> dict:
    """`passes` replays of the session through `live`; the per-frame trace (time, error,
    offset in px, labels so far). `on_status` gets a live-style line per second of stream
    time. Each frame waits for the label it asked for (the replayed oracle answers at once),
    so a label reaches the loop before the next frame on every run and every machine: the
    numbers are the loop's, not the scheduler's."""
    items = {it.name: it for it in session.items}
    t, err, off, labelled = [], [], [], []
    last_print = None
    window_err: list[float] = []
    with SessionSource(session.folder, loop=True) as src:
        if live.clock is None:  # labels stored at the recording's times, as `run` keeps them
            live.clock = SourceClock(src)
        n = len(items) * passes
        for k, frame in enumerate(src):
            if k >= n:
                break
            s = live.process(frame)
            if live.worker is not None and not live.worker.wait_idle(_LABEL_WAIT_S):
                raise RuntimeError(f"the replayed oracle gave no answer in {_LABEL_WAIT_S} s")
            e = _frame_error(s, frame, items[frame.name])
            t.append(frame.t_ns)
            err.append(e)
            off.append(live.loop.offset * screen.px)
            labelled.append(len(live.decisions))
            if np.isfinite(e):
                window_err.append(e)
            if last_print is None:
                last_print = frame.t_ns
            if frame.t_ns - last_print >= 1_000_000_000:
                if on_status is not None:
                    on_status(
                        _status(live, screen, frame.t_ns - t[0], window_err, frame.t_ns >= onset_ns)
                    )
                last_print, window_err = frame.t_ns, []
    if live.worker is not None:
        live.worker.close()
    return {
        "t": np.array(t),
        "err": np.array(err),
        "offset": np.array(off),
        "labels": np.array(labelled),
        "onset": onset_ns,
    }


def _frame_error(s, frame, item) -> float:
    extra = item.record.model_extra or {}
    if s.screen_px is None or extra.get("settling"):
        return np.nan
    return float(np.hypot(*(s.screen_px - np.array(frame.label_px))))


def _status(live: Live, screen, since_ns: int, window_err: list[float], drifted: bool) -> str:
    st = live.status()
    o = live.loop.offset * screen.px
    mean = np.mean(window_err) if window_err else float("nan")
    return (
        f"   t={since_ns / 1e9:5.1f}s {'drifted' if drifted else '       '} error {mean:6.0f} px  "
        f"offset ({o[0]:+6.0f}, {o[1]:+6.0f}) px  labels "
        f"{st['labels']['accepted']} accepted / {st['labels']['rejected']} rejected"
    )


# The error_* figures are of a profile fitted on the very frames replayed: the honest figure
# for a new frame is the calibration's leave-one-target-out mean beside them.
IN_SAMPLE_NOTE = (
    "error_* are in-sample (the profile was fitted on the frames it replays); "
    "calibration_loto_mean_px is its leave-one-target-out error"
)


def summarise(tr: dict, ev: Evaluated, drift_px: float, live: Live, store_note: str) -> dict:
    t, err, onset = tr["t"], tr["err"], tr["onset"]
    before = err[(t < onset) & np.isfinite(err)]
    after_onset = (t >= onset) & np.isfinite(err)
    # The last two passes: has the loop brought the error back?
    tail = t >= t[-1] - 2 * (onset - t[0])
    end = err[tail & after_onset]
    first_after = err[after_onset][: max(1, len(before))]
    acc = sum(d.accepted for d in live.decisions)
    return {
        "oracle": ORACLE_NOTE,
        "errors": IN_SAMPLE_NOTE,
        "calibration_loto_mean_px": ev.report.mean_px,
        "constant_predictor_px": ev.report.baseline_mean_px,
        "injected_drift_px": drift_px,
        "error_before_drift_px": round(float(before.mean()), 1) if before.size else None,
        "error_just_after_drift_px": round(float(first_after.mean()), 1),
        "error_last_two_passes_px": round(float(end.mean()), 1) if end.size else None,
        "final_offset_px": [round(float(v), 1) for v in tr["offset"][-1]],
        "labels_accepted": acc,
        "labels_rejected": len(live.decisions) - acc,
        "frames": int(len(t)),
        "label_store": store_note,
    }


# After the settling frames (no error: left out) the 1€ filter still carries the previous
# target: on the shared recording the filtered point is 345-492 px off on the first frame
# after the settling window where the unfiltered one is 39-116 px, and close to it after
# about 0.4 s. Those frames are greyed, not dropped: the summary's means count them.
CATCH_UP_S = 0.5


def _catching_up(t_s: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Frames within `CATCH_UP_S` after a frame without an error (settling or no face)."""
    gap_end = np.where(~np.isfinite(err), t_s, -np.inf)
    last_gap = np.maximum.accumulate(gap_end)
    return np.isfinite(err) & (t_s - last_gap <= CATCH_UP_S)


def _trace_title(tr: dict, summary: dict) -> str:
    """What the errors are, on what data, and the summary's three figures."""
    t = tr["t"]
    per_pass = int(np.sum(t <= tr["onset"]))  # the onset is one recording's span after frame 0
    keys = ("error_before_drift_px", "error_just_after_drift_px", "error_last_two_passes_px")
    mean = " → ".join("-" if summary[k] is None else f"{summary[k]:.0f}" for k in keys)
    return (
        "gazeloop demo: in-sample error (the profile was fitted on the frames it replays)\n"
        f"4-corner recording, {len(t)} frames = {len(t) / per_pass:.0f} passes of {per_pass}; "
        f"{int(tr['labels'][-1])} labels: its own targets replayed (ground truth, not a model)"
        f"\nmean error before the drift → just after → last two passes: {mean} px"
    )


def _draw_errors(a, tr: dict, t: np.ndarray, onset: float) -> None:
    err = tr["err"]
    grey = _catching_up(t, err)
    plain = np.isfinite(err) & ~grey
    a.plot(t[plain], err[plain], ".", ms=3, color="tab:red", label="fast path + loop")
    what = f"first {CATCH_UP_S:g} s after a target change: filter catching up (in the means)"
    a.plot(t[grey], err[grey], ".", ms=3, color="0.7", label=what)
    a.axvline(onset, color="0.4", ls="--", label="drift injected")
    gaps = int(np.sum(~np.isfinite(err)))
    a.set_ylabel(f"error (px, in-sample)\n{gaps} settling frames left out", fontsize=9)
    a.legend(loc="upper right", fontsize=7)


def plot_trace(tr: dict, drift_px: np.ndarray, out: Path, summary: dict) -> None:
    """`out/loop.png`: the error over the stream, and the loop's offset against the ideal;
    the title gives `summary`'s (`summarise`) figures."""
    from gazeloop.calibration.metrics.plotting import pyplot

    plt = pyplot()

    t = (tr["t"] - tr["t"][0]) / 1e9
    onset = (tr["onset"] - tr["t"][0]) / 1e9
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6.6), sharex=True, dpi=110)
    _draw_errors(a, tr, t, onset)
    fig.suptitle(_trace_title(tr, summary), fontsize=9)
    b.plot(t, tr["offset"][:, 0], color="tab:blue", label="loop offset Cx")
    b.plot(t, tr["offset"][:, 1], color="tab:green", label="loop offset Cy")
    b.step(
        t,
        np.where(t >= onset, -drift_px[0], 0.0),
        color="0.4",
        ls="--",
        label="− injected drift (the ideal Cx)",
    )
    b.set_xlabel("stream time (s)")
    b.set_ylabel("px")
    b.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    write_plot(fig.savefig, out / "loop.png")
    plt.close(fig)
