"""The OpenCV window, as thin as it can be: show a picture, read a key, go full screen.

Everything drawn comes from the pure renderers; this module only talks to HighGUI.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import cv2
import numpy as np

from gazeloop.tools.errors import UserError

ESC = 27
# What `CvDisplay.show` returns once the person closed the window (its title bar's button,
# the window manager): no key has this code.
CLOSED = -2


def screen_size_unknown(flag_hint: str = "give --screen-px W H") -> str:
    """The one line for a screen whose size the window system did not say."""
    unit = " (in points: the size System Settings > Displays shows)"
    return (
        f"cannot tell the screen size from the window system; {flag_hint}"
        f"{unit if sys.platform == 'darwin' else ''}"
    )


def mac_screen_points() -> tuple[int, int] | None:
    """The main display's size in points, from Quartz (pyobjc), or None without it. The main
    display (the menu bar's) is where pynput's origin is; a calibration shown full
    screen on another display needs --screen-px and is not handled further here.
    OpenCV's Cocoa window reports the last picture's size, not the window's, so the
    full-screen probe measures nothing there; and points are the units pynput moves the
    pointer and reports clicks in (its origin is this display's corner)."""
    try:
        import Quartz
    except ImportError:
        return None
    bounds = Quartz.CGDisplayBounds(Quartz.CGMainDisplayID())
    w, h = int(round(bounds.size.width)), int(round(bounds.size.height))
    return (w, h) if w > 0 and h > 0 else None


def require_display(what: str, hint: str = "") -> None:
    """OpenCV's Qt backend aborts the whole process (no exception) when it cannot reach an X
    server; say so in one line before it gets the chance."""
    if not sys.platform.startswith("linux"):
        return
    display = os.environ.get("DISPLAY")
    why = "DISPLAY is unset" if not display else _display_missing(display)
    if why:
        raise UserError(
            f"{what} needs a window, and there is no X display ({why})"
            + (f"; {hint}" if hint else "")
        )


def _display_missing(display: str) -> str | None:
    """Why DISPLAY names no X server Qt could reach: not a display name, a local display
    (":N", "unix:N") whose socket is missing, or a remote one (host:N, what `ssh -X`
    leaves) that does not answer on its port. Qt aborted the process on each (exit 134,
    after the models had loaded). A server that answers but refuses us is left to Qt."""
    host, colon, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not colon or not number.isdigit():
        return f"DISPLAY={display} is not a display name ([host]:N)"
    if host in ("", "unix"):
        sock = Path("/tmp/.X11-unix") / f"X{number}"
        if sock.exists():
            return None
        return f"DISPLAY={display}, but no X server listens there ({sock})"
    port = 6000 + int(number)
    try:
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError as e:
        return f"DISPLAY={display}, but nothing answers at {host}:{port} ({e.strerror or e})"
    return None


# Smaller than this, a "full-screen" window is not the screen (see `screen_px`).
_SMALLEST = (800, 600)


class CvDisplay:
    """A named HighGUI window. `show` returns the key pressed (-1 for none, `CLOSED` once
    the window was closed)."""

    def __init__(self, name: str, *, create: bool = True):
        self.name = name
        if create:
            require_display(f"window {name!r}")
            # GUI_NORMAL: no Qt toolbar or status bar (zoom and save buttons for debugging
            # images), so the window shows the picture and nothing else.
            cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_GUI_NORMAL)

    def show(self, img: np.ndarray, wait_ms: int = 1) -> int:
        cv2.imshow(self.name, img)
        k = cv2.waitKey(wait_ms)
        if k != -1:
            return k & 0xFF
        return CLOSED if self.closed() else -1

    def closed(self) -> bool:
        """Closed by the person: Qt says so with an error once its last window is closed,
        else with 0, as GTK does. Its next imshow made a new one, so `run` and the grid
        went on after their window was closed. Not on macOS: Cocoa's windows have no close
        button, and its 0 is NSWindow's isVisible, which a minimised window has too:
        minimising the live view to work under the moving cursor must not end the run."""
        try:
            visible = cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE)
        except cv2.error:
            return True
        return visible == 0 and sys.platform != "darwin"

    def size_to(self, width: int, height: int) -> None:
        """Open at the picture's size (Qt's default normal window is 400x300, which would
        shrink the live view to a thumbnail); the user may resize it afterwards. Also asked
        of a full-screen window, for window systems that ignore full screen (no window
        manager, e.g. Xvfb)."""
        cv2.resizeWindow(self.name, int(width), int(height))

    def fullscreen(self, on: bool = True) -> None:
        mode = cv2.WINDOW_FULLSCREEN if on else cv2.WINDOW_NORMAL
        with contextlib.suppress(cv2.error):  # the user closed the window: nothing to set
            cv2.setWindowProperty(self.name, cv2.WND_PROP_FULLSCREEN, mode)

    def screen_px(self, pumps: int = 10) -> tuple[int, int] | None:
        """The size of the full-screen window, i.e. of the screen, or None when the window
        system does not say (no window manager: the window keeps the picture's size). On
        macOS, the main display in points (`mac_screen_points`)."""
        if sys.platform == "darwin":
            return mac_screen_points()
        probe = (640, 360)
        img = np.zeros((probe[1], probe[0], 3), np.uint8)
        for _ in range(pumps):  # let the window manager apply the full-screen request
            self.show(img, 30)
        try:
            _, _, w, h = cv2.getWindowImageRect(self.name)
        except cv2.error:
            return None
        if w <= 0 or h <= 0 or (w, h) == probe or w < _SMALLEST[0] or h < _SMALLEST[1]:
            # Without a window manager the request is ignored and the window keeps whatever
            # size it had (a 400x225 grid, the live view's 1280x396 were saved as screens).
            return None
        return (int(w), int(h))

    def wait_any_key(self, img: np.ndarray, max_s: float | None = None) -> int:
        """Show `img` until a key is pressed (or `max_s` seconds, when given)."""
        if max_s is None:
            return self.show(img, 0)
        steps = max(1, int(max_s * 10))
        for _ in range(steps):
            k = self.show(img, 100)
            if k != -1:
                return k
        return -1

    def close(self) -> None:
        with contextlib.suppress(cv2.error):  # already closed by the user
            cv2.destroyWindow(self.name)
