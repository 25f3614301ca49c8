"""The screen's size on macOS: the main display in points, from Quartz. OpenCV's Cocoa
window reports the last picture's size, so `calibrate` and the c key could never learn the
screen there; and pynput moves the pointer and reports clicks in points, not Retina pixels.
Quartz exists only on macOS: a double shaped like pyobjc's answers here."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from gazeloop.tools.ui import window


class _Quartz:
    """`CGMainDisplayID` and `CGDisplayBounds` as pyobjc gives them (a CGRect of floats)."""

    def __init__(self, w: float, h: float) -> None:
        self.size = SimpleNamespace(width=w, height=h)

    def CGMainDisplayID(self) -> int:  # noqa: N802 - the API's own name
        return 1

    def CGDisplayBounds(self, display: int):  # noqa: N802
        assert display == 1
        return SimpleNamespace(origin=SimpleNamespace(x=0.0, y=0.0), size=self.size)


def test_a_mac_screen_is_the_main_display_in_points(monkeypatch):
    monkeypatch.setitem(sys.modules, "Quartz", _Quartz(1512.0, 982.0))
    assert window.mac_screen_points() == (1512, 982)
    display = object.__new__(window.CvDisplay)  # no window: on macOS none is probed
    monkeypatch.setattr(window.sys, "platform", "darwin")
    assert display.screen_px() == (1512, 982)
    monkeypatch.setitem(sys.modules, "Quartz", _Quartz(0.0, 0.0))
    assert window.mac_screen_points() is None
    monkeypatch.setitem(sys.modules, "Quartz", None)  # no pyobjc: cannot ask
    assert display.screen_px() is None
    said = window.screen_size_unknown()
    assert said.endswith(
        "give --screen-px W H (in points: the size System Settings > Displays shows)"
    )


def test_elsewhere_the_size_is_asked_in_pixels(monkeypatch):
    monkeypatch.setattr(window.sys, "platform", "linux")
    said = window.screen_size_unknown("restart with --screen-px W H")
    assert (
        said == "cannot tell the screen size from the window system; restart with --screen-px W H"
    )
