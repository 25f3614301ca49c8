"""Independent sessions through the fast path on several processes.

`eval-sittings` and `bench loop --sittings` evaluate every sitting of a folder on its own
(nested leave-one-target-out: the networks once per frame, then hundreds of small fits), so
the sittings spread over processes. Each worker has its own fast path, started lazily:
spawned, never forked, because a forked onnxruntime or MediaPipe is not safe to use. Workers
write the same feature cache the main process reads, with atomic writes, so which process
ran a session's networks changes no number. Results come back in the order of the items.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.tools.errors import UserError

_WORKER: dict[str, Any] = {}


def default_jobs() -> int:
    """The cores, at most 4: past that the sittings wait on the disk and memory."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class Skipped:
    """An item `fn` refused with a user's error (too few targets, no face), yielded in its
    place under `keep_going`: one bad sitting in a folder is said, not the end of the run."""

    reason: str


def _start(cfg: FastPathConfig) -> None:
    _WORKER["fp"] = LazyFastPath(cfg)


def _call(job: tuple[Callable, Any]) -> tuple[str, Any]:
    fn, item = job
    try:
        return "ok", fn(item, _WORKER["fp"])
    except UserError as e:  # a one-line error for the user, raised again in the main process
        return "user", str(e)
    except Exception:
        # As text: an exception the pool cannot unpickle (one whose __init__ wants more
        # than its message) kills the pool's result thread, and the main process then
        # waits for ever on a result that never comes.
        return "bug", traceback.format_exc()


def map_sessions(
    fn: Callable[[Any, LazyFastPath], Any],
    items: Iterable[Any],
    cfg: FastPathConfig,
    fp: LazyFastPath,
    jobs: int,
    *,
    keep_going: bool = False,
) -> Iterator[Any]:
    """`fn(item, fast_path)` for each item, in order: here on `fp`, or on `jobs` spawned
    processes. `fn` must be a module-level function (it is sent by name) and its results
    plain enough to send back. A `UserError` of `fn` is raised again here, or with
    `keep_going` yielded as `Skipped(its message)` and the other items go on."""
    items = list(items)
    if jobs <= 1 or len(items) < 2:
        for item in items:
            try:
                yield fn(item, fp)
            except UserError as e:
                if not keep_going:
                    raise
                yield Skipped(str(e))
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(jobs, len(items)), initializer=_start, initargs=(cfg,)) as pool:
        for kind, res in pool.imap(_call, [(fn, item) for item in items]):
            if kind == "user":
                if not keep_going:
                    raise UserError(res)
                yield Skipped(res)
            elif kind == "bug":
                raise RuntimeError(f"{fn.__name__} failed in a worker process:\n{res}")
            else:
                yield res
