"""`gazeloop run`'s window keys: q quits; Esc does not. Esc skips the glance's dot and cancels
the calibration grid, and a glance often ends by itself within half a second: an Esc meant
to skip it then landed on the live view, which ended the whole run.

Keys are injected where HighGUI reads them (cv2.waitKey), which still runs for real on an
Xvfb display so the window keeps painting."""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
import pytest

from tests.cli import cli

VIDEO = "data/video-corners4/calibrate.mp4"
ESC, Q = chr(27), "q"


def scripted_keys(monkeypatch, script: dict[int, str]) -> list[tuple[int, str]]:
    """cv2.waitKey answering the n-th call with `script[n]`; → (n, key) as they were read."""
    real, count, read = cv2.waitKey, {"n": 0}, []

    def wait(ms: int = 0) -> int:
        k = real(1)
        count["n"] += 1
        if count["n"] in script:
            read.append((count["n"], script[count["n"]]))
            return ord(script[count["n"]])
        return k

    monkeypatch.setattr(cv2, "waitKey", wait)
    return read


def frames_run(out: str) -> int:
    (summary,) = [x for x in out.splitlines() if x.startswith("gazeloop run: ")]
    return int(summary.removeprefix("gazeloop run: ").split()[0])


def run_video(shared, *flags) -> tuple[int, str, str]:
    return cli("run", "--source", shared / VIDEO, "--oracle", "none", "--no-watch-models", *flags)


def close_window_at(monkeypatch, n: int, title: str = "gazeloop") -> list[int]:
    """At the n-th cv2.waitKey, the window closed as a window manager closes it (the title
    bar's button: WM_DELETE_WINDOW to the client), and the events pumped until HighGUI has
    no such window any more (waited for, not timed); → the calls."""
    real, calls = cv2.waitKey, []

    def wait(ms: int = 0) -> int:
        calls.append(ms)
        if len(calls) != n:
            return real(1)
        _delete_window(title, pump=lambda: real(10))
        return -1

    monkeypatch.setattr(cv2, "waitKey", wait)
    return calls


def _delete_window(title: str, pump, within_s: float = 60.0) -> None:
    """WM_DELETE_WINDOW to every window of that title, again at each pump until HighGUI's
    window is closed: hidden (0), or gone with the whole GUI (an error). Again, because a
    window of an earlier test may still be on the display while this one is not yet."""
    import time

    from Xlib import X, display, protocol
    from Xlib.error import XError

    deadline = time.monotonic() + within_s
    d = display.Display()
    proto, delete = d.intern_atom("WM_PROTOCOLS"), d.intern_atom("WM_DELETE_WINDOW")
    try:
        while True:
            for w in d.screen().root.query_tree().children:
                with contextlib.suppress(XError):  # gone meanwhile
                    if w.get_wm_name() == title:
                        data = (32, [delete, X.CurrentTime, 0, 0, 0])
                        msg = protocol.event.ClientMessage(window=w, client_type=proto, data=data)
                        w.send_event(msg)
            d.sync()
            pump()
            try:
                if cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) == 0:
                    return
            except cv2.error:
                return
            assert time.monotonic() < deadline, f"window {title!r} still open"
    finally:
        d.close()


@pytest.mark.slow
def test_closing_the_window_ends_the_run(xenv, shared, monkeypatch):
    """Closed by its title bar's button, the window came back (imshow makes a new one) and
    the run went on tracking; only q, Ctrl-C or a kill ended it."""
    calls = close_window_at(monkeypatch, 8)
    rc, out, err = run_video(shared, "--frames", 40)
    assert rc == 0, err
    assert frames_run(out) == 8 and len(calls) == 8


@pytest.mark.slow
def test_esc_in_the_live_view_does_not_end_the_run_and_q_does(xenv, shared, monkeypatch):
    read = scripted_keys(monkeypatch, {3: ESC, 6: ESC, 12: Q})
    rc, out, err = run_video(shared, "--frames", 40)
    assert rc == 0, err
    assert [k for _, k in read] == [ESC, ESC, Q]  # every key reached the live view
    assert frames_run(out) == 12  # q, not the first Esc, ended it


@pytest.mark.slow
def test_esc_that_skips_a_glance_and_lands_on_the_live_view_does_not_end_the_run(
    xenv, shared, c4_profile, monkeypatch
):
    """7, Esc to skip the dot, and a second Esc pressed after the dot has gone: it reaches
    the live view, and the run goes on to its end."""
    read = scripted_keys(monkeypatch, {3: "7", 6: ESC, 8: ESC})
    flags = ("--profile", c4_profile, "--screen-px", 1280, 720, "--frames", 30)
    rc, out, err = run_video(shared, *flags)
    assert rc == 0, err
    assert "glance (key): no label (cancelled)" in out
    assert len(read) == 3 and frames_run(out) == 30


def test_esc_while_the_camera_gives_no_frame_does_not_end_the_run(monkeypatch):
    """The dimmed view while a camera reconnects hears the live view's keys: q, not Esc."""
    from gazeloop.tools.commands import run as run_cmd

    ui = object.__new__(run_cmd.Window)  # `waiting` reads no more than these three
    ui.source_desc, ui.last_img = "0", np.zeros((360, 640, 3), np.uint8)
    ui.display = run_cmd.CvDisplay(run_cmd.WINDOW, create=False)
    monkeypatch.setattr(cv2, "imshow", lambda name, img: None)
    monkeypatch.setattr(cv2, "getWindowProperty", lambda name, prop: 1.0)  # still open
    for key, goes_on in ((27, True), (ord("q"), False), (-1, True)):
        monkeypatch.setattr(cv2, "waitKey", lambda ms, key=key: key)
        assert ui.waiting(1.5) is goes_on


@pytest.mark.slow
def test_c_on_a_recording_says_calibrating_needs_a_camera_and_the_run_goes_on(
    xenv, shared, monkeypatch, tmp_path
):
    """The grid on a recording would label its frames with dots they never saw (as
    `calibrate --source VIDEO` did before it refused it)."""
    scripted_keys(monkeypatch, {3: "c"})
    rc, out, err = run_video(shared, "--frames", 20)
    assert rc == 0, err
    assert "c: calibrating needs a camera" in out
    assert frames_run(out) == 20
    assert not list((tmp_path / "home").rglob("session.json"))  # no calibration session


def test_clicks_start_with_the_c_keys_first_profile(monkeypatch):
    """--oracle auto with a camera and no profile yet: clicks stayed off for the whole run,
    even after the c key made one (the README: clicks are the default with a camera and a
    profile)."""
    from types import SimpleNamespace

    from gazeloop.calibration.drift.history import History
    from gazeloop.tools.commands import run as run_cmd
    from gazeloop.tools.runtime import clicks

    started = []
    monkeypatch.setattr(clicks, "start_listener", lambda labeller: started.append(labeller) or 1)
    args = SimpleNamespace(clicks_later=True, oracle="none", oracle_auto=True)
    noted = []
    live = SimpleNamespace(
        clicks=None,
        history=History(),
        post_label=None,
        note_settings=lambda **changes: noted.append(changes),
    )
    ls = SimpleNamespace(source=object())
    mapper = SimpleNamespace(screen=SimpleNamespace(px=(1280, 720)))
    listeners = [None]
    start = run_cmd._clicks_after_calibration(args, live, ls, listeners)
    start(mapper)
    assert args.oracle == "clicks" and started == [live.clicks] and listeners == [None, 1]
    assert noted == [{"oracle": "clicks"}]  # the store's run record says so from here on
    start(mapper)  # a second calibration: the same listener goes on
    assert len(started) == 1 and len(noted) == 1
    args.clicks_later = False  # a profile at start, or a recording: nothing to start later
    assert run_cmd._clicks_after_calibration(args, live, ls, []) is None


def test_on_macos_a_hidden_window_is_not_taken_for_closed(monkeypatch):
    """Cocoa's WND_PROP_VISIBLE is NSWindow.isVisible, 0 for a minimised window too: the
    live view minimised to work under the moving cursor must not end the run."""
    from gazeloop.tools.ui import window

    shown = window.CvDisplay("x", create=False)
    monkeypatch.setattr(cv2, "imshow", lambda name, img: None)
    monkeypatch.setattr(cv2, "waitKey", lambda ms: -1)
    monkeypatch.setattr(cv2, "getWindowProperty", lambda name, prop: 0.0)
    img = np.zeros((4, 4, 3), np.uint8)
    monkeypatch.setattr(window.sys, "platform", "darwin")
    assert shown.show(img) == -1
    monkeypatch.setattr(window.sys, "platform", "linux")
    assert shown.show(img) == window.CLOSED
