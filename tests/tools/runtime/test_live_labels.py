"""Labels without a snapshot of their own in `Live`: clicks and the validation glance go
through the loop and into a real label store (SQLite in a temp folder), accepted or not,
with the loop's decision; the glance comes when asked and when the loop has been quiet. The
store's writes happen on `Live`'s writer thread, so the tests `flush()` before reading it, and
a store that blocks on an Event stands for a stalled disk."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.calibration.store.labelstore import LabelStore
from gazeloop.fastpath.types import Frame, GazeSample, Quality
from gazeloop.tools.runtime.clicks import ClickLabeller
from gazeloop.tools.runtime.live import Live

MS = 1_000_000
SCREEN = (1920, 1080)
DRIFT = np.array([60.0, -40.0]) / SCREEN  # the fast path's error, normalised


class FakeFastPath:
    """Looks where `gaze` says (normalised), plus a drift, plus the loop's offset: what the
    real fast path does with a mapper whose offset the loop sets."""

    def __init__(self) -> None:
        self.gaze = np.array([0.5, 0.5])
        self.mapper = None

    def set_mapper(self, m) -> None:
        self.mapper = m

    def process(self, frame: Frame) -> GazeSample:
        xy = self.gaze + DRIFT + np.asarray(self.mapper.offset)
        q = Quality(face=True, confidence=1.0)
        shown = np.clip(xy, 0.0, 1.0)  # as the fast path shows it
        return GazeSample(
            frame.t_ns, frame.index, q, screen_xy=shown, screen_xy_unclipped=xy, screen_xy_raw=xy
        )

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 7_000 * MS

    def __call__(self) -> int:
        return self.t


def mapper():
    return SimpleNamespace(screen=SimpleNamespace(px=SCREEN), offset=np.zeros(2))


def make_rig(store, m=None, **kw) -> SimpleNamespace:
    fp = FakeFastPath()
    live = Live(fp, mapper=m or mapper(), store=store, **kw)
    clock = Clock()
    state = {"i": 0, "t_ms": 0.0}

    def run(ms: float, gaze=None) -> None:
        """Frames at 60 Hz for `ms` (frame clock and the listener's clock advance together)."""
        if gaze is not None:
            fp.gaze = np.asarray(gaze, dtype=float)
        end = state["t_ms"] + ms
        while state["t_ms"] < end:
            state["t_ms"] += 1000 / 60
            state["i"] += 1
            clock.t = 7_000 * MS + round(state["t_ms"] * MS)
            img = np.full((48, 64, 3), state["i"] % 256, np.uint8)
            live.process(Frame(round(state["t_ms"] * MS), img, state["i"]))

    return SimpleNamespace(live=live, store=store, fp=fp, clock=clock, run=run, state=state)


@pytest.fixture
def rig(tmp_path):
    r = make_rig(LabelStore(tmp_path / "labels"))
    yield r
    r.live.close()


def test_a_click_label_is_stored_with_its_decision_and_frame(rig):
    live = rig.live
    live.clicks = ClickLabeller(live.history, SCREEN, live.external_label, clock=rig.clock)
    target = np.array([0.3, 0.6])
    rig.run(600, target)
    live.clicks.press(*(target * SCREEN))
    rig.clock.t += 60 * MS
    live.clicks.release(*(target * SCREEN))
    rig.run(700)  # past the burst window: the click is decided
    assert live.clicks.verdicts == {"ok": 1}
    assert live.flush(10)
    (row,) = list(rig.store)
    assert row.oracle == "clicks" and row.snapshot_id.startswith("click-")
    assert row.accepted and row.why == "accepted"
    assert row.observation.xy == pytest.approx(tuple(target))
    assert row.residual == pytest.approx(tuple(-DRIFT), abs=1e-9)
    assert row.fast_xy == pytest.approx(tuple(target + DRIFT))
    # The camera frame nearest the fixation's end is the label's image.
    assert row.image is not None and rig.store.image_path(row).is_file()
    st = live.status()
    assert st["sources"]["clicks"]["labels"] == 1 and st["sources"]["clicks"]["accepted"] == 1
    assert st["last_decision"] == {"source": "clicks", "accepted": True, "why": "accepted"}
    assert live.labels_stored == 1


def test_a_click_at_the_screens_edge_sees_the_estimate_past_it(rig):
    """A click on the Dock, the estimate below the screen: the History keeps the point
    where it is, not where the screen clips it (clipped, the residual could be no larger
    than the target's distance to the edge, and the drift was never corrected)."""
    live = rig.live
    live.clicks = ClickLabeller(live.history, SCREEN, live.external_label, clock=rig.clock)
    target = np.array([0.3, 0.99])
    rig.fp.gaze = target - DRIFT + [0.0, 0.05]  # shown at the bottom edge, 0.04 beyond it
    rig.run(600)
    live.clicks.press(*(target * SCREEN))
    rig.clock.t += 60 * MS
    live.clicks.release(*(target * SCREEN))
    rig.run(700)
    assert live.clicks.verdicts == {"ok": 1}
    assert live.flush(10)
    (row,) = list(rig.store)
    assert row.fast_xy == pytest.approx((0.3, 1.04))
    assert row.residual == pytest.approx((0.0, -0.05), abs=1e-9)


def test_a_rejected_click_label_is_stored_too(rig):
    rig.run(300)
    t = round(rig.state["t_ms"] * MS)
    lab = OracleLabel(
        t_ns=t,
        snapshot_id="click-1",
        oracle="clicks",
        observation=PointObservation(xy=(0.5, 0.5)),
        confidence=0.1,
    )
    d = rig.live.external_label(lab)
    assert not d.accepted
    assert rig.live.flush(10)
    (row,) = list(rig.store)
    assert not row.accepted and row.why.startswith("confidence") and row.oracle == "clicks"
    assert rig.store.count(accepted=False) == 1


def test_a_glance_on_request_labels_the_fixation_on_its_dot(rig):
    live = rig.live
    glance = live.enable_glance(auto_after_s=0)
    rig.run(300, (0.2, 0.2))
    g = glance.start(round(rig.state["t_ms"] * MS))
    assert g.xy == (0.5, 0.5)  # the first dot is the centre
    rig.run(200)  # the eye has not left yet
    rig.run(1000, g.xy)  # then rests on the dot (seen through the drift)
    assert glance.active is None and glance.last.verdict == "ok"
    assert live.flush(10)
    (row,) = list(rig.store)
    assert row.oracle == "glance" and row.accepted
    assert row.observation.xy == (0.5, 0.5)
    assert row.details["trigger"] == "key" and row.details["fixation_ms"] >= 250
    assert row.details["fixation_px"] == pytest.approx(list((0.5 + DRIFT) * SCREEN), abs=1e-6)
    assert row.image is not None
    assert live.status()["glance"] == {"ok": 1}
    # One label against the calibration's prior: a small step, toward the drift's correction.
    off = np.asarray(live.loop.offset)
    assert np.dot(off, -DRIFT) > 0.9 * np.hypot(*off) * np.hypot(*DRIFT) > 0


def test_a_glance_nobody_looks_at_gives_no_label(rig):
    glance = rig.live.enable_glance(auto_after_s=0)
    rig.run(100, (0.9, 0.9))
    glance.start(round(rig.state["t_ms"] * MS), xy=(0.1, 0.1))
    rig.run(3000)
    assert rig.live.flush(10)
    assert glance.last.verdict == "far" and list(rig.store) == []


def test_the_glance_comes_on_its_own_after_a_quiet_spell_and_never_while_calibrating(rig):
    glance = rig.live.enable_glance(auto_after_s=2.0)
    rig.run(1000)
    assert not glance.due(round(rig.state["t_ms"] * MS))
    rig.run(1100)
    now = round(rig.state["t_ms"] * MS)
    glance.calibrating = True
    assert not glance.due(now) and glance.start(now) is None
    glance.calibrating = False
    assert glance.due(now)
    # A label of any source restarts the quiet time.
    rig.live.external_label(
        OracleLabel(
            t_ns=now, snapshot_id="c", oracle="clicks", observation=PointObservation(xy=(0.5, 0.5))
        )
    )
    assert not glance.due(now + 1)
    assert glance.due(now + round(2.0e9))


def test_glance_needs_a_profile_and_a_new_calibration_remakes_it(tmp_path):
    fp = FakeFastPath()
    live = Live(fp)
    assert live.enable_glance(60.0) is None
    live.install(mapper())
    assert live.glance is not None and live.glance.auto_after_s == 60.0
    live.close()


def test_the_status_line_names_each_source_its_noise_weight_and_the_last_decision(rig):
    from gazeloop.tools.commands.run import status_text

    rig.run(300, (0.5, 0.5))
    t = round(rig.state["t_ms"] * MS)
    for i, (source, conf) in enumerate((("clicks", 1.0), ("glance", 1.0), ("clicks", 0.1))):
        lab = OracleLabel(
            t_ns=t - i * 20 * MS,
            snapshot_id=f"{source}-{i}",
            oracle=source,
            observation=PointObservation(xy=(0.5, 0.5)),
            confidence=conf,
        )
        rig.live.external_label(lab)
    assert rig.live.flush(10)
    line = status_text(rig.live, None)
    # Priors: σ 0.075 screen widths = 144 px on a 1920 px screen, weight 1 for both.
    assert "clicks 1/2 σ 144px w 1.00" in line and "glance 1/1 σ 144px w 1.00" in line
    assert "last clicks rejected: confidence 0.10 < 0.30" in line
    assert "labels stored 3" in line


# --- the store's writer thread: a stalled disk never stalls the frame thread -------------


class GatedStore:
    """A real label store whose writes wait until `gate` is set: a disk that stalls.
    `entered` is set when a write has begun (and is waiting)."""

    def __init__(self, root) -> None:
        self.inner = LabelStore(root)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def add(self, *args, **kw):
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.add(*args, **kw)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str):  # the rest of the store's API, as the real one
        return getattr(self.inner, name)


def click(t_ns: int, i: int) -> OracleLabel:
    return OracleLabel(
        t_ns=t_ns,
        snapshot_id=f"click-{i}",
        oracle="clicks",
        observation=PointObservation(xy=(0.5, 0.5)),
    )


@pytest.fixture
def gated(tmp_path):
    store = GatedStore(tmp_path / "labels")
    made = []

    def make(**kw) -> SimpleNamespace:
        r = make_rig(store, **kw)
        made.append(r)
        r.run(300)
        r.t = round(r.state["t_ms"] * MS)
        return r

    yield store, make
    store.gate.set()  # a failed test must not leave close() waiting on the gate
    for r in made:
        r.live.close()


def test_external_label_returns_while_the_store_write_is_still_blocked(gated):
    store, make = gated
    r = make()
    d = r.live.external_label(click(r.t, 0))
    # Back on the frame thread, with the loop's decision, while the write has not finished:
    assert d is not None and d.source == "clicks"
    assert store.entered.wait(30) and not store.gate.is_set()
    assert r.live.labels_stored == 0 and list(store.inner) == []
    store.gate.set()
    assert r.live.flush(10)
    assert r.live.labels_stored == 1 and r.live.store_errors == 0
    (row,) = list(store.inner)
    assert row.snapshot_id == "click-0" and row.oracle == "clicks"
    assert "store_dropped" not in r.live.status()


def test_finish_and_close_write_every_queued_label_first(gated, tmp_path):
    store, make = gated
    drained_with: list[int] = []
    uplink = SimpleNamespace(
        nudge=lambda: None,
        drain=lambda wait_s: drained_with.append(store.inner.count()),
        close=lambda: None,
    )
    r = make()
    r.live.uplink = uplink
    for i in range(5):
        r.live.external_label(click(r.t - i * MS, i))
    assert store.entered.wait(30)
    # The disk comes back only once finish() has begun to drain: all five are still queued.
    queued_at_drain: list[int] = []
    flush = r.live.flush

    def flush_opening_the_gate(timeout=None):
        queued_at_drain.append(r.live.labels_stored)
        store.gate.set()
        return flush(timeout)

    r.live.flush = flush_opening_the_gate
    r.live.finish(wait_s=1.0)
    assert queued_at_drain[0] == 0
    assert drained_with == [5]  # every label was in the store before the uplink drained
    assert r.live.labels_stored == 5
    r.live.close()
    with LabelStore(tmp_path / "labels") as again:
        assert sorted(row.snapshot_id for row in again) == [f"click-{i}" for i in range(5)]


def test_close_alone_drains_the_queue_before_the_store_closes(gated, tmp_path):
    store, make = gated
    r = make()
    for i in range(4):
        r.live.external_label(click(r.t - i * MS, i))
    assert store.entered.wait(30) and r.live.labels_stored == 0
    flush = r.live.flush

    def flush_opening_the_gate(timeout=None):
        store.gate.set()
        return flush(timeout)

    r.live.flush = flush_opening_the_gate
    r.live.close()
    assert r.live.labels_stored == 4 and r.live.store_dropped == 0
    with LabelStore(tmp_path / "labels") as again:
        assert again.count() == 4


def test_a_full_queue_drops_and_counts_labels_instead_of_blocking_the_frame_thread(gated):
    from gazeloop.tools.commands.run import status_text

    store, make = gated
    r = make(store_queue=2)  # the one being written and one waiting
    decisions = [r.live.external_label(click(r.t - i * MS, i)) for i in range(5)]
    # All five came back to the frame thread while the store was stalled on the first:
    assert all(d is not None for d in decisions) and not store.gate.is_set()
    assert r.live.store_dropped == 3 and r.live.status()["store_dropped"] == 3
    assert len(r.live.decisions) == 5  # the loop used every label; only the writes were dropped
    store.gate.set()
    assert r.live.flush(10)
    assert r.live.labels_stored == 2 and store.inner.count() == 2
    assert "3 NOT stored: the store's writer fell behind" in status_text(r.live, None)


class HeldLoop:
    """A drift loop whose updates wait for `gate`: one that takes as long as the test says.
    The tests' frames run on the main thread, where an update must never run."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate
        self.entered = threading.Event()

    def update(self, label):
        if threading.current_thread() is threading.main_thread():
            raise AssertionError("a posted label was judged on the frame thread")
        self.entered.set()
        self.gate.wait(10)
        return self.inner.update(label)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def held_rig(tmp_path, m=None, **kw) -> SimpleNamespace:
    """A rig whose loop holds each update until `r.gate` is set; clicks are posted."""
    from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig

    gate, held = threading.Event(), []

    def factory(history, m, new_sitting):
        held.append(HeldLoop(DriftLoop(LoopConfig(), history, offset=m.offset), gate))
        return held[-1]

    r = make_rig(LabelStore(tmp_path / "labels"), m, loop_factory=factory, **kw)
    r.gate, r.loop = gate, held[0]
    r.live.clicks = ClickLabeller(r.live.history, SCREEN, r.live.post_label, clock=r.clock)
    return r


def post_clicks(r: SimpleNamespace, n: int) -> int:
    """`n` clicks posted after 300 ms of frames, the first held by the loop; → their time."""
    r.run(300)
    t = round(r.state["t_ms"] * MS)
    for i in range(n):
        r.live.post_label(click(t - i * MS, i))
    assert r.loop.entered.wait(10)
    return t


def click_at(r: SimpleNamespace, target: np.ndarray) -> None:
    r.run(600, target)
    r.live.clicks.press(*(target * SCREEN))
    r.clock.t += 60 * MS
    r.live.clicks.release(*(target * SCREEN))


def test_a_posted_click_is_judged_by_the_loop_on_another_thread_than_the_frames(tmp_path):
    """An update takes up to 8 ms with a few hundred labels held, and waits for the loop's
    lock while the oracle's thread holds it: on the frame thread, beside the fast path's
    11-12 ms, it made a click's frame late at 60 Hz. Here the loop holds the click until
    the test lets it go; frames go on meanwhile, and the label is judged, stored and shown
    once it does."""
    r = held_rig(tmp_path)
    try:
        click_at(r, np.array([0.3, 0.6]))
        r.run(700)  # past the burst window: the click is decided, and posted
        assert r.live.clicks.verdicts == {"ok": 1}
        assert r.loop.entered.wait(10)
        frames = r.state["i"]
        r.run(500)  # the frame thread goes on while the loop holds the click
        assert r.state["i"] == frames + 30 and not r.gate.is_set()
        assert len(r.live.decisions) == 0 and not r.live.flush(0.05)
        r.gate.set()
        assert r.live.flush(10)
        (d,) = r.live.decisions
        assert d.accepted and d.source == "clicks"
        (row,) = list(r.store)
        assert row.snapshot_id.startswith("click-") and row.accepted
        assert r.live.status()["last_decision"]["source"] == "clicks"
    finally:
        r.gate.set()
        r.live.close()


def test_posted_labels_past_the_judges_queue_are_dropped_and_counted(tmp_path):
    import gazeloop.tools.runtime.live as live_mod
    from gazeloop.tools.commands.run import status_text

    r = held_rig(tmp_path)
    try:
        post_clicks(r, live_mod.JUDGE_QUEUE + 3)  # the first is judged, JUDGE_QUEUE - 1 wait
        assert r.live.labels_dropped == 3 and r.live.status()["labels_dropped"] == 3
        said = "3 clicks NOT judged (the loop fell behind, or the run was ending)"
        assert said in status_text(r.live, None)
        r.gate.set()
        assert r.live.flush(10)
        assert len(r.live.decisions) == live_mod.JUDGE_QUEUE
        assert r.live.labels_stored == live_mod.JUDGE_QUEUE
    finally:
        r.gate.set()
        r.live.close()


def test_the_end_of_a_run_judges_and_stores_the_clicks_still_posted(tmp_path):
    """`drain_store` (the end of `run`) waits for the judge before the writer: the summary
    counts the last clicks. Labels posted after it are dropped, counted."""
    r = held_rig(tmp_path)
    try:
        t = post_clicks(r, 3)
        threading.Timer(0.2, r.gate.set).start()  # the loop lets go while the end waits
        r.live.drain_store()
        assert len(r.live.decisions) == 3 and r.live.labels_stored == 3
        r.live.post_label(click(t + MS, 9))
        assert r.live.labels_dropped == 1 and len(r.live.decisions) == 3
    finally:
        r.gate.set()
        r.live.close()


def test_a_click_posted_before_a_new_model_came_is_stored_under_its_own_run(tmp_path):
    """The judge may take a click after the model watcher has adopted a new model: the
    click was made while the old one mapped, and its record is the old run's."""
    from gazeloop.calibration.geometry import ScreenGeometry

    def on_screen():
        return SimpleNamespace(screen=ScreenGeometry(px=SCREEN), offset=np.zeros(2))

    r = held_rig(tmp_path, on_screen(), run_settings={"source": "0"})
    try:
        obs = PointObservation(xy=(0.5, 0.5))

        def post(i: int) -> None:
            r.live.post_label(
                OracleLabel(t_ns=i, snapshot_id=f"c{i}", oracle="clicks", observation=obs)
            )

        post(0)
        assert r.loop.entered.wait(10)  # being judged, by the old model's loop
        post(1)  # waiting for the judge
        gaze = SimpleNamespace(model_id="tuned", sha256="ab" * 32, read="ray")
        r.live.adopt(on_screen(), gaze)
        post(2)
        r.gate.set()
        assert r.live.flush(10)
        first, tuned = r.store.runs()
        runs = {row.snapshot_id: row.run_id for row in r.store}
        assert runs == {"c0": first.id, "c1": first.id, "c2": tuned.id}
    finally:
        r.gate.set()
        r.live.close()


def test_a_click_posted_after_the_end_is_dropped_even_when_none_came_before(tmp_path):
    r = make_rig(LabelStore(tmp_path / "labels"))
    try:
        r.live.drain_store()
        obs = PointObservation(xy=(0.5, 0.5))
        r.live.post_label(OracleLabel(t_ns=1, snapshot_id="c1", oracle="clicks", observation=obs))
        assert r.live.labels_dropped == 1 and r.live.flush(10)
        assert len(r.live.decisions) == 0 and list(r.store) == []
    finally:
        r.live.close()


def test_an_update_that_never_ends_is_given_up_on_once_and_counted(tmp_path, monkeypatch):
    """The end of a run waits `_DRAIN_S` for the clicks being judged, once: the run's end
    has three steps (drain, finish, close), and each waited again, 90 s in all."""
    import gazeloop.tools.runtime.live as live_mod
    from gazeloop.tools.commands.run import status_text

    monkeypatch.setattr(live_mod, "_DRAIN_S", 0.2)
    r = held_rig(tmp_path)
    try:
        post_clicks(r, 3)
        said, judged = [], r.live._judged

        def judged_said(timeout):
            said.append(judged(timeout))
            return said[-1]

        monkeypatch.setattr(r.live, "_judged", judged_said)
        r.live.drain_store()
        r.live.finish()
        # Given up on once (the update is still held); every later step went straight on.
        assert said == [False, True, True], said
        assert r.live.labels_unjudged == 3 and r.live.store_unwritten == 0
        assert "3 clicks NOT judged: the loop did not finish in time" in status_text(r.live, None)
        # The one being judged when the end gave up finishes later: counted as not judged,
        # so not stored as well.
        r.gate.set()
        r.live._judge.join(10)
        assert not r.live._judge.is_alive() and r.live.flush(10)
        assert len(r.live.decisions) == 1 and r.live.labels_stored == 0
    finally:
        r.gate.set()
        r.live.close()


class LockedStall(GatedStore):
    """A stalled disk as the real store meets it: the write holds the store's lock while the
    disk does not answer, so closing the store (which takes the lock) waits as long."""

    def add(self, *args, **kw):
        with self.inner._lock:
            self.entered.set()
            self.gate.wait(60)
            return self.inner.add(*args, **kw)


def _uplink_reading(store: LockedStall) -> SimpleNamespace:
    """A label uplink as the real one reads: its count, drain and close under the store's
    lock (`outbox.take_in(store)`)."""

    def under_lock(*_a, **_k) -> int:
        with store.inner._lock:
            return 0

    stats = SimpleNamespace(sent=0, connected=True, last_error=None, unsendable=0)
    return SimpleNamespace(
        nudge=lambda: None, pending_count=under_lock, drain=under_lock, close=under_lock,
        stats=stats,
    )  # fmt: skip


@pytest.mark.parametrize("mqtt", [False, True])
def test_a_stalled_disk_at_the_end_is_given_up_on_and_the_run_ends(tmp_path, monkeypatch, mqtt):
    """A frozen disk under the store: the run logged "not written within 30 s" twice and then
    never ended (closing the store waited on the lock the stuck write held; Ctrl-C did not
    help), and labels it gave up on were written after the summary had counted them. With
    --mqtt, counting what was unsent read the store under that lock before anything else."""
    import gazeloop.tools.runtime.live as live_mod
    from gazeloop.tools.commands.run import _finish, status_text

    monkeypatch.setattr(live_mod, "_DRAIN_S", 0.3)
    store = LockedStall(tmp_path / "labels")
    r = make_rig(store, uplink=_uplink_reading(store) if mqtt else None)
    r.run(300)
    t = round(r.state["t_ms"] * MS)
    for i in range(4):
        r.live.external_label(click(t - i * MS, i))
    assert store.entered.wait(30)
    drawn = threading.Event()
    threading.Thread(target=lambda: (r.live.status(), drawn.set()), daemon=True).start()
    assert drawn.wait(10), "the status line (the frame thread's) waited on the stalled disk"
    ended = threading.Event()
    args = SimpleNamespace(mqtt="mqtt://127.0.0.1:1" if mqtt else None, mqtt_wait=1.0)

    def end() -> None:
        _finish(r.live, args, replay=True)  # as `run` ends
        r.summary = status_text(r.live, None)
        r.live.close()
        ended.set()

    threading.Thread(target=end, daemon=True).start()
    try:
        assert ended.wait(20), "the run's end waited on the stalled disk"
        assert (r.live.labels_stored, r.live.store_unwritten, r.live.store_stuck) == (0, 3, 1)
        assert "3 NOT stored: the disk did not take them in time" in r.summary
        assert "1 still being written at the end" in r.summary
    finally:
        store.gate.set()  # the disk comes back: the one write in hand goes through, no more
    r.live._writer.join(10)
    assert not r.live._writer.is_alive() and store.inner.count() == 1
    store.inner.close()


class SlowOracle:
    """Answers every snapshot with the centre after `delay_s`, unless cancelled first."""

    name, version = "slow", "t1"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def label(self, snap, cancel: threading.Event) -> OracleLabel:
        cancel.wait(self.delay_s)
        return OracleLabel(
            t_ns=snap.t_ns,
            snapshot_id=snap.snapshot_id,
            oracle=self.name,
            observation=PointObservation(xy=(0.5, 0.5)),
        )

    def close(self) -> None:
        pass


# The camera case's oracle answers only when cancelled, so no stall can let it in first.
@pytest.mark.parametrize(("oracle_wait_s", "delay_s", "stored"), [(30.0, 0.3, 1), (0.0, 600, 0)])
def test_a_replay_stores_the_label_in_flight_at_its_end_and_a_camera_run_does_not_wait(
    tmp_path, oracle_wait_s, delay_s, stored
):
    """The source ends while the oracle is still labelling its one snapshot: a replay
    waits for it (its labels do not depend on the scheduler); a camera run stops at once
    and the answer is discarded, as `finish` says."""
    from gazeloop.oracle.policy import SnapshotPolicy

    r = make_rig(
        LabelStore(tmp_path / "labels"),
        oracle=SlowOracle(delay_s),
        policy=SnapshotPolicy(min_interval_s=3600.0, fixation_ms=0.0),
    )
    try:
        r.run(200)
        assert r.live.worker.metrics().submitted == 1
        r.live.finish(oracle_wait_s=oracle_wait_s)
        assert r.live.flush(10)
        assert r.store.count() == stored
    finally:
        r.live.close()


def test_the_loop_is_made_by_the_factory_given_and_with_the_settings_given():
    """Strategies are objects: a loop factory makes the loop of each profile, with the
    run's history; `loop_cfg` keeps its settings but takes the screen's aspect."""
    from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig

    made = []

    def factory(history, m, new_sitting):
        made.append((history, m, new_sitting))
        return DriftLoop(LoopConfig(max_total=0.05), history, offset=m.offset)

    live = Live(FakeFastPath(), loop_factory=factory)
    assert live.loop is None and made == []  # no profile, no loop yet
    m = mapper()
    live.install(m)
    assert made == [(live.history, m, False)] and live.loop.cfg.max_total == 0.05
    live.close()

    cfg = LoopConfig(aspect=1.0, huber_k=3.0)
    live = Live(FakeFastPath(), mapper=mapper(), loop_cfg=cfg)
    assert live.loop.cfg.huber_k == 3.0
    assert live.loop.cfg.aspect == pytest.approx(SCREEN[0] / SCREEN[1])
    live.close()
    fp = FakeFastPath()
    with pytest.raises(ValueError, match="not both"):
        Live(fp, mapper=mapper(), loop_cfg=cfg, loop_factory=factory)
    assert fp.mapper is None  # refused before it touched the fast path


def test_a_profile_of_another_screen_gets_a_loop_of_that_screen_shape():
    """The loop weighs x and y by the screen's aspect: a new calibration (or a hot-reloaded
    profile) on a portrait screen must not keep the landscape loop; the same screen keeps
    its loop, started over from the new offset."""
    from gazeloop.calibration.drift.loop import LoopConfig

    live = Live(FakeFastPath(), mapper=mapper(), loop_cfg=LoopConfig(huber_k=3.0))
    first = live.loop
    same = SimpleNamespace(screen=SimpleNamespace(px=SCREEN), offset=np.array([0.01, 0.0]))
    live.install(same)
    assert live.loop is first and np.allclose(live.loop.offset, [0.01, 0.0])
    portrait = SimpleNamespace(screen=SimpleNamespace(px=(1080, 1920)), offset=np.zeros(2))
    live.install(portrait)
    assert live.loop is not first and live.loop.cfg.aspect == pytest.approx(1080 / 1920)
    assert live.loop.cfg.huber_k == 3.0  # the run's settings stay
    live.adopt(mapper())
    assert live.loop.cfg.aspect == pytest.approx(SCREEN[0] / SCREEN[1])
    live.close()


def test_a_label_judged_by_a_loop_replaced_meanwhile_moves_no_mapper():
    """The oracle thread judges a label while the `c` key installs a new calibration: the
    old loop's offset must not land in the new profile's mapper. The install happens inside
    the old loop's update, so the interleaving is fixed, not left to the scheduler."""
    from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig, LoopDecision

    new = SimpleNamespace(screen=SimpleNamespace(px=(1080, 1920)), offset=np.array([0.02, 0.0]))
    live = None

    class Busy:  # the old loop: a new calibration arrives while it judges the label
        def update(self, label):
            live.install(new)
            return LoopDecision(True, "accepted", np.zeros(2), np.zeros(2), np.array([0.3, 0.3]))

    def factory(history, m, new_sitting):
        return Busy() if m is not new else DriftLoop(LoopConfig(), history, offset=m.offset)

    live = Live(FakeFastPath(), mapper=mapper(), loop_factory=factory)
    label = OracleLabel(
        t_ns=1, snapshot_id="x", oracle="clicks", observation=PointObservation(xy=(0.5, 0.5))
    )
    decision = live.external_label(label)
    assert decision.offset.tolist() == [0.3, 0.3]  # the old loop's answer, reported
    assert live.mapper is new and new.offset.tolist() == [0.02, 0.0]  # and not applied
    live.close()


def test_each_screen_and_model_a_run_maps_with_is_a_run_record_its_labels_name(tmp_path):
    """A label's point is a fraction of the screen its run mapped to: a calibration on
    another screen, or a hot-reloaded model, starts a new record in the store, and labels
    name the record that was current when they were judged; the same screen keeps it."""
    from gazeloop.calibration.geometry import ScreenGeometry

    def on(px, dx=0.0):
        return SimpleNamespace(screen=ScreenGeometry(px=px), offset=np.array([dx, 0.0]))

    store = LabelStore(tmp_path / "labels")
    live = Live(FakeFastPath(), mapper=on(SCREEN), store=store, run_settings={"source": "0"})

    def label(i: int) -> None:
        obs = PointObservation(xy=(0.5, 0.5))
        live.external_label(
            OracleLabel(t_ns=i, snapshot_id=f"s{i}", oracle="clicks", observation=obs)
        )

    label(1)
    live.install(on(SCREEN, 0.01))  # recalibrated on the same screen: the same record
    label(2)
    live.install(on((1080, 1920)))  # a portrait screen: a new record
    label(3)
    gaze = SimpleNamespace(model_id="tuned", sha256="ab" * 32, read="ray")
    live.adopt(on((1080, 1920)), gaze)  # a promoted model: a new record saying so
    label(4)
    live.install(on((800, 600)))  # a screen that gets no label: nothing recorded of it
    label(4)  # a replay of a stored snapshot: kept once, and its record is not made either
    assert live.flush(10)
    assert live.store_duplicates == 1 and live.labels_without_run == 0
    first, portrait, tuned = store.runs()
    assert [r.run_id for r in store] == [first.id, first.id, portrait.id, tuned.id]
    assert first.screen.px == SCREEN and portrait.screen.px == tuned.screen.px == (1080, 1920)
    assert "gaze_model" not in portrait.settings and tuned.settings["gaze_model"]["id"] == "tuned"
    assert first.settings["source"] == tuned.settings["source"] == "0"
    live.close()


def test_a_run_record_the_store_could_not_take_is_tried_again_at_the_next_label(tmp_path):
    """A store locked by another process for a while: the run's record failed once and was
    kept as failed, so every later label of the run went without it (without its screen)."""
    import sqlite3

    from gazeloop.calibration.geometry import ScreenGeometry

    class LockedOnce(GatedStore):
        tries = 0

        def begin_run(self, *a, **kw):
            self.tries += 1
            if self.tries == 1:
                raise sqlite3.OperationalError("database is locked")
            return self.inner.begin_run(*a, **kw)

    store = LockedOnce(tmp_path / "labels")
    store.gate.set()
    m = SimpleNamespace(screen=ScreenGeometry(px=SCREEN), offset=np.zeros(2))
    live = Live(FakeFastPath(), mapper=m, store=store, run_settings={"source": "0"})
    for i in range(3):
        obs = PointObservation(xy=(0.5, 0.5))
        live.external_label(
            OracleLabel(t_ns=i, snapshot_id=f"s{i}", oracle="clicks", observation=obs)
        )
    assert live.flush(10)
    assert live.labels_stored == 3 and live.labels_without_run == 1
    (run,) = store.inner.runs()
    assert [r.run_id for r in store.inner] == [None, run.id, run.id]
    live.close()


def test_settings_changed_mid_run_start_a_record_that_says_so(tmp_path):
    """The c key's first profile starts the clicks in a run that began with none: its
    click labels were filed under a record saying "oracle": "none"."""
    from gazeloop.calibration.geometry import ScreenGeometry

    mapper = SimpleNamespace(screen=ScreenGeometry(px=SCREEN), offset=np.zeros(2))
    store = LabelStore(tmp_path / "labels")
    live = Live(FakeFastPath(), mapper=mapper, store=store, run_settings={"oracle": "none"})
    live.note_settings(oracle="clicks")
    obs = PointObservation(xy=(0.5, 0.5))
    live.external_label(OracleLabel(t_ns=1, snapshot_id="s1", oracle="clicks", observation=obs))
    assert live.flush(10)
    (run,) = store.runs()
    assert run.settings["oracle"] == "clicks" and [r.run_id for r in store] == [run.id]
    live.close()


def test_a_store_that_cannot_record_the_run_still_keeps_the_labels(tmp_path):
    """Recording the run fails (a trigger makes SQLite refuse it, as a failing disk would):
    said, and tracking and the labels go on, without their run; no label counts as lost."""
    import sqlite3

    from gazeloop.calibration.geometry import ScreenGeometry
    from gazeloop.calibration.store.labelstore import DB_NAME

    store = LabelStore(tmp_path / "labels")
    with sqlite3.connect(tmp_path / "labels" / DB_NAME) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'disk I/O "
            "error'); END"
        )
    on = SimpleNamespace(screen=ScreenGeometry(px=SCREEN), offset=np.zeros(2))
    live = Live(FakeFastPath(), mapper=on, store=store, run_settings={"source": "0"})
    obs = PointObservation(xy=(0.5, 0.5))
    live.external_label(OracleLabel(t_ns=1, snapshot_id="s1", oracle="clicks", observation=obs))
    assert live.flush(10)
    live.external_label(OracleLabel(t_ns=2, snapshot_id="s2", oracle="clicks", observation=obs))
    assert live.flush(10)
    assert "cannot record a run" in live.run_record_error
    assert live.store_errors == 0 and live.labels_stored == 2
    assert [r.run_id for r in store] == [None, None] and store.runs() == []
    from gazeloop.tools.commands.run import _store_text  # what the run's summary says

    said = _store_text(live)
    assert said[0] == "labels stored 2" and "NOT stored" not in " ".join(said)
    assert said[-1].startswith("2 kept without their run record: cannot record a run")
    assert live.labels_without_run == 2
    live.close()


class GatedOracle:
    """Answers the centre once the test opens `gate`; `asked` is set when a snapshot came."""

    name, version = "gated", "t1"

    def __init__(self) -> None:
        self.gate, self.asked = threading.Event(), threading.Event()

    def label(self, snap, cancel: threading.Event) -> OracleLabel:
        self.asked.set()
        assert self.gate.wait(30), "the test never opened the gate"
        obs = PointObservation(xy=(0.5, 0.5))
        return OracleLabel(
            t_ns=snap.t_ns, snapshot_id=snap.snapshot_id, oracle=self.name, observation=obs
        )

    def close(self) -> None:
        self.gate.set()


def test_a_label_in_flight_across_a_model_swap_names_the_run_its_frame_was_taken_in(tmp_path):
    """The oracle is still labelling a snapshot when a promoted model comes in: its label
    belongs to the run of the old model, a click judged after the swap to the new one. The
    oracle answers only when the test lets it, so the order is fixed, not the scheduler's."""
    from gazeloop.calibration.geometry import ScreenGeometry
    from gazeloop.oracle.policy import SnapshotPolicy

    def on_screen():
        return SimpleNamespace(screen=ScreenGeometry(px=SCREEN), offset=np.zeros(2))

    oracle = GatedOracle()
    policy = SnapshotPolicy(min_interval_s=3600.0, fixation_ms=0.0)
    r = make_rig(
        LabelStore(tmp_path / "labels"), on_screen(), oracle=oracle, policy=policy,
        run_settings={"source": "0"},
    )  # fmt: skip
    try:
        r.run(200)
        assert oracle.asked.wait(30)
        tuned = SimpleNamespace(model_id="tuned", sha256="ab" * 32, read="ray")
        r.live.adopt(on_screen(), tuned)
        obs = PointObservation(xy=(0.5, 0.5))
        now = round(r.state["t_ms"] * MS)
        r.live.external_label(
            OracleLabel(t_ns=now, snapshot_id="c1", oracle="clicks", observation=obs)
        )
        oracle.gate.set()
        r.live.finish(oracle_wait_s=30)
        assert r.live.flush(10)
        run_of = {row.oracle: r.store.run(row.run_id) for row in r.store}
        assert set(run_of) == {"gated", "clicks"}
        assert "gaze_model" not in run_of["gated"].settings
        assert run_of["clicks"].settings["gaze_model"]["id"] == "tuned"
    finally:
        r.live.close()


def test_an_oracles_snapshot_carries_the_estimate_past_the_edge_as_the_history_does():
    """Oracle labels were stored beside the clipped point, clicks beside the History's; and
    both are the frame's own estimate, not the filtered cursor trailing it."""
    from gazeloop.tools.runtime.live import snapshot_of

    s = GazeSample(
        5, 1, Quality(face=True, confidence=1.0),
        screen_xy=np.array([0.4, 1.0]), screen_xy_unclipped=np.array([0.4, 1.2]),
        screen_xy_raw=np.array([0.7, 1.3]),  # the filter has not caught up yet
    )  # fmt: skip
    snap = snapshot_of(Frame(5, np.zeros((4, 4, 3), np.uint8), 1), s)
    assert snap.fast_xy == pytest.approx((0.7, 1.3))


def test_a_hot_reloaded_model_leaves_no_point_of_the_old_one_to_judge_a_label_by(rig):
    """The History holds the old model's estimates: a click's fixation or an oracle's frame
    from before the swap, judged after it, was compared with them under the new profile's
    offset. Now it finds no estimate and moves nothing (and is stored all the same)."""
    rig.run(500, gaze=(0.4, 0.6))
    t_old = rig.live.history.latest().t_ns
    rig.live.adopt(mapper())
    assert rig.live.history.window(0, 10**12) == []
    d = rig.live.external_label(click(t_old, 1))
    assert not d.accepted and "no fast estimate" in d.why
    assert np.allclose(rig.live.loop.offset, 0.0)
    rig.run(100)
    assert rig.live.history.window(0, 10**12)  # the new model's points come in again


def test_a_frame_in_flight_across_a_hot_reload_leaves_no_point_of_the_old_model(rig):
    """`adopt` clears the History on the watcher's thread while a frame of the old model is
    still being processed: that frame's point came in after the clear; the fast path takes
    the new profile only at the next frame, and the point was left for a label to use."""
    rig.run(200, gaze=(0.4, 0.6))
    new = mapper()
    rig.live.adopt(new)  # the watcher: the swap is requested, not yet applied
    rig.run(1000 / 60)  # the frame in flight, mapped with the old profile
    (old_point,) = rig.live.history.window(0, 10**12)
    rig.fp.set_mapper(new)  # the fast path applies the swap as the next frame starts
    rig.run(1000 / 60)
    kept = rig.live.history.window(0, 10**12)
    assert len(kept) == 1 and kept[0].t_ns > old_point.t_ns
