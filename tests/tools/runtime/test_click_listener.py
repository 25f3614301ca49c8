"""The real pynput mouse listener of `gazeloop run --oracle clicks`, on a real X server.

Clicks are pressed through the X server (XTEST, what pynput's Controller uses), so they
reach the listener as a person's would. Each case runs in its own process: pynput binds to
the display when it is imported. The refused listener is an X server without the RECORD
extension, whose listener thread dies as macOS's does without permission; both must be
one line that says what to allow, not a run that silently gets no click."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.clicks import _refused
from tests.xvfb import xvfb

pytest.importorskip("Xlib", reason="pynput's X backend (python-xlib) is not installed")

# Presses a left and a right click at (120, 340) and prints what reached the labeller there.
# It waits for the left click's press and release, however long the machine takes (60 s).
SCRIPT = """
import json, sys, time
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.clicks import start_listener

class Seen:
    def __init__(self):
        self.events = []
    def press(self, x, y):
        self.events.append(["press", x, y])
    def release(self, x, y):
        self.events.append(["release", x, y])

seen = Seen()
try:
    listener = start_listener(seen)
except UserError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
from pynput import mouse
pointer = mouse.Controller()
# pynput says ready before the server records; on a loaded machine the first clicks can
# come before that. Probe at (5, 5) until one is seen; only clicks at (120, 340) count.
deadline = time.monotonic() + 60
while not seen.events and time.monotonic() < deadline:
    pointer.position = (5, 5)
    pointer.click(mouse.Button.left)
    time.sleep(0.1)
pointer.position = (120, 340)
pointer.click(mouse.Button.right)
pointer.click(mouse.Button.left)
here = lambda: [e for e in seen.events if e[1:] == [120, 340]]
while len(here()) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
listener.stop()
print(json.dumps({"events": here()}))
"""


def _run(display: str) -> tuple[dict, str]:
    env = {**os.environ, "DISPLAY": display}
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_a_left_click_reaches_the_labeller_and_a_right_click_does_not():
    with xvfb(size="800x600x24") as display:
        out, _ = _run(display)
    assert out == {"events": [["press", 120, 340], ["release", 120, 340]]}


def test_a_listener_the_server_refuses_is_one_line_that_says_why():
    with xvfb("-extension", "RECORD") as display:
        out, stderr = _run(display)
    assert "error" in out, out
    assert out["error"].startswith("the mouse listener stopped as it started (")
    assert "RECORD extension" in out["error"]
    assert "Traceback" not in stderr  # said once, in the error, not dumped by the thread


@pytest.mark.parametrize(
    ("platform", "words"),
    [("darwin", "Privacy & Security > Accessibility"), ("linux", "RECORD extension")],
)
def test_the_refusal_names_what_to_allow_on_each_platform(platform, words):
    text = _refused(platform, [])
    assert words in text and "\n" not in text
    err = UserError(_refused(platform, [RuntimeError("no tap")]))
    assert "(RuntimeError: no tap)" in str(err)


class _HIServices:
    """The calls of macOS's HIServices (pyobjc) that `permissions` makes, answering as told
    and keeping the options asked with: the real module exists only on macOS."""

    kAXTrustedCheckOptionPrompt = "AXTrustedCheckOptionPrompt"  # noqa: N815 - the API's name

    def __init__(self, trusted: bool) -> None:
        self.trusted = trusted
        self.asked: list[dict] = []

    def AXIsProcessTrusted(self) -> bool:  # noqa: N802 - the API's own name
        return self.trusted

    def AXIsProcessTrustedWithOptions(self, options: dict) -> bool:  # noqa: N802
        self.asked.append(dict(options))
        return self.trusted


class _OlderHIServices:
    """A pyobjc without the options call."""

    def __init__(self, trusted: bool) -> None:
        self.trusted = trusted

    def AXIsProcessTrusted(self) -> bool:  # noqa: N802 - the API's own name
        return self.trusted


def test_accessibility_is_asked_only_on_macos_with_its_dialog(monkeypatch):
    """Asked without the prompt option, macOS neither showed its dialog nor listed the
    terminal under Accessibility: the user had to find and add it by hand."""
    from gazeloop.tools.runtime.permissions import accessibility_trusted

    hi = _HIServices(False)
    monkeypatch.setitem(sys.modules, "HIServices", hi)
    assert accessibility_trusted("darwin") is False
    assert hi.asked == [{"AXTrustedCheckOptionPrompt": True}]
    assert accessibility_trusted("linux") is None and len(hi.asked) == 1
    monkeypatch.setitem(sys.modules, "HIServices", _HIServices(True))
    assert accessibility_trusted("darwin") is True
    monkeypatch.setitem(sys.modules, "HIServices", _OlderHIServices(False))
    assert accessibility_trusted("darwin") is False
    monkeypatch.setitem(sys.modules, "HIServices", None)  # not installed: cannot ask
    assert accessibility_trusted("darwin") is None


UNTRUSTED = """
import sys
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.clicks import start_listener
from tests.tools.runtime.test_click_listener import _HIServices

sys.modules["HIServices"] = _HIServices(False)
try:
    start_listener(object(), platform="darwin")
except UserError as e:
    print(e)
"""


def test_an_untrusted_mac_is_told_before_any_listener_starts():
    with xvfb(size="800x600x24") as display:
        env = {**os.environ, "DISPLAY": display}
        p = subprocess.run(
            [sys.executable, "-c", UNTRUSTED], env=env, capture_output=True, text=True, timeout=120
        )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("macOS gives this program no clicks: allow the terminal")
    assert "Privacy & Security > Accessibility" in p.stdout
