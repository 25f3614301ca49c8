"""One background thread that owns an oracle and labels the latest snapshot.

Models such as Moondream are not thread-safe and take seconds per call, while the fast path
produces a frame every 16 ms; so the worker keeps a single waiting slot (a newer snapshot
replaces one that has not started: only the latest is worth seconds of compute), runs one
call at a time on its own thread, and hands results out through three doors that all see
the same labels: an `on_label` callback (on the worker thread), a blocking `get()` for
threads, and `next_label()` / `labels()` for asyncio code.

Every snapshot accepted by `submit` or `run_now` ends as exactly one of: replaced, done,
failed, bad, timed_out, stale or cancelled (`WorkerMetrics` holds the counts), so
`submitted == replaced + done + failed + bad + timed_out + stale + cancelled` once the worker
is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gazeloop.calibration.labels import OracleLabel, Snapshot
from gazeloop.oracle.base import BadLabel, Oracle, OracleError, check_label

log = logging.getLogger(__name__)

_CLOSED = object()  # tells async subscribers that no label will come any more
_LATENCY_WINDOW = 256  # completed calls kept for the percentiles
_SEEN_LIMIT = 256  # distinct error messages remembered before forgetting them all
# What the worker counts, each a field of WorkerMetrics (`metrics` passes them on as they are).
_COUNTS = (
    "submitted",
    "replaced",
    "started",
    "done",
    "failed",
    "bad",
    "timed_out",
    "stale",
    "cancelled",
    "callback_errors",
)


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    submitted: int  # accepted by submit() or run_now()
    replaced: int  # dropped before starting: another snapshot took the waiting slot
    started: int  # backend calls begun
    done: int  # labels delivered
    failed: int  # the backend raised
    bad: int  # the backend returned something check_label rejected
    timed_out: int  # overran timeout_s (counted at the deadline; the result is discarded)
    stale: int  # older than max_age_s when picked up or when the answer came back
    cancelled: int  # dropped or discarded by cancel() / close()
    callback_errors: int  # on_label raised (the label was still delivered elsewhere)
    busy: bool  # a backend call is running (including one that has timed out)
    pending: bool  # a snapshot is waiting
    latency_p50_s: float | None  # of done calls, backend time; None before the first
    latency_p95_s: float | None
    last_error: str | None


@dataclass(eq=False, slots=True)
class _Job:
    snap: Snapshot
    on_demand: bool
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    result: OracleLabel | None = None
    deadline: float | None = None  # time.monotonic() seconds
    timeout_s: float | None = None  # what the deadline allowed (`_call_timeout_s`)
    timed_out: bool = False
    cancelled: bool = False


@dataclass(eq=False, slots=True)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    limit: int
    # Unbounded so the end-of-stream marker always fits; `put` enforces `limit` on labels.
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def put(self, item: Any) -> None:
        """Runs on the subscriber's loop. A reader that falls behind loses the oldest labels,
        never the newest, and never blocks the worker."""
        if item is not _CLOSED:
            while self.queue.qsize() >= self.limit:
                self.queue.get_nowait()
        self.queue.put_nowait(item)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    # Linear interpolation between order statistics (numpy's default), without numpy.
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _check_limits(timeout_s: float | None, max_age_s: float | None, buffer: int) -> None:
    """Refuse limits under which no label could come out (every call over time at once,
    every snapshot stale, no room to keep a label), before any thread starts."""
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
    if max_age_s is not None and not max_age_s > 0:
        raise ValueError(f"max_age_s must be positive or None, got {max_age_s}")
    if buffer < 1:
        raise ValueError(f"buffer must be at least 1, got {buffer}")


class LabelStream:
    """Labels for one asyncio subscriber, from the moment `OracleWorker.labels()` was called
    (so a snapshot submitted right after cannot be missed). Ends when the worker closes;
    `aclose()` (or leaving `async with`) unsubscribes early."""

    def __init__(self, worker: OracleWorker, sub: _Subscriber) -> None:
        self._worker = worker
        self._sub: _Subscriber | None = sub

    def __aiter__(self) -> LabelStream:
        return self

    async def __anext__(self) -> OracleLabel:
        sub = self._sub
        if sub is None:
            raise StopAsyncIteration
        item = await sub.queue.get()
        if item is _CLOSED:
            await self.aclose()
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        if self._sub is not None:
            self._worker._unsubscribe(self._sub)
            self._sub = None

    async def __aenter__(self) -> LabelStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class OracleWorker:
    """Runs `oracle.label` on one background thread for the latest submitted snapshot.

    - `timeout_s`: a call still running after this is counted `timed_out`, its cancel event
      is set (cooperative backends stop) and its result is discarded when it arrives. Python
      cannot kill a thread, so the worker stays busy until the backend returns. None: no limit.
      An oracle with a `call_timeout_s(timeout_s)` method may give a call longer (a
      `ProcessOracle`'s fresh child, whose first call runs cold).
    - `max_age_s`: a snapshot older than this by `clock` (same clock as `Snapshot.t_ns`) is
      not worth labelling or delivering: the fast path has moved on and the History may no
      longer hold the estimate at its time. None disables the check (replays whose t_ns are
      wall-clock based use it, or pass a matching `clock`).
    - `on_label(label)`: called on the worker thread for every delivered label; keep it short
      (the next call waits). Its exceptions are logged and counted, never fatal.
    - `timer`: seconds, what each call's latency is measured with (not `clock`, which may be
      a replay's own time).
    - The worker owns the oracle: it closes it on its own thread when it stops
      (`close_oracle=False` to keep it).
    """

    def __init__(
        self,
        oracle: Oracle,
        *,
        timeout_s: float | None = 10.0,
        max_age_s: float | None = 30.0,
        on_label: Callable[[OracleLabel], None] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        timer: Callable[[], float] = time.perf_counter,
        close_oracle: bool = True,
        buffer: int = 16,
        join_timeout_s: float = 2.0,
    ) -> None:
        _check_limits(timeout_s, max_age_s, buffer)
        self._oracle = oracle
        self.name = str(getattr(oracle, "name", type(oracle).__name__))
        self._timeout_s = timeout_s
        self._max_age_ns = None if max_age_s is None else round(max_age_s * 1e9)
        self._on_label = on_label
        self._clock = clock
        self._timer = timer
        self._close_oracle = close_oracle
        self._buffer = buffer
        self._join_timeout_s = join_timeout_s

        # One condition guards all state below; the worker, the watchdog and get() wait on it.
        self._cond = threading.Condition()
        self._pending: _Job | None = None
        self._running: _Job | None = None
        self._last: _Job | None = None  # the newest job handed in (`wait_idle`)
        self._closing = False
        self._outputs_closed = False
        self._out: deque[OracleLabel] = deque(maxlen=buffer)
        self._subs: list[_Subscriber] = []
        self._counts = dict.fromkeys(_COUNTS, 0)
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._seen_errors: set[str] = set()
        self._last_error: str | None = None
        self._stuck_said = False  # close() gave up waiting for a backend that did not return

        self._thread = threading.Thread(target=self._run, name=f"oracle-{self.name}", daemon=True)
        # The watchdog only marks overruns; it never touches the oracle.
        self._watchdog = threading.Thread(
            target=self._watch, name=f"oracle-{self.name}-watchdog", daemon=True
        )
        self._thread.start()
        self._watchdog.start()

    # --- feeding -------------------------------------------------------------------------

    def submit(self, snap: Snapshot) -> bool:
        """Offer a snapshot; never blocks. False when closed, or when a `run_now` snapshot
        holds the waiting slot (the verify key outranks the unattended policy)."""
        with self._cond:
            if self._closing:
                return False
            self._counts["submitted"] += 1
            if self._pending is not None and self._pending.on_demand:
                self._counts["replaced"] += 1  # this one is the one that gives way
                return False
            self._put_pending(_Job(snap, on_demand=False))
            return True

    def run_now(self, snap: Snapshot, timeout: float | None = None) -> OracleLabel | None:
        """Label `snap` next (it replaces whatever is waiting; a running call is not
        interrupted) and block the caller until its label is delivered. None when the call
        failed, was discarded, or `timeout` passed first (its label, if it comes later, still
        goes to the callback, `get()` and the async subscribers)."""
        with self._cond:
            if self._closing:
                return None
            self._counts["submitted"] += 1
            job = _Job(snap, on_demand=True)
            self._put_pending(job)
        job.finished.wait(timeout)
        return job.result

    def _put_pending(self, job: _Job) -> None:
        if self._pending is not None:
            self._counts["replaced"] += 1
            self._pending.finished.set()
        self._pending = self._last = job
        self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every snapshot handed in so far is settled: labelled and delivered
        (the callback has returned), replaced, dropped or failed. False if `timeout` passed
        first. A replay that must give the same labels on every run (`gazeloop demo`) calls
        this after each frame, so when a label lands does not depend on the scheduler; live
        use never waits."""
        with self._cond:
            job = self._last
        return job is None or job.finished.wait(timeout)

    def cancel(self) -> None:
        """Drop the waiting snapshot and ask the running call to stop; its result, if it
        still comes, is discarded (the mode changed: old answers are not wanted)."""
        with self._cond:
            self._cancel_locked()

    def _cancel_locked(self) -> None:
        if self._pending is not None:
            self._counts["cancelled"] += 1
            self._pending.finished.set()
            self._pending = None
        job = self._running
        if job is not None and not job.timed_out:
            job.cancelled = True
            job.cancel.set()
            job.finished.set()  # its answer will be discarded: run_now need not wait for it

    # --- reading -------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> OracleLabel | None:
        """The oldest label not yet taken by `get` (up to `buffer` are kept; older ones are
        dropped), waiting up to `timeout` seconds (None: until one comes or the worker
        closes). None on timeout or once closed and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._out:
                if self._outputs_closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._out.popleft()

    async def next_label(self) -> OracleLabel | None:
        """The next label delivered after this coroutine starts running; None if the worker
        is or becomes closed. For a stream use `labels()`, which subscribes when called."""
        sub = self._subscribe(maxsize=self._buffer)
        try:
            item = await sub.queue.get()
        finally:
            self._unsubscribe(sub)
        return None if item is _CLOSED else item

    def labels(self) -> LabelStream:
        """An async iterator of every label delivered from now on, for the running loop:
        `async for label in worker.labels(): ...`. A slow reader loses the oldest of more
        than `buffer` unread labels."""
        return LabelStream(self, self._subscribe(maxsize=self._buffer))

    def _subscribe(self, maxsize: int) -> _Subscriber:
        sub = _Subscriber(asyncio.get_running_loop(), limit=maxsize)
        with self._cond:
            if self._outputs_closed:
                sub.put(_CLOSED)  # we are on the subscriber's loop already
            else:
                self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: _Subscriber) -> None:
        with self._cond, contextlib.suppress(ValueError):
            self._subs.remove(sub)

    # --- state ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def alive(self) -> bool:
        """The worker thread is still running (after close(): a backend that has not
        returned yet)."""
        return self._thread.is_alive()

    def metrics(self) -> WorkerMetrics:
        with self._cond:
            lat = list(self._latencies)
            return WorkerMetrics(
                **self._counts,
                busy=self._running is not None,
                pending=self._pending is not None,
                latency_p50_s=_percentile(lat, 0.50),
                latency_p95_s=_percentile(lat, 0.95),
                last_error=self._last_error,
            )

    def close(self) -> None:
        """Stop: drop the waiting snapshot, cancel the running call, wait up to
        `join_timeout_s` for the thread. A backend that ignores its cancel event keeps the
        (daemon) thread alive until it returns; its result is discarded. Idempotent."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._cancel_locked()
                self._cond.notify_all()
        if self._stuck_said:  # an earlier close waited its full time for it and said so
            return
        on_worker = threading.current_thread() is self._thread  # close() from on_label
        if not on_worker:
            self._thread.join(self._join_timeout_s)
        self._watchdog.join(self._join_timeout_s)
        if not on_worker and self._thread.is_alive():
            self._stuck_said = True
            log.warning(
                "oracle %s did not return within %.1f s of close(); its thread is left to end",
                self.name,
                self._join_timeout_s,
            )
        # Waiters must not hang on a worker that will produce nothing more.
        self._close_outputs()

    def __enter__(self) -> OracleWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the threads ---------------------------------------------------------------------

    def _run(self) -> None:
        _lower_priority()
        try:
            while True:
                with self._cond:
                    while self._pending is None and not self._closing:
                        self._cond.wait()
                    if self._closing:
                        return
                    job, self._pending = self._pending, None
                    if self._is_stale(job.snap):
                        self._counts["stale"] += 1  # never worth seconds of compute
                        job.finished.set()
                        continue
                    self._counts["started"] += 1
                    job.timeout_s = self._call_timeout_s()
                    if job.timeout_s is not None:
                        job.deadline = time.monotonic() + job.timeout_s
                    self._running = job
                    self._cond.notify_all()  # the watchdog starts timing this call
                self._call(job)
        finally:
            if self._close_oracle:
                try:
                    self._oracle.close()
                except Exception as e:
                    with self._cond:
                        self._log_once("close", f"closing oracle {self.name} failed: {e!r}", e)
            with self._cond:
                self._closing = True  # even if the loop died: submit() must say so
                self._cond.notify_all()
            self._close_outputs()

    def _call(self, job: _Job) -> None:
        t0 = self._timer()
        error: Exception | None = None
        result: Any = None
        try:
            result = self._oracle.label(job.snap, job.cancel)
        except Exception as e:
            error = e
        latency = self._timer() - t0

        deliver: OracleLabel | None = None
        with self._cond:
            self._running = None
            self._cond.notify_all()
            if job.timed_out:
                pass  # counted at the deadline; a late answer is not trusted to be current
            elif job.cancelled:
                self._counts["cancelled"] += 1
            elif error is not None:
                self._counts["failed"] += 1
                self._note_error(f"{type(error).__name__}: {error}", error)
            else:
                try:
                    label = check_label(result, job.snap)
                except BadLabel as e:
                    self._counts["bad"] += 1
                    self._note_error(f"bad label: {e}", None)
                else:
                    if self._is_stale(job.snap):
                        self._counts["stale"] += 1
                    else:
                        if label.latency_s is None:
                            label = label.model_copy(update={"latency_s": latency})
                        self._counts["done"] += 1
                        self._latencies.append(latency)
                        deliver = label
        if deliver is not None:
            self._deliver(deliver)
            job.result = deliver
        job.finished.set()

    def _watch(self) -> None:
        with self._cond:
            # After close() the running call (if any) is cancelled: nothing left to time.
            while not self._closing:
                job = self._running
                if job is None or job.timed_out or job.cancelled or job.deadline is None:
                    self._cond.wait()
                    continue
                remaining = job.deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                job.timed_out = True
                job.cancel.set()
                self._counts["timed_out"] += 1
                job.finished.set()  # run_now stops waiting for an answer that is void
                self._note_error(f"timed out after {job.timeout_s:g} s", None)

    # --- helpers -------------------------------------------------------------------------

    def _call_timeout_s(self) -> float | None:
        """The next call's limit: `timeout_s`, or what the oracle gives it instead."""
        grant = getattr(self._oracle, "call_timeout_s", None)
        if self._timeout_s is None or not callable(grant):
            return self._timeout_s
        return float(grant(self._timeout_s))

    def _is_stale(self, snap: Snapshot) -> bool:
        return self._max_age_ns is not None and self._clock() - snap.t_ns > self._max_age_ns

    def _deliver(self, label: OracleLabel) -> None:
        with self._cond:
            self._out.append(label)
            self._cond.notify_all()
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub.put, label)
            except RuntimeError:  # that loop is closed: nobody is listening there any more
                self._unsubscribe(sub)
        if self._on_label is not None:
            try:
                self._on_label(label)
            except Exception as e:
                with self._cond:
                    self._counts["callback_errors"] += 1
                    self._log_once("callback", f"on_label raised {type(e).__name__}: {e}", e)

    def _close_outputs(self) -> None:
        with self._cond:
            if self._outputs_closed:
                return
            self._outputs_closed = True
            subs, self._subs = self._subs, []
            self._cond.notify_all()
        for sub in subs:
            with contextlib.suppress(RuntimeError):
                sub.loop.call_soon_threadsafe(sub.put, _CLOSED)

    def _note_error(self, message: str, exc: Exception | None) -> None:
        self._last_error = message
        self._log_once("label", f"oracle {self.name}: {message}", exc)

    def _log_once(self, kind: str, message: str, exc: BaseException | None) -> None:
        """Called with the lock held. A backend that fails every few seconds with the same
        error must not flood the log: the first occurrence is a warning, repeats go to debug.
        An `OracleError` is an expected outcome (a timeout, a restart, a refused answer) whose
        message says it all, so its warning is one line, with the traceback only at debug
        level (-vv); any other exception is a bug somewhere and keeps its traceback."""
        key = f"{kind}:{message}"
        if key in self._seen_errors:
            log.debug("%s (repeated)", message)
            return
        if len(self._seen_errors) >= _SEEN_LIMIT:
            self._seen_errors.clear()
        self._seen_errors.add(key)
        if isinstance(exc, OracleError) and not log.isEnabledFor(logging.DEBUG):
            exc = None
        log.warning("%s", message, exc_info=exc)


def _lower_priority(niceness: int = 10) -> None:
    """Make the oracle's thread yield to the fast path when both want a core: on a 2-core
    laptop a model call next to the camera loop must cost the cursor nothing. Linux
    schedules threads as tasks, so a per-thread nice works there; elsewhere this is a no-op
    (macOS gives background threads a lower QoS through the ML runtime itself)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError as e:  # not permitted in some containers: not worth failing over
        log.debug("could not lower the oracle thread's priority: %s", e)
