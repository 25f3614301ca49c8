from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from gazeloop.calibration.labels import LineObservation, OracleLabel, PointObservation, Snapshot
from gazeloop.oracle.base import BadLabel, Oracle, OracleCancelled, check_label
from gazeloop.oracle.process import ProcessOracleError
from gazeloop.oracle.worker import OracleWorker, WorkerMetrics, _percentile

# Failure guards only: a correct worker never waits this long in these tests.
GUARD = 10.0
_IMAGE = np.zeros((4, 4, 3), np.uint8)


def snap(sid: str, t_ns: int | None = None) -> Snapshot:
    return Snapshot(
        t_ns=time.monotonic_ns() if t_ns is None else t_ns, image=_IMAGE, snapshot_id=sid
    )


def good_label(s: Snapshot) -> OracleLabel:
    return OracleLabel(
        t_ns=s.t_ns,
        snapshot_id=s.snapshot_id,
        oracle="gate",
        observation=PointObservation(xy=(0.25, 0.75)),
    )


class Gate:
    """A backend whose calls on snapshots in `hold` block until `release` is set (or, when
    `cooperative`, until their cancel event is set); `respond` makes the answer."""

    name = "gate"
    version = "test"

    def __init__(
        self,
        respond: Callable[[Snapshot], object] = good_label,
        hold: set[str] | None = None,
        cooperative: bool = False,
    ) -> None:
        self.respond = respond
        self.hold = hold or set()
        self.cooperative = cooperative
        self.release = threading.Event()
        self.entered: queue.Queue[str] = queue.Queue()
        self.calls: list[str] = []
        self.cancel_seen: list[str] = []
        self.closed_on: list[str] = []

    def label(self, s: Snapshot, cancel: threading.Event) -> OracleLabel:
        self.calls.append(s.snapshot_id)
        self.entered.put(s.snapshot_id)
        if s.snapshot_id in self.hold:
            if self.cooperative:
                cancel.wait(GUARD * 3)
            else:
                self.release.wait(GUARD * 3)
        if cancel.is_set():
            self.cancel_seen.append(s.snapshot_id)
            if self.cooperative:
                raise OracleCancelled("stopped between steps")
        return self.respond(s)  # type: ignore[return-value]

    def close(self) -> None:
        self.closed_on.append(threading.current_thread().name)


def counts(m: WorkerMetrics) -> int:
    return m.replaced + m.done + m.failed + m.bad + m.timed_out + m.stale + m.cancelled


def test_gate_is_an_oracle() -> None:
    assert isinstance(Gate(), Oracle)


# ---- latest-only queue ----


def test_latest_only_labels_first_and_last_of_a_burst() -> None:
    oracle = Gate(hold={"s0"})
    with OracleWorker(oracle) as w:
        snaps = [snap(f"s{i}", t_ns=time.monotonic_ns() + i) for i in range(5)]
        assert w.submit(snaps[0])
        assert oracle.entered.get(timeout=GUARD) == "s0"
        for s in snaps[1:]:
            assert w.submit(s)  # never blocks, though the backend is stuck
        m = w.metrics()
        assert (m.busy, m.pending, m.replaced, m.started) == (True, True, 3, 1)
        oracle.release.set()
        got = [w.get(timeout=GUARD), w.get(timeout=GUARD)]
        assert [g.snapshot_id for g in got] == ["s0", "s4"]
        # Each label carries its snapshot's own time, not the time it came back.
        assert [g.t_ns for g in got] == [snaps[0].t_ns, snaps[4].t_ns]
        assert oracle.calls == ["s0", "s4"]
        m = w.metrics()
        assert (m.submitted, m.replaced, m.started, m.done) == (5, 3, 2, 2)
        assert (m.failed, m.bad, m.timed_out, m.stale, m.cancelled) == (0, 0, 0, 0, 0)
        assert counts(m) == m.submitted
        assert not m.busy and not m.pending
        assert m.latency_p50_s is not None and 0 <= m.latency_p50_s <= m.latency_p95_s


def test_labels_reach_callback_and_get_with_latency() -> None:
    seen: list[OracleLabel] = []
    done = threading.Event()
    now = [100.0]  # the worker's timer, moved by the backend: 2 s per call, 0.5 s between

    def slow(s: Snapshot) -> OracleLabel:
        now[0] += 2.0
        return good_label(s)

    def on_label(label: OracleLabel) -> None:
        seen.append(label)
        now[0] += 0.5  # not the call's time
        done.set()

    with OracleWorker(Gate(slow), on_label=on_label, timer=lambda: now[0]) as w:
        s = snap("a", t_ns=time.monotonic_ns() - 123)
        w.submit(s)
        label = w.get(timeout=GUARD)
        assert done.wait(GUARD)
        m = w.metrics()
    assert label is not None and seen == [label]
    assert (label.t_ns, label.snapshot_id) == (s.t_ns, "a")
    # The backend left latency_s unset: the worker fills in its own measurement.
    assert label.latency_s == 2.0 and m.latency_p50_s == m.latency_p95_s == 2.0


def test_wait_idle_returns_once_the_last_label_is_delivered() -> None:
    """After `wait_idle` the newest snapshot's label has reached the callback, whatever the
    scheduler did; while a call is held, it says it is not idle."""
    seen: list[str] = []
    oracle = Gate(hold={"s0", "s2"})
    with OracleWorker(oracle, on_label=lambda lab: seen.append(lab.snapshot_id)) as w:
        assert w.wait_idle(0)  # nothing handed in yet
        for i in range(3):
            assert w.submit(snap(f"s{i}", t_ns=time.monotonic_ns() + i))
            if i == 0:
                assert oracle.entered.get(timeout=GUARD) == "s0"
        assert not w.wait_idle(0.01)  # s0 is held, s2 waits (s1 was replaced)
        oracle.release.set()
        assert w.wait_idle(GUARD)
        assert seen == ["s0", "s2"]
        assert (w.metrics().replaced, w.metrics().done) == (1, 2)


def test_callback_exceptions_are_counted_and_harmless(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="gazeloop.oracle.worker")

    def on_label(label: OracleLabel) -> None:
        raise ValueError("listener broke")

    with OracleWorker(Gate(), on_label=on_label) as w:
        for sid in ("a", "b"):
            assert w.run_now(snap(sid), timeout=GUARD) is not None
        assert w.alive
        m = w.metrics()
        assert (m.done, m.callback_errors) == (2, 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("listener broke" in r.getMessage() for r in warnings) == 1


# ---- timeout, cancel, failure, garbage, staleness ----


def test_timeout_discards_late_result_and_serves_next() -> None:
    oracle = Gate(hold={"slow"})
    with OracleWorker(oracle, timeout_s=0.5) as w:
        # run_now returns when the call is declared void at its deadline.
        assert w.run_now(snap("slow"), timeout=GUARD) is None
        m = w.metrics()
        assert (m.timed_out, m.busy, m.done) == (1, True, 0)
        assert "timed out" in (m.last_error or "")
        assert w.submit(snap("next"))  # waits: Python cannot preempt the hung call
        assert w.metrics().pending
        oracle.release.set()
        label = w.get(timeout=GUARD)
        assert label is not None and label.snapshot_id == "next"
        assert w.get(timeout=0) is None  # the late "slow" answer was never delivered
        assert oracle.cancel_seen == ["slow"]  # a cooperative backend would have stopped
        m = w.metrics()
        assert (m.started, m.done, m.timed_out, m.failed) == (2, 1, 1, 0)
        assert counts(m) == m.submitted == 2


def test_cancel_drops_pending_and_stops_cooperative_call() -> None:
    oracle = Gate(hold={"s0"}, cooperative=True)
    with OracleWorker(oracle) as w:
        w.submit(snap("s0"))
        assert oracle.entered.get(timeout=GUARD) == "s0"
        w.submit(snap("s1"))
        w.cancel()
        assert w.submit(snap("s2"))  # the worker goes on after a cancel
        label = w.get(timeout=GUARD)
        assert label is not None and label.snapshot_id == "s2"
        assert oracle.cancel_seen == ["s0"]
        assert oracle.calls == ["s0", "s2"]  # s1 never reached the backend
        m = w.metrics()
        assert (m.cancelled, m.failed, m.done) == (2, 0, 1)
        assert counts(m) == m.submitted == 3


def test_cancel_discards_an_answer_that_comes_anyway() -> None:
    oracle = Gate(hold={"s0"})  # ignores its cancel event
    with OracleWorker(oracle) as w:
        w.submit(snap("s0"))
        assert oracle.entered.get(timeout=GUARD) == "s0"
        w.cancel()
        oracle.release.set()
        assert w.run_now(snap("s1"), timeout=GUARD) is not None
        assert w.get(timeout=GUARD).snapshot_id == "s1"
        assert w.get(timeout=0) is None
        assert (w.metrics().cancelled, w.metrics().done) == (1, 1)


def test_exceptions_are_counted_logged_once_and_survived(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="gazeloop.oracle.worker")
    broken = {"on": True}

    def respond(s: Snapshot) -> OracleLabel:
        if broken["on"]:
            raise RuntimeError("model exploded")
        return good_label(s)

    with OracleWorker(Gate(respond)) as w:
        for i in range(3):
            assert w.run_now(snap(f"x{i}"), timeout=GUARD) is None
        m = w.metrics()
        assert (m.failed, m.done) == (3, 0)
        assert m.last_error == "RuntimeError: model exploded"
        broken["on"] = False
        label = w.run_now(snap("ok"), timeout=GUARD)
        assert label is not None and label.snapshot_id == "ok"
        assert w.metrics().done == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("model exploded" in r.getMessage() for r in warnings) == 1
    assert sum("model exploded" in r.getMessage() for r in caplog.records) == 3


def test_expected_errors_are_one_line_and_unexpected_ones_keep_their_traceback(caplog) -> None:
    """An `OracleError` (a timeout, a restart, a refused answer) says all in its message; any
    other exception is a bug somewhere, whose traceback is wanted. At -vv both have it."""
    restarting = "oracle process is restarting; calls fail until it is up"

    def respond(s: Snapshot) -> OracleLabel:
        if s.snapshot_id == "expected":
            raise ProcessOracleError(restarting)
        raise KeyError("unexpected")

    def warnings() -> dict[str, logging.LogRecord]:
        return {r.getMessage(): r for r in caplog.records if r.levelno == logging.WARNING}

    caplog.set_level(logging.INFO, logger="gazeloop.oracle.worker")
    with OracleWorker(Gate(respond)) as w:
        for sid in ("expected", "bug"):
            assert w.run_now(snap(sid), timeout=GUARD) is None
    expected = warnings()[f"oracle gate: ProcessOracleError: {restarting}"]
    assert expected.exc_info is None
    assert "\n" not in caplog.handler.format(expected)
    bug = warnings()["oracle gate: KeyError: 'unexpected'"]
    assert bug.exc_info is not None and bug.exc_info[0] is KeyError
    assert "Traceback" in caplog.handler.format(bug)

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="gazeloop.oracle.worker")
    with OracleWorker(Gate(respond)) as w:
        assert w.run_now(snap("expected"), timeout=GUARD) is None
    expected = warnings()[f"oracle gate: ProcessOracleError: {restarting}"]
    assert expected.exc_info is not None and expected.exc_info[0] is ProcessOracleError


def test_an_oracle_may_give_a_call_longer_than_timeout_s() -> None:
    """A process oracle's fresh child runs its first call cold: the oracle's `call_timeout_s`
    gives that call longer, and the watchdog times it by that, not by `timeout_s`."""

    class Cold(Gate):
        def call_timeout_s(self, timeout_s: float) -> float:
            return timeout_s if "cold" in self.calls else GUARD * 3

    oracle = Cold(hold={"cold", "hot"})
    with OracleWorker(oracle, timeout_s=0.2) as w:
        w.submit(snap("cold"))
        assert oracle.entered.get(timeout=GUARD) == "cold"
        time.sleep(1.0)  # for the regression's sake: timeout_s alone would fire meanwhile
        assert w.metrics().timed_out == 0
        oracle.release.set()
        label = w.get(timeout=GUARD)
        assert label is not None and label.snapshot_id == "cold"
        oracle.release.clear()
        assert w.run_now(snap("hot"), timeout=GUARD) is None  # warm: timeout_s again
        m = w.metrics()
        assert (m.done, m.timed_out, m.last_error) == (1, 1, "timed out after 0.2 s")
        oracle.release.set()


def _garbage() -> dict[str, Callable[[Snapshot], object]]:
    def nan(s):  # model_construct skips validation, as a careless backend might
        obs = PointObservation.model_construct(xy=(math.nan, 0.5))
        return good_label(s).model_copy(update={"observation": obs})

    def off_screen(s):
        return good_label(s).model_copy(update={"observation": PointObservation(xy=(2.0, 0.5))})

    def zero_direction(s):
        obs = LineObservation.model_construct(origin=(0.5, -0.05), direction=(0.0, 0.0))
        return good_label(s).model_copy(update={"observation": obs})

    return {
        "nan": nan,
        "off_screen": off_screen,
        "zero_direction": zero_direction,
        "wrong_id": lambda s: good_label(s).model_copy(update={"snapshot_id": "other"}),
        "wrong_t": lambda s: good_label(s).model_copy(update={"t_ns": s.t_ns + 1}),
        "confidence": lambda s: good_label(s).model_copy(update={"confidence": math.inf}),
        "not_a_label": lambda s: {"xy": (0.5, 0.5)},
    }


def test_garbage_results_are_counted_bad() -> None:
    table = _garbage()
    with OracleWorker(Gate(lambda s: table[s.snapshot_id](s))) as w:
        for sid in table:
            assert w.run_now(snap(sid), timeout=GUARD) is None
        m = w.metrics()
        assert (m.bad, m.done, m.failed) == (len(table), 0, 0)
        assert w.get(timeout=0) is None
        assert (m.last_error or "").startswith("bad label: not an OracleLabel")


@pytest.mark.parametrize("case", list(_garbage()))
def test_check_label_names_the_problem(case: str) -> None:
    s = snap(case)
    reasons = {
        "nan": "finite",
        "off_screen": "outside",
        "zero_direction": "unit",
        "wrong_id": "'other'",
        "wrong_t": "t_ns",
        "confidence": "confidence",
        "not_a_label": "not an OracleLabel",
    }
    with pytest.raises(BadLabel, match=reasons[case]):
        check_label(_garbage()[case](s), s)


def test_check_label_accepts_sane_answers() -> None:
    s = snap("ok")
    assert check_label(good_label(s), s) is not None
    line = LineObservation(origin=(0.5, -0.04), direction=(3.0, 4.0))
    empty = good_label(s).model_copy(update={"observation": None, "in_frame": False})
    for label in (good_label(s).model_copy(update={"observation": line}), empty):
        assert check_label(label, s) is label


def test_stale_snapshot_is_never_started() -> None:
    now = [100 * 10**9]
    oracle = Gate()
    with OracleWorker(oracle, max_age_s=30.0, clock=lambda: now[0]) as w:
        assert w.run_now(snap("old", t_ns=now[0] - 31 * 10**9), timeout=GUARD) is None
        assert w.run_now(snap("fresh", t_ns=now[0] - 29 * 10**9), timeout=GUARD) is not None
        m = w.metrics()
        assert (m.stale, m.started, m.done) == (1, 1, 1)
        assert oracle.calls == ["fresh"]


def test_label_that_comes_back_too_late_is_stale() -> None:
    now = [100 * 10**9]

    def slow(s: Snapshot) -> OracleLabel:
        now[0] += 31 * 10**9  # the call took 31 s of the worker's clock
        return good_label(s)

    with OracleWorker(Gate(slow), max_age_s=30.0, clock=lambda: now[0]) as w:
        assert w.run_now(snap("a", t_ns=now[0]), timeout=GUARD) is None
        m = w.metrics()
        assert (m.stale, m.started, m.done, m.bad) == (1, 1, 0, 0)


# ---- run_now ----


def test_run_now_jumps_the_queue_and_outranks_submit() -> None:
    oracle = Gate(hold={"s0"})
    with OracleWorker(oracle) as w:
        w.submit(snap("s0"))
        assert oracle.entered.get(timeout=GUARD) == "s0"
        w.submit(snap("s1"))
        # Places the verify snapshot and stops waiting at once: nothing is done yet.
        assert w.run_now(snap("v"), timeout=0) is None
        assert not w.submit(snap("s3"))  # the policy's snapshot gives way to the verify key
        assert w.metrics().replaced == 2
        oracle.release.set()
        assert [w.get(timeout=GUARD).snapshot_id for _ in range(2)] == ["s0", "v"]
        assert oracle.calls == ["s0", "v"]
        # Blocking form on an idle worker: the caller gets that snapshot's own label.
        s = snap("verify")
        label = w.run_now(s, timeout=GUARD)
        assert label is not None and (label.snapshot_id, label.t_ns) == ("verify", s.t_ns)
        assert w.get(timeout=GUARD) == label  # also delivered to the other consumers


def test_run_now_returns_none_when_its_call_is_cancelled() -> None:
    oracle = Gate(hold={"v"})  # ignores cancel: run_now must not wait for it anyway
    with OracleWorker(oracle) as w:

        def cancel_once_started() -> None:
            assert oracle.entered.get(timeout=GUARD) == "v"
            w.cancel()

        helper = threading.Thread(target=cancel_once_started)
        helper.start()
        assert w.run_now(snap("v"), timeout=GUARD) is None
        helper.join(GUARD)
        oracle.release.set()
        assert w.run_now(snap("after"), timeout=GUARD) is not None
        assert (w.metrics().cancelled, w.metrics().done) == (1, 1)


def test_close_from_the_callback_does_not_deadlock() -> None:
    oracle = Gate()
    holder: list[OracleWorker] = []
    w = OracleWorker(oracle, on_label=lambda label: holder[0].close())
    holder.append(w)
    w.submit(snap("a"))
    w._thread.join(GUARD)
    assert not w.alive and w.closed
    assert oracle.closed_on == ["oracle-gate"]
    assert (w.metrics().done, w.metrics().callback_errors) == (1, 0)


# ---- asyncio ----


def test_asyncio_stream_and_next_label() -> None:
    w = OracleWorker(Gate())

    async def main() -> list[OracleLabel | None]:
        stream = w.labels()  # subscribed now, so nothing submitted below can be missed
        got: list[OracleLabel | None] = []
        w.submit(snap("a"))
        got.append(await asyncio.wait_for(anext(stream), GUARD))
        w.submit(snap("b"))
        got.append(await asyncio.wait_for(anext(stream), GUARD))
        await stream.aclose()
        waiter = asyncio.ensure_future(w.next_label())
        await asyncio.sleep(0)  # let next_label subscribe before the submit
        w.submit(snap("c"))
        got.append(await asyncio.wait_for(waiter, GUARD))
        return got

    try:
        got = asyncio.run(main())
    finally:
        w.close()
    assert [g.snapshot_id for g in got] == ["a", "b", "c"]
    assert w._subs == []  # every subscriber unsubscribed


def test_asyncio_stream_ends_when_the_worker_closes() -> None:
    w = OracleWorker(Gate())

    async def main() -> tuple[list[OracleLabel], OracleLabel | None]:
        stream = w.labels()
        w.submit(snap("a"))
        first = await asyncio.wait_for(anext(stream), GUARD)
        w.close()
        rest = [x async for x in stream]
        return [first, *rest], await asyncio.wait_for(w.next_label(), GUARD)

    labels, after = asyncio.run(main())
    assert [x.snapshot_id for x in labels] == ["a"]
    assert after is None


# ---- close ----


def test_close_stops_a_cooperative_call_promptly_and_is_idempotent() -> None:
    oracle = Gate(hold={"s0"}, cooperative=True)
    # The backend would block for 3×GUARD unless cancelled; join waits at most GUARD.
    w = OracleWorker(oracle, join_timeout_s=GUARD)
    w.submit(snap("s0"))
    assert oracle.entered.get(timeout=GUARD) == "s0"
    w.submit(snap("s1"))
    w.close()
    assert not w.alive
    assert oracle.cancel_seen == ["s0"]
    assert oracle.closed_on == ["oracle-gate"]  # closed by the thread that owns it
    w.close()
    assert oracle.closed_on == ["oracle-gate"]
    assert not w.submit(snap("late"))
    assert w.get() is None  # closed: returns at once even without a timeout
    m = w.metrics()
    assert (m.cancelled, m.done) == (2, 0)
    assert counts(m) == m.submitted == 2


def test_close_does_not_wait_forever_for_a_stuck_backend(caplog) -> None:
    oracle = Gate(hold={"s0"})  # ignores cancel
    w = OracleWorker(oracle, join_timeout_s=0.05)
    w.submit(snap("s0"))
    assert oracle.entered.get(timeout=GUARD) == "s0"
    w.close()
    assert w.alive and oracle.closed_on == []
    # A second close (`run` finishes, then closes) neither waits nor warns again.
    w._join_timeout_s = GUARD
    w.close()
    assert sum("did not return within" in r.message for r in caplog.records) == 1
    oracle.release.set()
    w._thread.join(GUARD)
    assert not w.alive and oracle.closed_on == ["oracle-gate"]
    assert (w.metrics().cancelled, w.metrics().done) == (1, 0)


# ---- helpers ----


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    for q in (0.0, 0.5, 0.95, 1.0):
        assert _percentile(values, q) == pytest.approx(np.percentile(values, 100 * q))
    assert _percentile([], 0.5) is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        OracleWorker(Gate(), timeout_s=0)
    with pytest.raises(ValueError, match="max_age_s"):
        OracleWorker(Gate(), max_age_s=-1)
