"""The child side of `oracle.process.ProcessOracle`: `python -P -m gazeloop.oracle.host`.

Reads frames from stdin, answers on stdout (see `oracle.process` for the framing). The first
frame names the oracle to build; each following frame is a snapshot to label. Anything the
oracle raises is sent back as an error reply, so the parent counts it like an in-process
failure; only a broken stream ends the child.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import traceback

from gazeloop.oracle.process import read_frame, snapshot_from_frame, write_frame

log = logging.getLogger("gazeloop.oracle.host")


def lower_priority(*, background: bool = False) -> None:
    """Yield every contested core to the fast path (this process: the oracle's child, or a
    profile refit's), by GAZELOOP_ORACLE_NICE (default 10; 0 leaves it as it is). On Linux
    SCHED_IDLE does this outright: a waking fast-path thread preempts us at once instead of
    after a scheduler slice, which a nice value alone leaves to CFS's fairness (with nice 10
    the fast path's p99 frame time was 14.5 ms on the 2-core x86 VM, 2026-11-22; what fully
    protects it is disjoint cores, see `ProcessOracle`'s `isolate`). Elsewhere a nice value
    is what there is; with `background`, macOS (Python 3.12+) also gets its background
    class, which keeps the process off the cores the cursor uses (not for the oracle, whose
    model may need the GPU at full speed)."""
    nice = int(os.environ.get("GAZELOOP_ORACLE_NICE", "10"))
    if nice <= 0:
        return
    if background and hasattr(os, "PRIO_DARWIN_BG"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_DARWIN_PROCESS, 0, os.PRIO_DARWIN_BG)
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError as e:
            log.debug("SCHED_IDLE refused (%s); using nice %d", e, nice)
    if hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError as e:
            log.debug("could not lower the process's priority: %s", e)


def _pin() -> None:
    cpus = os.environ.get("GAZELOOP_ORACLE_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        except (OSError, ValueError) as e:
            log.debug("could not pin the oracle process to CPUs %s: %s", cpus, e)


def _limit_threads() -> None:
    n = int(os.environ.get("GAZELOOP_ORACLE_THREADS", "1"))
    import cv2

    cv2.setNumThreads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _build(factory: str, kwargs: dict):
    mod_name, _, attr = factory.partition(":")
    obj = getattr(importlib.import_module(mod_name), attr)
    return obj(**kwargs)


def serve(inp, out) -> int:
    header, _ = read_frame(inp)
    if header.get("op") != "init":
        write_frame(out, {"ok": False, "kind": "fatal", "error": "first message must be init"})
        return 2
    try:
        oracle = _build(str(header["factory"]), dict(header.get("kwargs") or {}))
        _limit_threads()  # after the import: torch may only now be loaded
    except Exception as e:  # the parent shows this message to the user
        write_frame(
            out,
            {
                "ok": False,
                "kind": "fatal",
                "error": f"cannot build oracle {header.get('factory')}: {type(e).__name__}: {e}",
            },
        )
        return 1
    write_frame(out, {"ok": True, "name": oracle.name, "version": oracle.version})
    never = threading.Event()  # the parent cancels by stopping this process
    try:
        while True:
            try:
                header, payload = read_frame(inp)
            except EOFError:
                return 0
            op = header.get("op")
            if op == "close":
                return 0
            if op != "label":
                write_frame(out, {"ok": False, "error": f"unknown op {op!r}"})
                continue
            try:
                snap = snapshot_from_frame(header, payload)
                label = oracle.label(snap, never)
                write_frame(out, {"ok": True, "label": label.model_dump(mode="json")})
            except Exception as e:
                log.debug("oracle failed: %s", traceback.format_exc())
                write_frame(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
    finally:
        oracle.close()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="oracle-host %(levelname)s %(message)s")
    _pin()
    lower_priority()
    # Our stdout is the reply channel: anything else that prints, Python or C, must not
    # corrupt it, so the channel gets its own descriptor and fd 1 becomes stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
