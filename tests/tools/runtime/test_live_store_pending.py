"""An oracle slower than the snapshots (Moondream: seconds a call, a snapshot every 0.5 s)
in a real `Live` with a real label store: the snapshot it is labelling is kept until its
label is stored, however many were handed in and passed over meanwhile, and those are not
kept; a label that still finds no snapshot is counted and said. The oracle waits on the
test (a semaphore) and says when each call begins, so no step depends on the scheduler."""

from __future__ import annotations

import logging
import queue
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.calibration.store.labelstore import LabelStore
from gazeloop.fastpath.types import Frame, GazeSample, Quality
from gazeloop.oracle.base import OracleError
from gazeloop.oracle.policy import SnapshotPolicy
from gazeloop.tools.commands.run import _store_text
from gazeloop.tools.runtime.live import Live

MS = 1_000_000
GUARD = 30.0  # seconds: a deadline for a handshake, never a wait for something to happen


class Gate:
    """An oracle whose calls begin when the worker starts them and answer when the test
    lets them (`go`); a call about a snapshot in `fail` raises instead of answering."""

    name = "gate"
    version = "1"

    def __init__(self) -> None:
        self.begun: queue.Queue[str] = queue.Queue()
        self.go = threading.Semaphore(0)
        self.fail: set[str] = set()

    def label(self, snap, cancel: threading.Event) -> OracleLabel:
        self.begun.put(snap.snapshot_id)
        if not self.go.acquire(timeout=GUARD):
            raise OracleError("the test never let this call answer")
        if snap.snapshot_id in self.fail:
            raise OracleError("no answer for this one")
        obs = PointObservation(xy=(0.4, 0.6))
        return OracleLabel(
            t_ns=snap.t_ns, snapshot_id=snap.snapshot_id, oracle="gate", observation=obs
        )

    def close(self) -> None:
        pass


class StillFastPath:
    """Looks at the middle of the screen, steadily: every frame is a fixation."""

    def set_mapper(self, m) -> None:
        pass

    def process(self, frame: Frame) -> GazeSample:
        xy = np.array([0.5, 0.5])
        q = Quality(face=True, confidence=1.0)
        return GazeSample(
            frame.t_ns, frame.index, q, screen_xy=xy, screen_xy_unclipped=xy, screen_xy_raw=xy
        )

    def close(self) -> None:
        pass


def mapper():
    return SimpleNamespace(screen=SimpleNamespace(px=(1920, 1080)), offset=np.zeros(2))


@pytest.fixture
def rig(tmp_path):
    gate = Gate()
    store = LabelStore(tmp_path / "labels")
    # A snapshot on every frame: 100 ms apart, each a fixation, at most one per 100 ms.
    policy = SnapshotPolicy(min_interval_s=0.1, fixation_ms=0)
    live = Live(StillFastPath(), mapper=mapper(), oracle=gate, policy=policy, store=store)

    def frame(i: int) -> str:
        """Frame `i`, 100 ms after the one before; its snapshot's id."""
        t_ns = 1_000 * MS + i * 100 * MS
        live.process(Frame(t_ns, np.full((48, 64, 3), i, np.uint8), i))
        return f"{t_ns}"

    yield SimpleNamespace(live=live, gate=gate, store=store, frame=frame)
    gate.go.release(100)  # no call left waiting for the test
    live.close()


def test_the_snapshot_being_labelled_outlasts_many_passed_over(rig):
    """The label of a call that took 20 snapshot intervals is stored with its frame (it
    was pushed out after 8, used by the loop and never stored), and of the 19 snapshots
    handed in meanwhile only the newest, which the worker labels next, is kept."""
    first = rig.frame(1)
    assert rig.gate.begun.get(timeout=GUARD) == first
    for i in range(2, 22):
        newest = rig.frame(i)
    assert rig.live.worker.metrics().submitted == 21
    assert set(rig.live._snaps) == {first, newest}  # each kept one holds a camera frame
    rig.gate.go.release()
    assert rig.gate.begun.get(timeout=GUARD) == newest
    rig.gate.go.release()
    rig.live.finish(oracle_wait_s=GUARD)
    rows = {row.snapshot_id: row for row in rig.store}
    assert set(rows) == {first, newest}
    assert rows[first].image is not None and rig.store.image_path(rows[first]).is_file()
    assert rig.live.labels_stored == rig.live.worker.metrics().done == 2
    assert rig.live.labels_unstored == 0 and rig.live.store_dropped == 0


def test_a_failed_calls_snapshot_goes_when_the_next_call_begins(rig):
    first = rig.frame(1)
    assert rig.gate.begun.get(timeout=GUARD) == first
    rig.gate.fail.add(first)
    rig.frame(2)
    waiting = rig.frame(3)
    rig.gate.go.release()  # the first call fails; the worker begins the waiting one
    assert rig.gate.begun.get(timeout=GUARD) == waiting
    newest = rig.frame(4)
    assert set(rig.live._snaps) == {waiting, newest}
    assert rig.live.worker.metrics().failed == 1


def test_a_label_back_after_a_calibration_is_counted_and_said_once(rig, caplog):
    """A calibration made while the oracle labels lets go of its snapshot (the label is of
    the old mapping): the store does not get that label, and says so instead of hiding it."""
    caplog.set_level(logging.WARNING, logger="gazeloop.tools.runtime.live")
    for i in (1, 2):
        sid = rig.frame(10 * i)
        assert rig.gate.begun.get(timeout=GUARD) == sid
        rig.live.install(mapper())
        rig.gate.go.release()
        assert rig.live.worker.wait_idle(GUARD)
    rig.live.finish()
    assert rig.live.labels_unstored == 2 and rig.live.status()["labels_unstored"] == 2
    assert rig.live.labels_stored == 0 and rig.store.count() == 0
    said = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert len(said) == 1
    # and where `run`'s status says what the store did not keep
    line = "2 NOT stored: the oracle answered after a calibration"
    assert line in _store_text(rig.live)
