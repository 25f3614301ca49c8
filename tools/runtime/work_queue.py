"""One thread that takes items in order from a bounded queue that is fed without waiting:
the running system's label judge (clicks through the drift loop) and its label-store
writer (`tools.runtime.live`). The frame thread hands them work and must keep its 60 Hz,
so a full or closed queue refuses an item (the caller counts it) instead of blocking, and
the end of a run waits a bounded time and then gives up on what is left, saying how much.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class WorkQueue(Generic[T]):
    """Items handled one at a time by `handle` on a daemon thread named `name`, started by
    `start` or with the first item. A `handle` that raises is logged and the next item
    taken: one bad item must not leave the rest waiting for a thread that has ended."""

    def __init__(self, name: str, handle: Callable[[T], None], limit: int):
        self._name, self._handle, self._limit = name, handle, limit
        self._cv = threading.Condition()
        self._q: deque[T] = deque()
        self._open = 0  # queued or being handled: `idle` waits for none
        self._closing = False
        self._abandoned = False
        self._settled = False  # the item in hand was settled: counted handled already
        self._thread: threading.Thread | None = None
        self.refused = 0  # items `post` did not queue: full, or closed

    def start(self) -> None:
        with self._cv:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def post(self, item: T) -> bool:
        """Queue `item`; False (nothing queued, counted in `refused`) when `limit` items are
        open or it is closed."""
        with self._cv:
            if self._closing or self._open >= self._limit:
                self.refused += 1
                return False
            self._start()
            self._q.append(item)
            self._open += 1
            self._cv.notify_all()
            return True

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closing:
                    self._cv.wait()
                if not self._q:
                    return
                item = self._q.popleft()
            try:
                self._handle(item)
            except Exception:
                log.exception("%s: an item could not be handled", self._name)
            finally:
                with self._cv:
                    self._open -= 0 if self._settled else 1
                    self._settled = False
                    self._cv.notify_all()

    def settle(self, fn: Callable[[], None]) -> bool:
        """From a handler: run `fn` and count the item in hand as handled, in one step as
        far as `abandon` can tell, so an item is either given up on or settled, never both
        (checking `abandoned` and then acting let an abandon land in between). False, `fn`
        not run, when the queue was abandoned first. `fn` runs under the queue's lock: it
        must be quick and must not wait on this queue."""
        with self._cv:
            if self._abandoned:
                return False
            fn()
            self._settled = True
            self._open -= 1
            self._cv.notify_all()
            return True

    def idle(self, timeout: float | None) -> bool:
        """Wait until nothing is open, or the queue was abandoned; False when `timeout`
        seconds passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: self._open == 0 or self._abandoned, timeout)

    def close(self) -> bool:
        """Take no more items; the thread ends once the queue is empty. → False when it was
        closed already."""
        with self._cv:
            if self._closing:
                return False
            self._closing = True
            self._cv.notify_all()
            return True

    def drop_waiting(self) -> tuple[int, int]:
        """Close, and drop the items still waiting; `idle` still waits for the one being
        handled. → (dropped, still being handled)."""
        return self._drop(abandon=False)

    def abandon(self) -> tuple[int, int]:
        """`drop_waiting`, and give up on the one being handled too: `abandoned` turns True
        in the same step (so its handler can tell) and `idle` no longer waits for it."""
        return self._drop(abandon=True)

    def _drop(self, *, abandon: bool) -> tuple[int, int]:
        with self._cv:
            self._closing = True
            dropped = len(self._q)
            self._q.clear()
            self._open -= dropped
            self._abandoned = self._abandoned or abandon
            self._cv.notify_all()
            return dropped, self._open

    @property
    def closed(self) -> bool:
        with self._cv:
            return self._closing

    @property
    def abandoned(self) -> bool:
        with self._cv:
            return self._abandoned

    @property
    def started(self) -> bool:
        return self._thread is not None

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
