"""Run an oracle in a child process, so it shares neither the GIL nor a scheduler class with
the fast path, and so a call that hangs can be killed.

A VLM on the CPU is Python code between thousands of small tensor ops: in the same process
every one of those Python steps competes for the interpreter lock with the camera loop. In a
child process it competes for a core only, and the child runs at a lower priority (nice 10)
with one compute thread. `ProcessOracle` implements the oracle interface itself, so the
worker, the timeout and the cancellation logic stay as they are; what changes is that a
cancelled or timed-out call really stops: the child is killed (a thread cannot be) and a
replacement is loaded in the background, outside any call's deadline, backing off when
replacements keep failing. A fresh child's first call runs cold and is given the time a load
gets, not the per-call deadline (`ProcessOracle.call_timeout_s`).

Messages between the two are length-prefixed frames: a JSON header and a raw byte payload
(the snapshot's pixels). Nothing is pickled: the child builds its oracle from an import path
and JSON arguments, and labels come back as the JSON of `OracleLabel`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from pydantic import ValidationError

from gazeloop.calibration.labels import OracleLabel, Snapshot
from gazeloop.calibration.problems import one_line
from gazeloop.oracle.base import OracleCancelled, OracleError

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")  # header length, payload length
_MAX_HEADER = 16 << 20
_MAX_PAYLOAD = 256 << 20  # an 8K BGR frame is 100 MB; anything bigger is not a snapshot
_POLL_S = 0.05


def python_child_env() -> dict[str, str]:
    """The environment of a `python -P -m gazeloop...` child. -P keeps the user's working
    folder off the child's path (a folder there named `gazeloop`, a checkout, would be
    imported instead of the installed package); the child sees exactly this process's path
    instead, so what is importable here is importable there."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


class ProcessOracleError(OracleError):
    """The child could not be started, could not build its oracle, or died."""


def write_frame(out: IO[bytes], header: dict[str, Any], payload: bytes = b"") -> None:
    h = json.dumps(header, separators=(",", ":")).encode()
    out.write(_FRAME.pack(len(h), len(payload)))
    out.write(h)
    if payload:
        out.write(payload)
    out.flush()


def _read_exact(inp: IO[bytes], n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_frame(inp: IO[bytes]) -> tuple[dict[str, Any], bytes]:
    hlen, plen = _FRAME.unpack(_read_exact(inp, _FRAME.size))
    if hlen > _MAX_HEADER or plen > _MAX_PAYLOAD:
        raise ValueError(f"frame too large: header {hlen} bytes, payload {plen} bytes")
    header = json.loads(_read_exact(inp, hlen))
    if not isinstance(header, dict):
        raise ValueError("frame header is not a JSON object")
    return header, _read_exact(inp, plen) if plen else b""


def snapshot_to_frame(snap: Snapshot) -> tuple[dict[str, Any], bytes]:
    img = np.ascontiguousarray(snap.image)
    header = {
        "op": "label",
        "t_ns": snap.t_ns,
        "snapshot_id": snap.snapshot_id,
        "shape": list(img.shape),
        "dtype": str(img.dtype),
        "eye_px": snap.eye_px,
        "pupils_px": snap.pupils_px,
        "fast_xy": snap.fast_xy,
        "target_xy": snap.target_xy,
        "on_demand": snap.on_demand,
        "meta": snap.meta,
    }
    return header, img.tobytes()


def _tuple(v):
    if v is None:
        return None
    return tuple(_tuple(x) if isinstance(x, list) else x for x in v)


def snapshot_from_frame(header: dict[str, Any], payload: bytes) -> Snapshot:
    shape = tuple(int(s) for s in header["shape"])
    dtype = np.dtype(header["dtype"])
    if int(np.prod(shape)) * dtype.itemsize != len(payload):
        raise ValueError(f"payload of {len(payload)} bytes does not hold {shape} {dtype}")
    return Snapshot(
        t_ns=int(header["t_ns"]),
        image=np.frombuffer(payload, dtype=dtype).reshape(shape),
        snapshot_id=str(header["snapshot_id"]),
        eye_px=_tuple(header.get("eye_px")),
        pupils_px=_tuple(header.get("pupils_px")),
        fast_xy=_tuple(header.get("fast_xy")),
        target_xy=_tuple(header.get("target_xy")),
        on_demand=bool(header.get("on_demand", False)),
        meta=dict(header.get("meta") or {}),
    )


@dataclass
class OracleSpec:
    """How the child builds its oracle: `factory` is "package.module:callable", called with
    `kwargs` (JSON values only)."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mod, sep, attr = self.factory.partition(":")
        if not (mod and sep and attr):
            raise ValueError(
                f"oracle factory must look like 'package.module:callable', got {self.factory!r}"
            )
        try:
            json.dumps(self.kwargs)
        except TypeError as e:
            raise ValueError(f"oracle kwargs must be JSON values: {e}") from e


def partition_cpus(available: list[int]) -> tuple[list[int], list[int]] | None:
    """Split the CPUs this process may use into (fast path, oracle), or None when there is
    nothing to split. The fast path needs about one core at 60 Hz; a model gains from every
    core it gets, so the oracle takes all but a quarter (at least one core each)."""
    cpus = sorted(set(available))
    if len(cpus) < 2:
        return None
    n_fast = max(1, len(cpus) // 4)
    return cpus[:n_fast], cpus[n_fast:]


def _threads_of_this_process() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _set_affinity(cpus: list[int], tids: list[int]) -> None:
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread may end while we walk the list
            os.sched_setaffinity(tid, cpus)


def restart_delay_s(failures: int, first_s: float, max_s: float) -> float:
    """How long to wait before starting a child again, given how many restarts have happened
    since the last label that came back. The first restart is immediate (one timeout is
    normal for a model on a busy CPU); a backend that keeps dying or hanging is retried at
    doubling intervals up to `max_s`, so a broken model costs a load now and then, not
    every call."""
    if failures <= 0:
        return 0.0
    return min(max_s, first_s * 2.0 ** (failures - 1))


class ProcessOracle:
    """An oracle whose backend lives in a child process (see the module docstring).

    `threads` caps the child's compute threads (OMP/MKL/torch read the environment; default:
    one per core the child gets); `niceness` lowers its priority. The child is started at
    construction, so a backend that cannot load fails here with its own message.

    After a call is cancelled or timed out the child is killed (the only way to stop a model
    mid-call) and a replacement is started on a background thread, outside every call's
    deadline: loading Moondream takes longer than one call may, and a restart inside a
    call's deadline would be killed as soon as it was ready, again and again. Calls made
    while the replacement loads fail at once with "restarting"; `wait_ready` waits for it.
    Restarts without a label in between back off (`restart_delay_s`). Until a child has
    returned its first label, the worker gives a call `first_call_timeout_s` (default: the
    start timeout) instead of its per-call deadline; see `call_timeout_s`.

    `isolate` (Linux): the fast path and the oracle get disjoint cores (`partition_cpus`):
    this whole process, with every thread it has and will start, on one side, the child on
    the other. Priorities alone do not protect the fast path: measured on the 2-core x86 VM
    (2026-11-22) with a spinning SCHED_IDLE neighbour, unpinned, the fast path's p99 went from
    8.8 to 17.1 ms, because its threads (the MediaPipe graph's, the decoder's) get woken on
    the busy core; partitioned, 8.5 ms against 8.5 ms with nothing running. `close()` gives
    the cores back."""

    def __init__(
        self,
        spec: OracleSpec,
        *,
        threads: int | None = None,
        niceness: int = 10,
        start_timeout_s: float = 300.0,
        isolate: bool = True,
        restart_backoff_s: float = 1.0,
        restart_backoff_max_s: float = 60.0,
        first_call_timeout_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.niceness = niceness
        self.start_timeout_s = start_timeout_s
        self.first_call_timeout_s = (
            start_timeout_s if first_call_timeout_s is None else first_call_timeout_s
        )
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = restart_backoff_max_s
        self.name = "process"
        self.version = ""
        self.restarts = 0  # children killed and replaced
        self.failed_starts = 0  # replacements that did not come up
        self._failures = 0  # restarts since the last label that came back
        self._warm = False  # the current child has returned a label (`call_timeout_s`)
        self._proc: subprocess.Popen[bytes] | None = None
        self._starting: subprocess.Popen[bytes] | None = None  # a replacement being loaded
        self._restarter: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._saved_affinity: set[int] | None = None
        self.cpus: tuple[list[int], list[int]] | None = None  # (fast path, oracle)
        if isolate and hasattr(os, "sched_setaffinity"):
            self.cpus = partition_cpus(sorted(os.sched_getaffinity(0)))
        if threads is None:
            threads = len(self.cpus[1]) if self.cpus else 1
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self._proc = self._start()
        self._ready.set()
        if self.cpus is not None:
            self._saved_affinity = os.sched_getaffinity(0)
            _set_affinity(self.cpus[0], _threads_of_this_process())
            log.info("fast path on CPUs %s, oracle process on %s", *self.cpus)

    # --- child lifecycle ------------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = python_child_env()
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(self.threads)
        env["GAZELOOP_ORACLE_THREADS"] = str(self.threads)
        env["GAZELOOP_ORACLE_NICE"] = str(self.niceness)
        if self.cpus is not None:  # the child pins itself too, before it starts threads
            env["GAZELOOP_ORACLE_CPUS"] = ",".join(map(str, self.cpus[1]))
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "gazeloop.oracle.host"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's log goes where ours goes
            env=env,
            cwd=os.getcwd(),
        )
        if self.cpus is not None:
            with contextlib.suppress(OSError):  # it may already have exited: _reply says why
                os.sched_setaffinity(proc.pid, self.cpus[1])
        return proc

    def _start(self) -> subprocess.Popen[bytes]:
        """A child that has built its oracle, or ProcessOracleError (the child is killed)."""
        proc = self._spawn()
        with self._lock:
            self._starting = proc
        try:
            write_frame(
                proc.stdin,
                {"op": "init", "factory": self.spec.factory, "kwargs": self.spec.kwargs},
            )
            header, _ = _reply(proc, self.start_timeout_s, cancel=None)
        except BaseException as e:
            _kill(proc)
            if isinstance(e, OSError):
                raise ProcessOracleError(f"oracle process is gone: {e}") from e
            raise
        finally:
            with self._lock:
                self._starting = None
        self.name = str(header.get("name", self.name))
        self.version = str(header.get("version", ""))
        return proc

    def _kill_and_restart(self) -> None:
        """With the lock held: kill the child and start a replacement in the background."""
        _kill(self._proc)
        self._proc = None
        self._warm = False
        self.restarts += 1
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self._closed.is_set() or (self._restarter and self._restarter.is_alive()):
            return
        self._ready.clear()
        delay = restart_delay_s(self._failures, self.restart_backoff_s, self.restart_backoff_max_s)
        self._failures += 1
        self._restarter = threading.Thread(
            target=self._restart, args=(delay,), name="oracle-process-restart", daemon=True
        )
        self._restarter.start()

    def _restart(self, delay_s: float) -> None:
        if self._closed.wait(delay_s):
            return
        try:
            proc = self._start()
        except Exception as e:
            if self._closed.is_set():
                return  # close() killed the child being loaded
            with self._lock:
                self.failed_starts += 1
                log.warning("oracle process did not restart: %s", e)
                self._restarter = None
                self._schedule_restart()  # later, by the back-off
            return
        with self._lock:
            self._restarter = None
            if self._closed.is_set():
                _kill(proc)
                return
            self._proc = proc
            self._warm = False
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until a child is up to take calls (at once unless a restart is under way)."""
        return self._ready.wait(timeout)

    def call_timeout_s(self, timeout_s: float) -> float:
        """How long the worker may let the next call run, given its per-call `timeout_s`.

        A model's first call after loading can be far slower than the ones after it
        (Moondream on Apple MPS warms up on it). Judged by the per-call deadline, that
        call timed out, the child was killed, and its replacement started cold again: a
        backend that labels in thread mode never labelled here, reloading forever. So until
        the child has returned a label, a call may take `first_call_timeout_s`: warming up is
        the end of loading and gets the same budget. A child that hangs on that call is
        still killed at that deadline and replaced with back-off. (A warm-up call in the
        child before it reports ready would need a picture that runs the whole model: on a
        blank one Moondream stops before its gaze step, so the real first call stays cold.)
        No lock: the worker asks from the thread that makes the calls."""
        return timeout_s if self._warm else max(timeout_s, self.first_call_timeout_s)

    # --- the oracle interface -------------------------------------------------------------

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel:
        with self._lock:
            if self._closed.is_set():
                raise ProcessOracleError("oracle process is closed")
            if self._proc is None:
                self._schedule_restart()  # no-op when one is already under way
                raise ProcessOracleError("oracle process is restarting; calls fail until it is up")
            if cancel.is_set():
                raise OracleCancelled("cancelled before the oracle process was given the call")
            proc = self._proc
            header, payload = snapshot_to_frame(snap)
            try:
                write_frame(proc.stdin, header, payload)
                reply, _ = _reply(proc, None, cancel)
            except OracleCancelled:
                self._kill_and_restart()
                raise
            except (BrokenPipeError, OSError) as e:
                self._kill_and_restart()
                raise ProcessOracleError(f"oracle process is gone: {e}") from e
            except _ChildLost:
                self._kill_and_restart()
                raise
            except OracleError:
                self._warm = True  # the backend ran and said why not: the model is warm
                raise
            self._failures = 0  # it answered: the next restart, if any, is immediate
            self._warm = True
            try:
                return OracleLabel.model_validate(reply["label"])
            except (KeyError, ValidationError) as e:
                raise OracleError(f"oracle process returned an invalid label: {one_line(e)}") from e

    def close(self) -> None:
        self._closed.set()  # a restart waiting out its back-off gives up
        with self._lock:
            if self._saved_affinity is not None:
                _set_affinity(sorted(self._saved_affinity), _threads_of_this_process())
                self._saved_affinity = None
            _kill(self._starting)  # a replacement being loaded is not waited for
            proc, self._proc = self._proc, None
            self._ready.set()  # nobody waits for a child that will not come
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
            write_frame(proc.stdin, {"op": "close"})
            proc.wait(5)
        _kill(proc)


class _ChildLost(ProcessOracleError):
    """The child died, hung past a deadline, broke the channel or failed fatally: it has to
    be replaced."""


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    for s in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            s.close()


def _wait_readable(
    proc: subprocess.Popen[bytes], timeout_s: float | None, cancel: threading.Event | None
) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    fd = proc.stdout.fileno()
    while not select.select([fd], [], [], _POLL_S)[0]:
        if cancel is not None and cancel.is_set():
            raise OracleCancelled("cancelled; the oracle process was stopped")
        if proc.poll() is not None:
            raise _ChildLost(f"oracle process exited with code {proc.returncode}")
        if deadline is not None and time.monotonic() > deadline:
            raise _ChildLost(f"oracle process did not answer within {timeout_s:g} s")


def _reply(
    proc: subprocess.Popen[bytes], timeout_s: float | None, cancel: threading.Event | None
) -> tuple[dict, bytes]:
    """The child's next reply. A backend's own exception is an `OracleError` (the child lives
    on); anything that leaves the child unusable is `_ChildLost`; the caller kills it."""
    assert proc.stdout is not None
    _wait_readable(proc, timeout_s, cancel)
    try:
        header, payload = read_frame(proc.stdout)
    except EOFError as e:
        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            raise _ChildLost(f"oracle process exited with code {code}") from e
        raise _ChildLost(f"oracle process sent a broken reply: {e}") from e
    except ValueError as e:
        raise _ChildLost(f"oracle process sent a broken reply: {e}") from e
    if header.get("ok") is False:
        msg = str(header.get("error", "unknown error"))
        if header.get("kind", "error") == "fatal":
            raise _ChildLost(msg)
        raise OracleError(msg)
    return header, payload
