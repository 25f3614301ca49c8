"""The click oracle in `gazeloop run`: mouse presses in, point labels for the loop out.

A thin shell around `oracle.clicks.judge`, which holds every rule. The pynput listener
(`start_listener`) only records presses and releases, from its own thread; the frame thread
calls `poll` every frame, which decides each click once its burst window has closed (a
second press may still be coming until then) and hands accepted clicks to `on_label` as
`OracleLabel`s timed at the end of the fixation that vouched for them (in `gazeloop run`,
`Live.post_label`: the loop judges them on a thread of its own, not the frame's).

Times: presses are stamped on `time.monotonic_ns()`, frames on their source's clock. The
two are tied by the newest frame (`frame`): its time, and when it was processed. So a click
is placed on the same time line as the History it is judged against, whatever the source.

Screen: the profile's monitor only, taken to be the one at the origin of pynput's
coordinates (the primary monitor); presses outside it are ignored.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from gazeloop.calibration.drift.history import History
from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.oracle.clicks import Click, ClickRules, ClickVerdict, burst_mask, judge_one
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.permissions import ALLOW, accessibility_trusted, no_pointer

log = logging.getLogger(__name__)
_MS = 1_000_000
VERSION = "clicks-1"


class ClickLabeller:
    """Presses and releases from the listener's thread, put on the frames' clock and judged
    against the History by the click rules once their burst window has closed.

    `same_clock`: the frames are stamped by `clock` itself (a camera: the monotonic clock
    read as the frame is grabbed), so a press is at its own time. Otherwise (a replayed
    recording, whose frames carry media time) a press is placed after the latest frame by
    the time since that frame was processed: on a camera that put every click earlier by
    the capture-to-processing delay, 20-60 ms a frame here."""

    def __init__(
        self,
        history: History,
        screen_px: tuple[int, int],
        on_label: Callable[[OracleLabel], None],
        rules: ClickRules | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        same_clock: bool = False,
    ) -> None:
        self.history = history
        self.size = np.asarray(screen_px, dtype=np.float64)
        self.on_label = on_label
        self.rules = rules or ClickRules()
        self.clock = clock
        self.same_clock = same_clock
        self.verdicts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._open: list[Click] = []  # pressed, not decided yet (times on the frame clock)
        self._recent: list[Click] = []  # decided, kept for the burst rule of later presses
        self._anchor: tuple[int, int] | None = None  # (frame t_ns, clock() when processed)

    # --- the listener's thread -----------------------------------------------------------

    def press(self, x: float, y: float) -> None:
        t = self._frame_time(self.clock())
        if t is None or not (0 <= x < self.size[0] and 0 <= y < self.size[1]):
            return  # no frame yet, or another monitor
        with self._lock:
            self._open.append(Click(t, (float(x), float(y))))

    def release(self, x: float, y: float) -> None:
        t = self._frame_time(self.clock())
        with self._lock:
            if t is None or not self._open or self._open[-1].release_t_ns is not None:
                return
            c = self._open[-1]
            self._open[-1] = Click(c.t_ns, c.xy_px, t, (float(x), float(y)))

    # --- the frame thread ----------------------------------------------------------------

    def frame(self, t_ns: int) -> None:
        self._anchor = (t_ns, t_ns if self.same_clock else self.clock())

    def poll(self) -> list[ClickVerdict]:
        """Decide the clicks whose burst window has closed; accepted ones go to `on_label`."""
        now = self._frame_time(self.clock())
        gap = round(self.rules.burst_ms * _MS)
        with self._lock:
            if now is None or not self._open or now - self._open[0].t_ns <= gap:
                return []
            ready = [c for c in self._open if now - c.t_ns > gap]
            self._open = [c for c in self._open if now - c.t_ns <= gap]
            context = self._recent + ready + self._open
            self._recent = [c for c in self._recent + ready if now - c.t_ns <= 2 * gap]
        out = self._judge(ready, context)
        for v in out:
            self.verdicts[v.reason] = self.verdicts.get(v.reason, 0) + 1
            if v.accepted:
                self.on_label(self.label_of(v))
        return out

    def _judge(self, ready: list[Click], context: list[Click]) -> list[ClickVerdict]:
        t0 = min(c.t_ns for c in ready) - round(self.rules.lookback_ms * _MS)
        t, xy = self.history.window_px(t0, max(c.t_ns for c in ready), self.size)
        # Bursts need the neighbours; the fixation rules only the clicks decided now.
        flags = burst_mask([c.t_ns for c in context], self.rules)
        burst = {id(c): bool(f) for c, f in zip(context, flags, strict=True)}
        return [judge_one(c, burst[id(c)], t, xy, self.rules) for c in ready]

    def label_of(self, v: ClickVerdict) -> OracleLabel:
        x, y = v.click.xy_px
        return OracleLabel(
            t_ns=v.fixation.t1_ns,
            snapshot_id=f"click-{v.click.t_ns}",
            oracle="clicks",
            oracle_version=VERSION,
            observation=PointObservation(xy=(x / self.size[0], y / self.size[1])),
            confidence=1.0,
            latency_s=self.rules.burst_ms / 1e3,
            details={
                "click_px": [x, y],
                "fixation_ms": (v.fixation.t1_ns - v.fixation.t0_ns) / _MS,
            },
        )

    def _frame_time(self, now: int) -> int | None:
        a = self._anchor
        return None if a is None else a[0] + (now - a[1])


# How long a listener may take to connect to the desktop, and then to stay up before it is
# taken to be listening. A refused one (see `start_listener`) ends at once.
_READY_TIMEOUT_S = 10.0
_SETTLE_S = 0.3


def start_listener(labeller: ClickLabeller, *, platform: str | None = None):
    """A pynput global mouse listener feeding `labeller` (left button only).

    A listener that cannot watch the mouse says nothing and gets no clicks: on macOS without
    the Accessibility / Input Monitoring permission its event tap is refused and its thread
    ends as it starts; on an X server without the RECORD extension the thread dies on an
    exception. Either way `gazeloop run` would run with no click label ever, so the
    listener is watched until it is ready and a moment after, and a dead one is a
    `UserError` that says what to allow."""
    try:
        from pynput import mouse
    except ImportError as e:
        raise UserError(no_pointer("--oracle clicks", e)) from None
    if accessibility_trusted(platform) is False:
        raise UserError(f"macOS gives this program no clicks: {ALLOW}")

    def on_click(x, y, button, pressed):
        if button != mouse.Button.left:
            return
        (labeller.press if pressed else labeller.release)(x, y)

    listener = mouse.Listener(on_click=on_click)
    failed: list[BaseException] = []
    done = threading.Event()
    previous = threading.excepthook

    def hook(args) -> None:
        # the listener's own death is said below in one line, not as a traceback
        if args.thread is listener:
            failed.append(args.exc_value)
            done.set()
        else:
            previous(args)

    threading.excepthook = hook
    try:
        listener.start()
        # wait() blocks until the listener is ready, forever if it died first: a helper
        # thread waits, and an exception in the listener ends the wait too.
        threading.Thread(target=lambda: (listener.wait(), done.set()), daemon=True).start()
        done.wait(_READY_TIMEOUT_S)
        try:
            listener.join(_SETTLE_S)
        except Exception as e:  # pynput re-raises what its callbacks raised
            failed.append(e)
    finally:
        threading.excepthook = previous
    if listener.is_alive() and not failed:
        return listener
    if listener.is_alive():  # a callback failed; stopping one never ready would block
        with contextlib.suppress(Exception):
            listener.stop()
    raise UserError(_refused(platform or sys.platform, failed))


def _refused(platform: str, failed: list[BaseException]) -> str:
    cause = f" ({type(failed[0]).__name__}: {failed[0]})" if failed else ""
    if platform == "darwin":
        return (
            f"the mouse listener stopped as it started{cause}: macOS gives a program no "
            f"clicks without permission: {ALLOW}"
        )
    return (
        f"the mouse listener stopped as it started{cause}: on X11 it needs the server's "
        "RECORD extension; under Wayland it sees only clicks in XWayland windows"
    )


class ClickReplay:
    """`gazeloop run --replay-clicks` on a recording with targets: a person who clicks each
    target once, `after_ms` into its settled frames (the hand follows the eye), exactly on
    it. The presses go through the same `ClickLabeller` and rules as a real mouse, so the
    fast path's own fixations decide which become labels. Deterministic: no random timing
    (the benchmark's `click_replay` draws human timing; this is for a live run to show).
    `recorded_px`: the screen the recording's targets are pixels of, when it differs from
    the one in use (a click is a pixel of the screen in use: the recording's 2560x1440
    corners, pressed as they were on a 1920x1080 screen, were stored 63 px off or off it)."""

    def __init__(self, labeller: ClickLabeller, target_of, after_ms=300.0, recorded_px=None):
        self.labeller = labeller
        self.target_of = target_of  # frame -> FrameTarget | None (tools.runtime.labelled)
        self.scale = np.ones(2) if recorded_px is None else labeller.size / np.asarray(recorded_px)
        self.after_ns = round(after_ms * _MS)
        self.pressed = 0
        self._visit: tuple[int, int] | None = None  # (target id, first settled frame's time)
        self._done = False

    def after(self, frame) -> None:
        """Call with each frame once processed (the labeller has taken its time): the
        click, if one is due, is pressed at it and judged against a history that holds
        this frame. The labeller's clock must be constant (`lambda: 0`)."""
        info = self.target_of(frame)
        if info is None or info.settling:
            return
        if self._visit is None or self._visit[0] != info.target:
            self._visit, self._done = (info.target, frame.t_ns), False
        if not self._done and frame.t_ns - self._visit[1] >= self.after_ns:
            x, y = np.asarray(info.label_px, dtype=np.float64) * self.scale
            self.labeller.press(x, y)
            self.labeller.release(x, y)
            self.pressed += 1
            self._done = True
