"""What the windows say, all of it: the grid's messages (a failed fit, a lost face) and the
live view's status strip, checked on the pictures the pure renderers draw (no display)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.procedure import CalibrationRun, ProcedureConfig
from gazeloop.fastpath.types import Frame
from gazeloop.tools.errors import UserError
from gazeloop.tools.ui import calibration_grid as grid
from gazeloop.tools.ui.calibration_grid import BACKGROUND, FACE_LOST, DotView, dot_view, render_dot
from gazeloop.tools.ui.render import LiveData, drawable, render_live, wrap
from tests.tools.commands.test_calibrate import Q as _Q  # a sample quality of the duck type

MS = 1_000_000
# What a fit no better than guessing says, as the auditor saw it cut after 90 characters.
FAILED = (
    "calibration not used, the profile kept: no better than guessing (807 px "
    "leave-one-target-out against 749 px for the centre of the other targets); "
    "/home/someone/.local/share/gazeloop/users/default/default.json is unchanged (the "
    "session and its report: /home/someone/.local/share/gazeloop/users/default/sessions/"
    "calibration-20261207-014400/report/calibration.json); calibrate again, face lit and "
    "eyes on each dot"
)


def _ink(img: np.ndarray, background) -> np.ndarray:
    """Where anything is drawn on a plain background."""
    return np.any(img != np.array(background, np.uint8), axis=2)


def _rows(ink: np.ndarray) -> int:
    """Bands of rows with ink in them: the lines of text."""
    on = ink.any(axis=1).astype(np.int8)
    return int(np.count_nonzero(np.diff(np.concatenate([[0], on])) == 1))


# --- the grid's messages ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1920, 1080), (1366, 768), (800, 600)])
def test_a_long_message_is_wrapped_within_the_screen(size):
    img = render_dot(DotView(size, None, 0.0, message=f"{FAILED}\nany key continues"))
    ink = _ink(img, BACKGROUND)
    assert _rows(ink) >= 4  # several lines, the hint on one of its own
    margin = 10
    assert not ink[:, :margin].any() and not ink[:, -margin:].any()  # nothing cut at an edge


def test_wrapping_keeps_every_word_and_cuts_a_path_longer_than_a_line():
    lines = wrap(FAILED, 600, 0.9, 2)
    assert len(lines) > 3
    assert "".join(lines).replace(" ", "") == FAILED.replace(" ", "")
    path = "/very/long/" + "x" * 200 + ".json"
    cut = wrap(path, 300, 0.9, 2)
    assert len(cut) > 1 and "".join(cut) == path


class _Display:
    """CvDisplay's calls, without a window: what was waited on, and for how long."""

    def __init__(self):
        self.waited: list[float | None] = []

    def fullscreen(self, on=True):
        pass

    def size_to(self, w, h):
        pass

    def show(self, img, wait_ms=1):
        return -1

    def wait_any_key(self, img, max_s=None):
        self.waited.append(max_s)
        return -1


@dataclass
class _S:
    quality: _Q = field(default_factory=_Q)
    gaze_yp_raw: tuple[float, float] | None = None

    def feature_dict(self) -> dict[str, float]:
        return {"gaze_yaw": 0.1, "gaze_pitch": -0.1} if self.quality.face else {}


class _FastPath:
    """A face in every frame, except in the frames whose index `lost` holds."""

    def __init__(self, lost=()):
        self.lost = set(lost)

    def process(self, frame):
        return _S(_Q(face=frame.index not in self.lost))


class _Clock:
    def ms(self, t_ns):
        return 1_700_000_000_000 + t_ns // MS


def _frames(n: int, step_ms: int = 50):
    img = np.zeros((48, 64, 3), np.uint8)
    return iter([Frame(t_ns=i * step_ms * MS, image=img, index=i) for i in range(n)])


def _calibrate(display, tmp_path, **kw):
    """A 9-point grid over 40 frames of a face that never leaves, to the fit (the test's)."""
    cfg = ProcedureConfig(n_targets=9, settle_s=0.0, collect_s=1.0, frames=1, min_frames=1)
    return grid.calibrate_on_screen(
        _frames(40),
        _FastPath(),
        cfg,
        ScreenGeometry(px=(1366, 768)),
        display,
        _Clock(),
        user="u",
        device="d",
        session_dir=tmp_path / "session",
        profile_out=tmp_path / "profile.json",
        source_desc="camera 0",
        ready_s=0.0,
        **kw,
    )


@pytest.mark.parametrize("wait_s, hint", [(None, "any key continues"), (5.0, "(or 5 s)")])
def test_a_failed_fit_shows_its_whole_message_and_says_what_continues(
    tmp_path, monkeypatch, wait_s, hint
):
    views: list[DotView] = []
    real = grid.render_dot
    monkeypatch.setattr(grid, "render_dot", lambda v: (views.append(v), real(v))[1])

    def finish(*a, **k):
        raise UserError(FAILED)

    monkeypatch.setattr(grid, "finish", finish)
    display = _Display()
    with pytest.raises(UserError):
        _calibrate(display, tmp_path, result_wait_s=wait_s)
    assert display.waited == [wait_s]
    msg = views[-1].message
    assert FAILED in msg and "any key continues" in msg and hint in msg


def test_a_lost_face_is_said_under_the_dot():
    size = (1920, 1080)
    cfg = ProcedureConfig(n_targets=9, settle_s=0.5, collect_s=1.0, frames=10, min_frames=1)
    run = CalibrationRun(cfg)
    run.feed(0, _S())
    for t in (100, 800):  # settling, then capturing
        seen = render_dot(dot_view(run, t * MS, size))
        lost = render_dot(dot_view(run, t * MS, size, face_lost=True))
        middle = (slice(size[1] // 3, 2 * size[1] // 3), slice(None))
        assert not _ink(seen[middle], BACKGROUND).any()
        assert _ink(lost[middle], BACKGROUND).sum() > 500
        assert dot_view(run, t * MS, size, face_lost=True).message == FACE_LOST
    ready = dot_view(run, 0, size, ready_s=1.0, face_lost=True).message
    assert ready.startswith("Follow the dot") and ready.endswith(FACE_LOST)


def test_the_grid_says_the_face_is_lost_once_it_has_been_for_a_while(monkeypatch):
    views: list[DotView] = []
    monkeypatch.setattr(grid, "render_dot", lambda v: views.append(v) or np.zeros((1, 1, 3)))
    cfg = ProcedureConfig(n_targets=9, settle_s=0.5, collect_s=5.0, frames=60, min_frames=1)
    lost = range(10, 30)  # 50 ms frames: the face is gone for a second
    grid.run_grid(
        _frames(40), _FastPath(lost), cfg, ScreenGeometry(px=(1920, 1080)), _Display(), ready_s=0
    )
    said = [i for i, v in enumerate(views) if v.message == FACE_LOST]
    first = lost[0] + round(grid.FACE_LOST_S / 0.05)
    assert said == list(range(first, lost[-1] + 1))  # not for a blink's frame or two


# --- the live view's status strip ------------------------------------------------------------

STATUS = "  ".join(
    [
        " 29.4 fps",
        "fast path 15.7 ms",
        "gaze (1034, 531) px",
        "oracle 12 done, 3 failed (last: timed out after 20 s)",
        "clicks 4 kept of 5",
        "click 4/5 σ 58px w 0.94",
        "target 1/1 σ 192px w 0.06",
        "last click accepted",
        "drift offset (-12, +30) px",
        "labels stored 123",
    ]
)


def _live(status: str) -> np.ndarray:
    img = np.full((720, 1280, 3), 100, np.uint8)
    return render_live(LiveData(image=img, status=status), width=1280)


def test_a_long_status_takes_more_lines_and_stays_inside_the_window():
    out = _live(STATUS)
    strip = out[360:]
    ink = np.any(strip > 60, axis=2)  # the letters, not the dark strip or their outline
    assert _rows(ink) >= 2
    assert not ink[:, -8:].any()  # the last field is not cut at the right edge
    lines = wrap(STATUS, 1260, 0.5, 3, sep="  ")
    assert "  ".join(lines) == drawable(STATUS).strip()  # every field, whole


def test_the_strip_keeps_its_height_while_the_status_takes_one_line_or_two():
    """A window is sized for its first picture; one of another height is scaled into it."""
    one, two = _live("29.4 fps  fast path 15.7 ms"), _live(STATUS)
    assert one.shape == two.shape
    assert _live(f"{STATUS}  {STATUS}").shape[0] > two.shape[0]  # more lines: a taller strip


class _CountingDisplay(_Display):
    """Counts the pictures shown, and lets a test wait until the window has taken `n`."""

    def __init__(self, n: int):
        super().__init__()
        self.fitting: list[str] = []
        self.last: str | None = None  # the message of the picture being shown
        self.seen = threading.Event()
        self.n = n

    def watching(self, monkeypatch):
        """Each picture's message kept in `last` as the grid renders it."""
        real = grid.render_dot

        def render(v):
            self.last = v.message
            return real(v)

        monkeypatch.setattr(grid, "render_dot", render)
        return self

    def show(self, img, wait_ms=1):
        if self.last and self.last.startswith("Fitting"):
            self.fitting.append(self.last)
            if len(self.fitting) >= self.n:
                self.seen.set()
        return -1


def test_the_window_takes_its_events_while_the_fit_runs(tmp_path, monkeypatch):
    """The fit ran on the window's thread: a full-screen window that took no events for the
    fit's seconds (macOS: a spinning cursor, "not responding"). Now the fit waits here until
    the window has shown the fitting picture three times, which it cannot while the fit
    holds the window's thread; and what the fit raises still reaches the caller."""
    display = _CountingDisplay(3).watching(monkeypatch)

    def finish(*a, **k):
        pumped = display.seen.wait(timeout=10)
        raise UserError(f"fit done; the window pumped meanwhile: {pumped}")

    monkeypatch.setattr(grid, "finish", finish)
    with pytest.raises(UserError, match="pumped meanwhile: True"):
        _calibrate(display, tmp_path, result_wait_s=1.0)
    assert all(
        m.startswith("Fitting the calibration: ") and m.endswith(" s") for m in display.fitting
    )


class _InterruptedDisplay(_CountingDisplay):
    """Ctrl-C on the third fitting picture, as KeyboardInterrupt reaches the window's loop."""

    def show(self, img, wait_ms=1):
        super().show(img, wait_ms)
        if len(self.fitting) == 3 and not getattr(self, "interrupted", False):
            self.interrupted = True
            raise KeyboardInterrupt
        return -1


def test_ctrl_c_while_fitting_stops_the_fit_before_it_saves(tmp_path, monkeypatch):
    """Ctrl-C reached the caller and the fit went on beside it: it saved its profile after
    the person had stopped (over the one `run` was using). Now the fit is told to stop, the
    window waits for it, and nothing is saved."""
    display = _InterruptedDisplay(3).watching(monkeypatch)
    profile = tmp_path / "profile.json"  # where `_calibrate` saves
    seen: dict[str, bool] = {}

    def finish(*a, cancelled, **k):
        seen["told"] = cancelled.wait(timeout=10)
        if not cancelled.is_set():
            profile.write_text("{}")
        seen["ended"] = True
        raise UserError("stopped")

    monkeypatch.setattr(grid, "finish", finish)
    with pytest.raises(KeyboardInterrupt):
        _calibrate(display, tmp_path)
    assert seen == {"told": True, "ended": True}
    assert not profile.exists()
    assert display.last == "Stopping: the fit ends first"
