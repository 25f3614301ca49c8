"""The running system, without any window: fast path → history → snapshot policy → oracle
worker → drift loop → label store (→ MQTT). `gazeloop run` (window or headless) and
`gazeloop demo` drive this one object, so what the tests run is what people run.

MQTT, when given: the gaze publisher gets every mapped sample stamped by the source's
clock (`mqtt.timebase.SourceClock`: capture time on the wall clock, converted once here at
the source); the label uplink follows the label store, which is its outbox, so a label is
stored first and sent when the broker is there (`finish` waits a bounded time for the
last ones; the rest go on the next run).

Labels without a snapshot of their own (clicks, the validation glance) come in through
`external_label`: the same loop update, and stored like the oracle's, accepted or not, with
the loop's decision and the camera frame nearest their time (the last second of frames is
kept, a few a second, while such a labeller is attached). Clicks are judged by the click
rules on the frame thread (0.25 ms at p50, under 1 ms at p99: `click_poll` in `gazeloop
bench loop-update`) and handed to `post_label`, whose own thread runs the loop update (a
replay's clicks, which have no frame rate to keep, are judged at their frame, so the same
recording gives the same labels). An
update takes up to 8 ms at p99 with a few hundred labels held (the same benchmark), and
waits on the loop's lock while the oracle's thread holds it: on the frame thread, beside
the fast path's 11-12 ms, it made a click's frame late at 60 Hz. The glance's label is
judged where it ends, on the frame thread: its dot fills the screen, no cursor moves, and
its decision is said as it ends.

Threads: the caller's thread runs `process()` per frame and never waits on the oracle or
the disk, nor on the loop for a click; the oracle worker's thread runs the backend and then
`_on_label` (the loop update); the label judge's thread runs the loop update of posted
labels. They hand their labels through a bounded queue to one label-store writer thread (a
JPEG with fsync and a SQLite row can take longer than a frame; a label that finds the queue
full is counted in `store_dropped`, never waited for), which does the store's writes and
keeps their counts; `flush`, `finish` and `close` wait for the judge, then the writer. The
only state these threads share is the history (locked), the offset (an array replaced
whole, under a lock of its own), the recent frames and the decisions (deques, copied before
they are read), a few "last seen" references for the display and counts, and the loop and
mapper references: `install` (the caller's thread) and `adopt` (the model watcher's)
replace them whole, and a label judged by a loop that has since been replaced moves no
mapper. A posted click keeps the run record current when it was posted. The judge shares
the interpreter's lock with the frame thread: it runs beside the networks and OpenCV, which
release it, and takes turns with the frame thread's Python, so part of an update still
lands on the next frame. `gazeloop bench clicks` measures both ways on the real fast path:
at six clicks a second, the frames ready more than 1/60 s after they were due fell from
5-8 % to 1-2 %.

A snapshot handed to the oracle is kept (its frame is what the store and the picture-in-
picture show with its label) until its label is stored or the worker has passed it over: a
Moondream call takes seconds, during which many snapshots replace each other in the worker's
waiting slot, and the one being labelled must outlast them all (`_let_go`). A label that
still comes back to no snapshot is counted in `labels_unstored`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from gazeloop.calibration.drift.history import History
from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig, LoopDecision
from gazeloop.calibration.labels import OracleLabel, Snapshot
from gazeloop.calibration.profile import ProfileMapper
from gazeloop.calibration.store.labelstore import DuplicateLabelError
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.fastpath.types import Frame, GazeSample
from gazeloop.oracle.policy import SnapshotPolicy
from gazeloop.oracle.worker import OracleWorker
from gazeloop.tools.runtime.work_queue import WorkQueue

log = logging.getLogger(__name__)
_MS = 1_000_000
_KEEP_FRAMES = 24  # one every _KEEP_EVERY_MS: the last 1.2 s, for clicks and glances
_KEEP_EVERY_MS = 50
_FRAME_NEAR_MS = 100  # a label's image is a frame this close to its time, or none
STORE_QUEUE = 256  # labels accepted but not yet written (the one being written included)
_DRAIN_S = 30.0  # at shutdown, how long the labels still queued may take to be written
# Posted labels not yet judged (the one being judged included): a person clicks a few times
# a second at most, and one update takes milliseconds.
JUDGE_QUEUE = 64


@dataclass(slots=True)
class LastOracle:
    """What the picture-in-picture shows: the last labelled snapshot and its fast sample."""

    snapshot: Snapshot
    label: OracleLabel
    decision: LoopDecision | None
    gaze_yp: tuple[float, float] | None


def snapshot_of(frame: Frame, s: GazeSample, *, on_demand: bool = False) -> Snapshot:
    eye = pupils = None
    if s.landmarks is not None:
        p = s.landmarks.points
        left, right = p[473, :2], p[468, :2]  # iris centres (person's left, right)
        pupils = ((float(left[0]), float(left[1])), (float(right[0]), float(right[1])))
        mid = (left + right) / 2
        eye = (float(mid[0]), float(mid[1]))
    # this frame's own estimate, before the filter and past the screen's edge too: as the
    # History keeps it for the loop, so every label in the store compares its point with
    # the same thing (labels stored before 2026-12-07 carry the filtered point)
    xy = s.screen_xy_raw
    fast = None if xy is None else (float(xy[0]), float(xy[1]))
    return Snapshot(
        t_ns=frame.t_ns,
        image=frame.image,
        snapshot_id=f"{frame.t_ns}",
        eye_px=eye,
        pupils_px=pupils,
        fast_xy=fast,
        on_demand=on_demand,
        meta={"index": frame.index, "name": frame.name},
    )


SITTING_GAP_S = 1800.0  # a profile older than this was made in another sitting


def from_earlier_sitting(profile, now: datetime | None = None) -> bool:
    """Whether `profile` was made in an earlier sitting than this run: created more than
    `SITTING_GAP_S` ago (or at a time that cannot be read), or pooled from several sittings
    when a run pooled them (`sittings_profile`: however new the file, no sitting of it is
    this one). A calibration that pooled its own sitting with earlier ones (its
    `fit.history`) is of the sitting it calibrated."""
    pooled_at_calibration = getattr(getattr(profile, "fit", None), "history", None)
    if getattr(profile, "calibration_sessions", None) and not pooled_at_calibration:
        return True
    return not made_this_sitting(profile, now)


def made_this_sitting(profile, now: datetime | None = None) -> bool:
    """Whether `profile` was created within `SITTING_GAP_S` (a time that cannot be read is
    another sitting's). What decides whether `run` starts a new sitting on the device's
    own file: one that `profile fit S1 S2` pooled a minute ago is this sitting's."""
    try:
        made = datetime.fromisoformat(profile.created)
    except (TypeError, ValueError, AttributeError):
        return False
    if made.tzinfo is None:
        made = made.replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - made).total_seconds() <= SITTING_GAP_S


# How long the oracle may take over one snapshot before its label is given up.
ORACLE_TIMEOUT_S = 20.0

# What makes the drift loop for a profile (strategies are objects: another loop, or this one
# configured otherwise, without subclassing Live): (the run's history of screen points, the
# profile's mapper, whether the profile is from an earlier sitting) -> a loop with
# `DriftLoop`'s interface. Called at the start and on the first calibration of a run that had
# none; a later calibration resets the loop it made.
LoopFactory = Callable[[History, ProfileMapper, bool], DriftLoop]


def model_record(gaze) -> dict:
    """What a run's record says of the gaze model it maps (`GazeModel`)."""
    return {"id": gaze.model_id, "sha256": gaze.sha256, "read": gaze.read}


def _same_screen(a, b) -> bool:
    """Whether two profiles map to a screen of the same size (None maps to none)."""
    return a is not None and b is not None and tuple(a.screen.px) == tuple(b.screen.px)


class _Watched:
    """The oracle as `Live`'s worker runs it: each call first says which snapshot it is
    about, so `Live` keeps that snapshot until its label is stored, and knows which others
    the worker has passed over. The worker's own reports (`submit`'s answer, its counts)
    say that a call began or a snapshot gave way, not which snapshot."""

    def __init__(self, oracle, begins: Callable[[str], None]) -> None:
        self.oracle = oracle
        self._begins = begins

    @property
    def name(self) -> str:
        return str(getattr(self.oracle, "name", type(self.oracle).__name__))

    def __getattr__(self, name: str):
        # The rest is the oracle's: its version (a process oracle learns it from its child)
        # and what the worker may ask of some oracles only (`call_timeout_s`).
        if name == "oracle":  # not set yet: no endless lookup
            raise AttributeError(name)
        return getattr(self.oracle, name)

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel:
        self._begins(snap.snapshot_id)
        return self.oracle.label(snap, cancel)

    def close(self) -> None:
        self.oracle.close()


class Live:
    """The running system: the fast path's samples into the history, snapshots to the
    oracle worker, its labels (and clicks and glances) through the drift loop into the
    offset the fast path adds, every label into the store."""

    def __init__(
        self,
        fp: FastPath,
        *,
        mapper: ProfileMapper | None = None,
        oracle=None,
        policy: SnapshotPolicy | None = None,
        loop_cfg: LoopConfig | None = None,
        loop_factory: LoopFactory | None = None,
        store=None,
        publisher=None,
        oracle_timeout_s: float = ORACLE_TIMEOUT_S,
        snapshot_hook=None,
        clock=None,
        uplink=None,
        store_queue: int = STORE_QUEUE,
        run_settings: dict | None = None,
    ):
        if loop_cfg is not None and loop_factory is not None:
            raise ValueError("give loop_cfg or loop_factory, not both: the factory makes the loop")
        if publisher is not None and clock is None:
            # Frame times mean different things per source; guessing is how 2081 happened.
            raise ValueError("a gaze publisher needs the source's clock (mqtt.timebase)")
        self.fp = fp
        self.mapper = mapper
        if mapper is not None:
            fp.set_mapper(mapper)
        self.history = History(max_age_s=120.0, max_len=20_000)
        self._mapping = None  # the fast path's mapper whose points the History holds
        self.policy = policy or SnapshotPolicy()
        self.store = store
        self.publisher = publisher
        self.clock = clock  # source time -> wall clock, for the stream and the labels
        self.uplink = uplink  # sends the store's labels; nudged when one is stored
        self.labels_stored = 0
        self._pending_seen: tuple[float, int | None] = (-float("inf"), None)
        self._pending_counting = threading.Event()
        # A hook that decorates snapshots (e.g. with the frame's known target) or vetoes
        # them by returning None.
        self.snapshot_hook = snapshot_hook
        self._loop_factory = loop_factory or self._default_loop
        self._init_loop(mapper, loop_cfg)
        self._init_oracle(oracle, oracle_timeout_s)
        self._init_labellers()
        self._init_judge()
        self._init_store_writer(store_queue)
        # What the store records of this run (`LabelStore.begin_run`), with each screen the
        # run maps to: the resolved config, the source, the models. None: nothing recorded.
        # Records are made by the writer thread when their first label is written (a run
        # that labels nothing records nothing, and tracking never waits on the disk): the
        # other threads only add (settings, screen) here and name it by its index.
        self.run_settings = run_settings
        self.run_record_error: str | None = None
        self.labels_without_run = 0  # stored, but their run record could not be
        self._runs_lock = threading.Lock()  # `install` (frame) and `adopt` (watcher) race
        self._run_records: list[tuple[dict, object]] = []
        self._run_ids: dict[int, int | None] = {}  # record index → store id (writer thread)
        self._run_key: int | None = None
        self._new_run(mapper)
        self._frame_ms: deque[float] = deque(maxlen=120)
        self._frame_t: deque[int] = deque(maxlen=120)

    def _init_loop(self, mapper: ProfileMapper | None, loop_cfg: LoopConfig | None) -> None:
        """The drift loop, when there is a profile to correct; without one it starts with
        the first calibration (`install`)."""
        self.loop: DriftLoop | None = None
        self._loop_cfg = loop_cfg
        if mapper is not None:
            # A profile from disk: the loop trusts its offset only as far as a new sitting
            # allows, unless it was made minutes ago.
            self.loop = self._new_loop(
                mapper, new_sitting=from_earlier_sitting(getattr(mapper, "profile", None))
            )

    def _init_oracle(self, oracle, oracle_timeout_s: float) -> None:
        """The oracle's worker thread, when there is an oracle, and the last label it gave,
        for the picture-in-picture, and the snapshots its labels are stored with."""
        # snapshot id → (snapshot, gaze angles, run record index when it was taken), in the
        # order they were handed in: those the worker may still label (`_let_go`)
        self._snaps: dict[str, tuple[Snapshot, tuple[float, float] | None, int | None]] = {}
        self._lock = threading.Lock()
        self._labelling: str | None = None  # the snapshot of the worker's latest call
        self._calls_seen = 0  # the worker's calls that have said their snapshot
        self.labels_unstored = 0  # oracle labels that came back to no snapshot
        self.oracle_timeout_s = oracle_timeout_s
        self.worker = (
            OracleWorker(
                _Watched(oracle, self._call_begins),
                timeout_s=oracle_timeout_s,
                max_age_s=None,
                on_label=self._on_label,
            )
            if oracle is not None
            else None
        )
        self.last: LastOracle | None = None

    def _init_labellers(self) -> None:
        """The labellers without snapshots of their own, attached later (none yet), the frames
        kept for them, and what the display shows of the labels in flight and decided."""
        # Under --oracle clicks: a `tools.runtime.clicks.ClickLabeller`, fed every frame.
        self.clicks = None
        # With a window: the validation glance (`tools.runtime.glance.GlanceLabeller`),
        # polled every frame while its dot shows; see `enable_glance`.
        self.glance = None
        self._glance_after_s: float | None = None
        # Recent frames (t_ns, image), for labels that come without a snapshot.
        self._recent_frames: deque[tuple[int, np.ndarray]] = deque(maxlen=_KEEP_FRAMES)
        # The newest snapshot handed to the oracle, shown (with a spinner) until its label
        # or a later one comes back, so the picture-in-picture shows what is being labelled.
        self.pending: tuple[Snapshot, tuple[float, float] | None] | None = None
        self.decisions: deque[LoopDecision] = deque(maxlen=1000)

    def _init_judge(self) -> None:
        """The label judge: posted labels (`post_label`) waiting for the loop, and how many
        are queued or being judged (`flush` waits for 0). Its thread starts with the first."""
        self._offset_lock = threading.Lock()
        # (label, the run record current when it was posted)
        self._judge: WorkQueue[tuple[OracleLabel, int | None]] = WorkQueue(
            "gazeloop-label-judge", self._judge_label, JUDGE_QUEUE
        )
        self.labels_unjudged = 0  # still waiting, or being judged, when the end gave up
        self.judge_errors = 0

    def _init_store_writer(self, store_queue: int) -> None:
        """The label store's counts and its one writer thread, started when there is a store:
        the frame and oracle threads only queue labels for it, never wait on the disk."""
        self.store_errors = 0
        self.store_duplicates = 0
        self.store_error: str | None = None
        # At the end, labels the store's disk did not take within the drain (a stalled disk,
        # a store locked by another process): given up on, and the one being written then.
        self.store_unwritten = 0
        self.store_stuck = 0
        # The label-store writer, of (label, image, fast_xy, decision, t_ns, run id).
        self._writer: WorkQueue[tuple] | None = None
        if self.store is not None:
            self._writer = WorkQueue(
                "gazeloop-label-store", lambda item: self._write(*item), store_queue
            )
            self._writer.start()

    @property
    def labels_dropped(self) -> int:
        """Labels posted while the judge was JUDGE_QUEUE behind, or after the end."""
        return self._judge.refused

    @property
    def store_dropped(self) -> int:
        """Labels not queued for the store: the writer was too far behind, or it had ended."""
        return 0 if self._writer is None else self._writer.refused

    def _new_loop(self, mapper: ProfileMapper, *, new_sitting: bool = False) -> DriftLoop:
        return self._loop_factory(self.history, mapper, new_sitting)

    def _default_loop(self, history: History, mapper: ProfileMapper, new_sitting: bool):
        """The gazeloop drift loop with `loop_cfg`'s settings (the defaults without one)."""
        aspect = mapper.screen.px[0] / mapper.screen.px[1]
        # The settings are the run's; the aspect is always the screen this profile maps to.
        cfg = (self._loop_cfg or LoopConfig()).model_copy(update={"aspect": aspect})
        return DriftLoop(cfg, history, offset=mapper.offset, new_sitting=new_sitting)

    def install(self, mapper: ProfileMapper) -> None:
        """A new calibration, while running (the `c` key): the fast path maps with it from
        the next frame on. Everything measured against the old mapping goes: the history of
        screen points (a label arriving now would be compared with points of the old
        mapping), the policy's fixation, the loop's labels (it restarts from the new
        profile's offset, or starts, when there was no profile before; a profile of another
        screen shape gets a new loop, since the loop weighs x and y by the screen's aspect)."""
        self.history.clear()
        self.policy.reset()
        self._recent_frames.clear()
        with self._lock:
            self._snaps.clear()  # labels still in flight are for the old mapping
        self.pending = None
        old, self.mapper = self.mapper, mapper
        if self.loop is None or not _same_screen(old, mapper):
            self.loop = self._new_loop(mapper)
        else:
            self.loop.reset(mapper.offset)
        if not _same_screen(old, mapper):  # later labels are fractions of another screen
            self._new_run(mapper)
        self.fp.set_mapper(mapper)
        if self._glance_after_s is not None:
            self.enable_glance(self._glance_after_s)  # the new screen's size, quiet time anew

    def enable_glance(self, auto_after_s: float = 600.0, rules=None):
        """The validation glance: on request (`glance.start`, the verify key) and, every
        `auto_after_s` without a label (0: never), on its own; needs a profile (a dot is a
        place on the screen), so it is (re)made by `install` when one comes later."""
        from gazeloop.tools.runtime.glance import GlanceLabeller

        self._glance_after_s = auto_after_s
        if self.mapper is None:
            self.glance = None
            return None
        self.glance = GlanceLabeller(
            self.history,
            self.mapper.screen.px,
            self.external_label,
            rules=rules,
            auto_after_s=auto_after_s,
        )
        return self.glance

    def adopt(self, mapper: ProfileMapper | None, gaze=None) -> None:
        """A new model came with its refitted profile (hot reload): the loop starts over from
        that profile's offset, since residuals of the old model say nothing about the new
        (a new loop when the profile is of another screen size, as in `install`). With the
        model (`GazeModel`), the store's record of the run says it from here on."""
        # The points so far are the old model's: a label about one of them (a click's
        # fixation, an oracle's frame) would be judged with the new profile's offset. It
        # finds no estimate to be judged by; it is still stored, with its frame's run. (A
        # frame in flight meanwhile: `_forget_other_mapping`.)
        self.history.clear()
        old, self.mapper = self.mapper, mapper
        new_model = gaze is not None and self.run_settings is not None
        if new_model:
            self.run_settings = {**self.run_settings, "gaze_model": model_record(gaze)}
        looping = mapper is not None and self.loop is not None
        other_screen = looping and not _same_screen(old, mapper)
        if new_model or other_screen:
            self._new_run(mapper)
        if not looping:
            return
        if other_screen:
            self.loop = self._new_loop(mapper)
        else:
            self.loop.reset(mapper.offset)

    # --- the frame thread ----------------------------------------------------------------

    def process(self, frame: Frame) -> GazeSample:
        t0 = time.perf_counter()
        s = self.fp.process(frame)
        self._forget_other_mapping()
        q = s.quality
        xy = s.screen_xy if s.screen_xy is not None else None
        if s.screen_xy_raw is not None and q.usable:
            # The frame's own estimate, not the filtered cursor: the filter trails a gaze
            # shift (150 px: 267 ms to 90 % at 60 Hz, `fastpath.pipeline`), so a click 150 ms
            # after the eye landed was compared with a point still on its way (42-75 px off
            # with no drift, in an audit's simulation), and the loop moved the offset for
            # drift that was not there.
            # With the offset it carries: the loop takes it out again to see the label's
            # drift, and a frame mapped just before an offset changed but stored just after
            # was taken to carry the new one (wrong by the whole step).
            offset = getattr(self._mapping, "last_offset", None)  # the frame's own mapper
            self.history.append(frame.t_ns, s.screen_xy_raw, offset)
        if self.clicks is not None or self.glance is not None:
            self._keep_frame(frame)
        if self.clicks is not None:  # clicks are judged against the history just written
            self.clicks.frame(frame.t_ns)
            self.clicks.poll()
        if self.glance is not None:
            self.glance.frame(frame.t_ns)
            if self.glance.active is not None:
                self.glance.poll(frame.t_ns)
        if self.worker is not None and self.policy.offer(frame.t_ns, xy, q.usable):
            self._submit(frame, s, on_demand=self.policy.last_on_demand)
        if self.publisher is not None and xy is not None:
            self.publisher.publish_sample(
                self.clock.stamp(frame.t_ns), xy, {"blink": q.blink, "face": q.face}
            )
        self._frame_ms.append((time.perf_counter() - t0) * 1e3)
        # The processing rate: a replay's own timestamps would show the recording's rate.
        self._frame_t.append(time.monotonic_ns())
        return s

    def _forget_other_mapping(self) -> None:
        """The fast path takes a hot-reloaded model and profile at the start of a frame, after
        `adopt` cleared the History on the watcher's thread: a frame already in flight then
        left one point of the old ones, for a label to be judged by. Its mapper changed: the
        History goes again, here, before this frame's point."""
        mapper = getattr(self.fp, "mapper", None)
        if mapper is not self._mapping:
            if self._mapping is not None:
                self.history.clear()
            self._mapping = mapper

    def _submit(self, frame: Frame, s: GazeSample, *, on_demand: bool) -> Snapshot | None:
        snap = snapshot_of(frame, s, on_demand=on_demand)
        if self.snapshot_hook is not None:
            snap = self.snapshot_hook(snap, frame)
            if snap is None:  # the hook vetoed this frame (e.g. no known target)
                return None
        gaze = None if s.gaze_yp_raw is None else (float(s.gaze_yp_raw[0]), float(s.gaze_yp_raw[1]))
        with self._lock:  # before the worker can have it: a fast oracle answers at once
            self._snaps[snap.snapshot_id] = (snap, gaze, self._run_key)
        self.pending = (snap, gaze)
        taken = self.worker.submit(snap)
        self._let_go(snap.snapshot_id if taken else None)
        return snap

    def _let_go(self, newest: str | None) -> None:
        """Forget the snapshots the worker will never label. It has one waiting slot, which
        each snapshot handed in takes from the one before, and begins every call with the
        snapshot in that slot; so of those no call has begun with, only `newest` can still
        be labelled (None: the worker refused it), and of the others only the one its latest
        call is about (until its label is stored, or the next call begins). A call that has
        begun but not yet said its snapshot (the worker's `started` ahead of the calls seen)
        may be about any of them: all stay until the next snapshot, so a few at most."""
        begun = self.worker.metrics().started  # read first: the calls seen only grow
        with self._lock:
            if self._calls_seen < begun:
                return
            keep = (newest, self._labelling)
            for sid in [sid for sid in self._snaps if sid not in keep]:
                del self._snaps[sid]

    def _keep_frame(self, frame: Frame) -> None:
        kept = self._recent_frames
        if not kept or frame.t_ns - kept[-1][0] >= _KEEP_EVERY_MS * _MS or frame.t_ns < kept[-1][0]:
            kept.append((frame.t_ns, frame.image))

    def _frame_near(self, t_ns: int) -> np.ndarray | None:
        best = None
        # The judge's thread reads what the frame thread appends: list() of a deque is one
        # C call, which no append can interleave with (under the GIL).
        for t, image in list(self._recent_frames):
            d = abs(t - t_ns)
            if d <= _FRAME_NEAR_MS * _MS and (best is None or d < best[0]):
                best = (d, image)
        return None if best is None else best[1]

    def external_label(self, label: OracleLabel) -> LoopDecision | None:
        """A label from a source other than the worker's oracle (a click, a glance): the
        same loop update and status, and stored like the oracle's (accepted or not, with
        the loop's decision), with the camera frame nearest its time when one was kept."""
        decision = self._update_loop(label)
        self._store_judged(label, decision, self._run_key)
        return decision

    def _store_judged(self, label: OracleLabel, decision, run: int | None, settle=None) -> None:
        """`run`: the record current when the label was made (a click posted before a new
        model or screen came is the earlier run's). `settle`: what makes the store call
        (the judge's `WorkQueue.settle`); the frame near the label is found before it, out
        of the judge's lock, which the frame thread posts clicks under."""
        fast = None if decision is None else decision.fast_xy
        image = self._frame_near(label.t_ns)

        def store() -> None:
            self._store(label, image, fast, decision, label.t_ns, run)

        if settle is None:
            store()
        else:
            settle(store)

    def post_label(self, label: OracleLabel) -> None:
        """`external_label` on the label judge's thread; returns at once (the frame thread
        posts clicks). A label that finds JUDGE_QUEUE others waiting is counted in
        `labels_dropped`, not waited for: tracking goes on."""
        self._judge.post((label, self._run_key))

    def _judge_label(self, item: tuple[OracleLabel, int | None]) -> None:
        label, run = item
        try:
            decision = self._update_loop(label)
            # Given up on while judged: counted in labels_unjudged, and the run's summary
            # has said so; stored now, it would be counted twice. Handing it to the writer
            # is a queue's append, quick enough to do under the judge's lock.
            self._store_judged(label, decision, run, self._judge.settle)
        except Exception:  # one label's failure must not end the judging of the rest
            self.judge_errors += 1
            log.exception("drift loop: the label %s could not be judged", label.snapshot_id)

    def _judged(self, timeout: float | None) -> bool:
        """Wait until every posted label is judged (and handed to the store), or the end of
        the run has given up on them (`_stop_judge`)."""
        return self._judge.idle(timeout)

    def _update_loop(self, label: OracleLabel) -> LoopDecision | None:
        if self.glance is not None:
            self.glance.saw_label(label.t_ns)
        loop, mapper = self.loop, self.mapper
        if loop is None:
            return None
        decision = loop.update(label)
        self.decisions.append(decision)
        # A new calibration or model may have replaced the loop and its mapper while this
        # label was judged: the old loop's offset is not the new mapper's to take. The
        # oracle's and the judge's threads both get here: the loop's offset read and given
        # under one lock, so an older decision never overwrites a newer one.
        with self._offset_lock:
            if mapper is not None and self.loop is loop and self.mapper is mapper:
                mapper.offset = loop.offset
        return decision

    # --- the oracle thread ---------------------------------------------------------------

    def _call_begins(self, snapshot_id: str) -> None:
        with self._lock:
            self._labelling = snapshot_id
            self._calls_seen += 1

    def _on_label(self, label: OracleLabel) -> None:
        decision = self._update_loop(label)
        with self._lock:
            snap, gaze, run = self._snaps.pop(label.snapshot_id, (None, None, None))
        if snap is not None:
            self.last = LastOracle(snap, label, decision, gaze)
            self._store(label, snap.image, snap.fast_xy, decision, snap.t_ns, run)
        elif self._writer is not None:
            # Its snapshot went with a calibration made while it was labelled: the loop has
            # seen the label, the store cannot have it without its frame. Said, not hidden.
            self.labels_unstored += 1
            if self.labels_unstored == 1:
                log.warning(
                    "label store: the oracle's label of %s came after a calibration let go "
                    "of its snapshot: not stored (counted in labels_unstored)",
                    label.snapshot_id,
                )

    # --- the label-store writer --------------------------------------------------------

    def _store(self, label, image, fast_xy, decision, t_ns: int, run: int | None) -> None:
        """Hand a label to the writer thread; returns at once (the frame thread calls this).
        `run`: the index of the run record current when the label's frame was taken."""
        if self._writer is not None:
            # Full (or closed): the label is counted as dropped rather than waited for. The
            # callers are the frame thread, which must keep its 60 Hz, and the oracle's; a
            # writer this far behind means a disk that is stalled, and waiting on it would
            # stall tracking with it, while the loop has used the label already.
            self._writer.post((label, image, fast_xy, decision, t_ns, run))

    def note_settings(self, **changes) -> None:
        """The run's settings changed while it runs (the c key's first profile started the
        clicks): labels from here on belong to a run record that says so."""
        if self.run_settings is None:
            return
        self.run_settings = {**self.run_settings, **changes}
        self._new_run(self.mapper)

    def _new_run(self, mapper: ProfileMapper | None) -> None:
        """From here on labels belong to a new run record: this run's settings on `mapper`'s
        screen, whose fractions their points are (`LabelStore.begin_run`, made by the writer
        with the first label). Nothing without a store or settings to record."""
        if self.store is None or self.run_settings is None:
            return
        record = (dict(self.run_settings), None if mapper is None else mapper.screen)
        with self._runs_lock:
            self._run_records.append(record)
            self._run_key = len(self._run_records) - 1

    def _run_id(self, key: int | None) -> int | None:
        """The store's id of run record `key`, recorded on first use (the writer thread
        only). A store that cannot take it keeps the labels without it, said once."""
        if key is None:
            return None
        if key not in self._run_ids:
            with self._runs_lock:
                settings, screen = self._run_records[key]
            try:
                self._run_ids[key] = self.store.begin_run(settings, screen)
            except Exception as e:  # a full disk must not stop tracking, nor cost the label
                # Not kept as failed: a store locked for a while by another process takes
                # the record at the next label, where all the run's labels went without it.
                if self.run_record_error is None:
                    log.error("label store: %s (labels are kept without their run)", e)
                self.run_record_error = str(e)
                return None
        return self._run_ids[key]

    def _write(self, label, image, fast_xy, decision, t_ns: int, run: int | None) -> None:
        try:
            # The snapshot's capture time, on the clock the gaze stream uses.
            t_ms = None if self.clock is None else self.clock.ms(t_ns)
            # A replay must not make a record of its own: looked for before the first label
            # of a record (after it, `add` refuses a replay as it is).
            if run is not None and run not in self._run_ids and self.store.has(label.snapshot_id):
                raise DuplicateLabelError(f"snapshot {label.snapshot_id!r} is already stored")
            run_id = self._run_id(run)
            self.store.add(label, image, fast_xy, decision, snapshot_ms=t_ms, run_id=run_id)
            self.labels_stored += 1
            self.labels_without_run += run is not None and run_id is None
            if self.uplink is not None:
                self.uplink.nudge()
        except DuplicateLabelError:
            self.store_duplicates += 1  # the same snapshot replayed: kept once already
        except Exception as e:  # a full disk must not stop tracking; say so once per kind
            self.store_errors += 1
            self.store_error = str(e)
            if self.store_errors == 1:
                log.error("label store: %s (labels are not kept until this is fixed)", e)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every label posted so far is judged, and every label handed to the
        store is written (or failed) and the writer is idle; False if `timeout` seconds
        passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        if not self._judged(timeout):
            return False
        left = None if end is None else max(0.0, end - time.monotonic())
        return self._writer is None or self._writer.idle(left)

    def drain_store(self) -> None:
        """The end of a run's first step. Wait up to `_DRAIN_S` for the labels handed to the
        store; past it, give up on those still queued (counted in `store_unwritten`; the one
        being written, if any, in `store_stuck`), so the run's summary is what the store
        holds and the end is bounded. A stalled disk had the writer go on after the summary,
        and the run hang at its end. The clicks still being judged come first (up to
        `_DRAIN_S` too): their labels are the store's."""
        self._stop_judge()
        if self._writer is None or self._writer.closed or self.flush(_DRAIN_S):
            return
        queued, self.store_stuck = self._writer.drop_waiting()
        self.store_unwritten += queued
        log.error(
            "label store: %d labels not written within %.0f s (the disk or the store's lock "
            "did not answer): given up",
            queued + self.store_stuck,
            _DRAIN_S,
        )

    def _stop_judge(self) -> None:
        """Take no more labels (posted after this, one is dropped, counted) and judge those
        posted so far, once, within `_DRAIN_S`; past it, give up on them (counted in
        `labels_unjudged`): an update that never ends must not hold the run's end, nor
        have every later step of the end wait for it again."""
        if not self._judge.close() or not self._judge.started:
            return
        if self._judged(_DRAIN_S):
            self._judge.join(_DRAIN_S)
            return
        self.labels_unjudged += sum(self._judge.abandon())
        log.error(
            "drift loop: %d clicks not judged within %.0f s: given up",
            self.labels_unjudged,
            _DRAIN_S,
        )

    def _stop_writer(self) -> bool:
        """→ whether the writer has ended (False: stuck in a write the disk does not finish)."""
        if self._writer is None:
            return True
        self.drain_store()
        self._writer.close()
        self._writer.join(1.0 if self.store_stuck else _DRAIN_S)
        return not self._writer.is_alive()

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict:
        ms = np.array(self._frame_ms) if self._frame_ms else np.zeros(1)
        t = np.array(self._frame_t)
        fps = (len(t) - 1) / ((t[-1] - t[0]) / 1e9) if len(t) > 1 and t[-1] > t[0] else 0.0
        out = {
            "fps": round(float(fps), 1),
            "frame_ms_p50": round(float(np.median(ms)), 2),
            "offset": None if self.loop is None else [round(float(v), 4) for v in self.loop.offset],
            "alarm": None if self.loop is None else (self.loop.alarm_reason or None),
        }
        if self.loop is not None and self.mapper is not None:
            # People read the correction in pixels of the screen they look at.
            px = np.asarray(self.loop.offset) * np.asarray(self.mapper.screen.px, dtype=float)
            out["offset_px"] = [round(float(v), 1) for v in px]
        if self.worker is not None:
            m = self.worker.metrics()
            out["oracle"] = {
                "submitted": m.submitted,
                "done": m.done,
                "failed": m.failed,
                "timed_out": m.timed_out,
                "bad": m.bad,
                "last_error": m.last_error,
                "busy": m.busy,
                "pending": m.pending,
                "latency_p50_s": m.latency_p50_s,
            }
        for k in (
            "store_dropped", "labels_dropped", "labels_unjudged", "judge_errors", "labels_unstored"
        ):  # fmt: skip
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.clicks is not None:
            out["clicks"] = dict(self.clicks.verdicts)
        if self.glance is not None:
            out["glance"] = dict(self.glance.verdicts)
            out["glance_showing"] = self.glance.active is not None
        if self.loop is not None:
            # Appended by the oracle's and the judge's threads: a generator over the deque
            # itself could see one appended midway ("deque mutated during iteration").
            decided = list(self.decisions)
            acc = sum(d.accepted for d in decided)
            out["labels"] = {"accepted": acc, "rejected": len(decided) - acc}
            out["sources"] = self._sources_status()
            last = decided[-1] if decided else None
            if last is not None:
                out["last_decision"] = {
                    "source": last.source,
                    "accepted": last.accepted,
                    "why": last.why,
                }
        out.update(self._mqtt_status())
        return out

    def _sources_status(self) -> dict:
        """Per label source: labels, accepted, its noise scale (σ per axis, in pixels of the
        screen when there is a profile, else screen widths) and weight in the loop."""
        width = None if self.mapper is None else float(self.mapper.screen.px[0])
        out = {}
        for name, v in self.loop.sources().items():
            out[name] = {
                "labels": v.labels,
                "accepted": v.accepted,
                "scale": round(v.scale * width, 1) if width else round(v.scale, 4),
                "scale_unit": "px" if width else "screen widths",
                "weight": round(v.weight, 3),
                "measured": v.measured,
                "last": v.last,
            }
        return out

    def _mqtt_status(self) -> dict:
        out: dict = {}
        if self.publisher is not None:
            p = self.publisher.stats
            out["gaze_stream"] = {
                "offered": p.offered, "sent": p.sent, "dropped": p.dropped,
                "dropped_queue": p.dropped_queue, "dropped_stale": p.dropped_stale,
                "dropped_closed": p.dropped_closed, "connected": p.connected,
                "last_error": p.last_error,
            }  # fmt: skip
        if self.uplink is not None:
            u = self.uplink.stats
            out["label_uplink"] = {
                "stored": self.labels_stored, "sent": u.sent,
                "pending": self.labels_pending(max_age_s=0.5),
                "connected": u.connected, "last_error": u.last_error,
            }  # fmt: skip
        return out

    def labels_pending(self, max_age_s: float = 0.0) -> int | None:
        """Stored labels the broker has not acknowledged (None: no uplink, its outbox is
        unreadable, or the store is stuck in a write). `max_age_s` > 0: the status line's
        question, asked on the frame thread at every frame, which must never wait on the
        disk: the last count, no older than that when one is taken, and a new one taken on
        a thread of its own (it reads two SQLite files and the store's lock, which a write to
        a stalled disk holds). 0: counted now (the end of a run, after the store's drain)."""
        if self.uplink is None or self.store_stuck:
            return None
        if max_age_s <= 0:
            return self._count_pending()
        seen_at, n = self._pending_seen
        if time.monotonic() - seen_at > max_age_s and not self._pending_counting.is_set():
            self._pending_counting.set()
            threading.Thread(
                target=self._count_pending, name="gazeloop-pending-count", daemon=True
            ).start()
        return n

    def _count_pending(self) -> int | None:
        try:
            n = self.uplink.pending_count()
        except Exception as e:  # a store or outbox that cannot be read: shown as "?", not fatal
            log.debug("label outbox unreadable: %s", e)
            n = None
        self._pending_seen = (time.monotonic(), n)
        self._pending_counting.clear()
        return n

    def finish(self, wait_s: float = 0.0, *, oracle_wait_s: float = 0.0) -> None:
        """The end of a run: the oracle stops, the labels queued for the store are written,
        then up to `wait_s` for the labels and gaze samples still on their way to the broker;
        the gaze publisher is closed, so its counts are final. The uplink and the store stay
        open (for `status()`) until `close()`.

        The oracle's snapshot in hand is labelled and stored if that takes at most
        `oracle_wait_s`; past it, the call is cancelled and its answer discarded. A replay
        waits (its labels then do not depend on when the scheduler ran the oracle); a camera
        run ends when asked, not a Moondream call later."""
        if self.worker is not None:
            if oracle_wait_s > 0:
                self.worker.wait_idle(oracle_wait_s)
            self.worker.close()
        self.drain_store()  # before the uplink drains: it sends what the store holds
        end = time.monotonic() + wait_s
        # A write stuck on the disk holds the store's lock, which the uplink reads under.
        if self.uplink is not None and wait_s > 0 and not self.store_stuck:
            self.uplink.drain(wait_s)
        if self.publisher is not None:
            left = max(0.0, end - time.monotonic())
            # A camera's samples go stale in 0.5 s: waiting longer for them is no use.
            live = self.clock is not None and self.clock.live
            self.publisher.flush(min(left, 1.0) if live else left)
            self.publisher.close()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self._stop_judge()
        ended = self._stop_writer()  # every label accepted is written before the store closes
        if self.publisher is not None:
            self.publisher.close()
        # Closing the store, or the uplink's outbox that reads it, takes the lock a write
        # stuck on the disk holds: the run would never end. Left open; the process ends.
        if self.uplink is not None and ended:  # before the store it reads
            self.uplink.close()
        if self.store is not None and hasattr(self.store, "close"):
            if ended:
                self.store.close()
            else:
                log.error("label store: a write the disk never finished; left open")
        self.fp.close()
