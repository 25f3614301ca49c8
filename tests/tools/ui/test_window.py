"""The real OpenCV (Qt) window on a virtual X display: `gazeloop run`'s live view grabbed
from the X server and checked for its overlays, the `c` key's calibration grid in the same
window, and `gazeloop calibrate` on screen.

Needs Xvfb (`apt-get install xvfb`, done by .ci/run); `xwd` (x11-apps) for grabbing the
window from the X server. Without Xvfb the tests skip and say why. Keys are what a person
would press, injected where HighGUI reads them (cv2.waitKey), which still runs for real so
the window keeps painting.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.calibration.procedure import grid_targets
from gazeloop.calibration.profile import Profile, profile_path, user_dir
from gazeloop.calibration.store.session import read_session
from gazeloop.tools.ui.calibration_grid import BACKGROUND, DOT
from gazeloop.tools.ui.render import GOLD, RED
from tests.cli import cli

VIDEO = "data/video-corners4/calibrate.mp4"
LIVE_H = 360 + 56  # a 1280x720 camera's view at 640x360, and a status strip of two lines


def grid_takes_recordings(monkeypatch) -> None:
    """The grid on the recording: both commands refuse a recording (its frames never saw the
    grid's dots; tests/tools/commands/test_calibrate_source.py), but here the grid itself is
    the subject, and a recording gives every run the same frames, which a camera thread that
    drops frames under load would not."""
    from gazeloop.tools.commands import calibrate, run

    monkeypatch.setattr(calibrate, "grid_sees", lambda source: True)
    monkeypatch.setattr(run, "grid_sees", lambda source: True)


def read_xwd(path: Path) -> np.ndarray:
    """An XWD file (ZPixmap, 24 or 32 bits per pixel, as Xvfb writes them) as BGR."""
    data = path.read_bytes()
    h = struct.unpack(">25I", data[:100])
    header_size, fmt, width, height = h[0], h[2], h[4], h[5]
    byte_order, bpp, bpl, ncolors = h[7], h[11], h[12], h[19]
    assert fmt == 2 and bpp in (24, 32), f"unexpected XWD format {fmt}/{bpp} bpp"
    raw = np.frombuffer(data, np.uint8, count=bpl * height, offset=header_size + 12 * ncolors)
    px = raw.reshape(height, bpl)[:, : width * (bpp // 8)].reshape(height, width, bpp // 8)
    # LSBFirst: B, G, R(, pad) in memory, i.e. BGR already.
    return px[:, :, :3].copy() if byte_order == 0 else px[:, :, ::-1][:, :, -3:].copy()


def grab_window(
    display: str, name: str, out: Path, wait=cv2.waitKey, expect=None, deadline_s: float = 60.0
) -> np.ndarray | None:
    """The picture area of the window as the X server holds it; None without xwd.

    Qt paints when its event loop runs, which on a loaded machine can be later than any fixed
    wait: keep giving it events until the server holds the picture `expect` accepts (any
    painted one by default), not the first painted one, which can be an earlier frame. After
    `deadline_s` the last grab is returned as it is: the caller's asserts say what is wrong,
    and `not_black` tells a window Qt never painted (seen on Xvfb beside busy cores) from a
    black picture."""
    if shutil.which("xwd") is None:
        return None
    expect = expect or (lambda img: img.any())
    end = time.monotonic() + deadline_s
    while True:
        for _ in range(5):
            wait(20)
        subprocess.run(
            ["xwd", "-silent", "-display", display, "-name", name, "-out", str(out)],
            check=True,
            timeout=60,
        )
        x, y, w, h = cv2.getWindowImageRect(name)
        img = read_xwd(out)[y : y + h, x : x + w]
        if (img.size and expect(img)) or time.monotonic() > end:
            return img


# From the native module (opencv-python keeps it as cv2._native), not the package's names,
# which tests and mutations replace: the test card must reach the window whatever is done
# to cv2.imshow and cv2.waitKey.
_native = getattr(cv2, "_native", cv2)
_CARD_IMSHOW, _CARD_WAITKEY = _native.imshow, _native.waitKey
CARD = (200, 80, 20)  # BGR: a colour nothing in gazeloop draws, so it is not a product frame
CARD_DEADLINE_S = 120.0  # only a server that cannot paint at all waits this long


def _shows_card(win: np.ndarray) -> bool:
    return win.size > 0 and mask(win, CARD, 5).mean() > 0.9


@pytest.fixture
def painted(xenv, monkeypatch, tmp_path) -> dict[str, bool | None]:
    """Window name -> whether the X server showed a test card in that window before the code
    under test drew in it (None without xwd).

    An all-black grab is both what Xvfb shows when Qt has not painted yet and what a broken
    renderer or window shows. Painting a known card first, in the very window, tells them
    apart: once the card was seen, black is the program's doing."""
    seen: dict[str, bool | None] = {}
    real = cv2.namedWindow

    def named_window(name, *args, **kwargs):
        real(name, *args, **kwargs)
        if name in seen:
            return
        _CARD_IMSHOW(name, np.full((300, 400, 3), CARD, np.uint8))
        card = grab_window(
            xenv,
            name,
            tmp_path / "card.xwd",
            _CARD_WAITKEY,
            expect=_shows_card,
            deadline_s=CARD_DEADLINE_S,
        )
        seen[name] = None if card is None else _shows_card(card)

    monkeypatch.setattr(cv2, "namedWindow", named_window)
    return seen


def not_black(win: np.ndarray, name: str, painted: dict[str, bool | None]) -> None:
    """Fail on an all-black window, unless Xvfb could not even paint the test card in it (then
    nothing on this server can be checked: skip, saying so)."""
    if win.any():
        return
    assert name in painted, f"window {name!r} was never made with cv2.namedWindow (no card)"
    if not painted[name]:
        pytest.skip(
            f"Xvfb never showed a test card in window {name!r} within {CARD_DEADLINE_S:.0f} s:"
            " painting is broken on this server, so the window could not be checked"
        )
    pytest.fail(
        f"window {name!r} showed the test card, then only black: the X server paints this"
        " window, so the picture given to it (or the window) is broken"
    )


def _grid_dot_shown(win: np.ndarray) -> bool:
    return mask(win, BACKGROUND, 5).mean() > 0.95 and mask(win, DOT, 5).sum() > 20


def mask(img: np.ndarray, colour, tol: int = 30) -> np.ndarray:
    return np.all(np.abs(img.astype(int) - np.array(colour)) <= tol, axis=2)


def scripted_keys(monkeypatch, script: dict[int, str]):
    """cv2.waitKey as a person would answer it: `script` maps the n-th short wait (a frame
    shown) to a key; a long wait (a result on screen, "any key continues") gets a space at
    once. The real waitKey still runs (1 ms), so Qt keeps processing events."""
    real = cv2.waitKey
    count = {"n": 0}

    def wait(ms: int = 0) -> int:
        k = real(1)
        if ms == 0 or ms >= 100:
            return ord(" ")
        count["n"] += 1
        if count["n"] in script:
            return ord(script[count["n"]])
        return k

    monkeypatch.setattr(cv2, "waitKey", wait)
    return count


@pytest.fixture(scope="module")
def corners4_profile(shared, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    rc, _, err = cli(
        "calibrate",
        "--headless",
        "--source",
        shared / "data/video-corners4",
        "--out",
        tmp / "session",
        "--profile",
        tmp / "profile.json",
    )
    assert rc == 0, err
    return tmp / "profile.json"


@pytest.mark.slow
def test_live_window_shows_gaze_dot_picture_in_picture_and_status(
    xenv, painted, shared, corners4_profile, tmp_path, monkeypatch
):
    shot = tmp_path / "shot.png"
    grabbed: dict = {}
    real_destroy = cv2.destroyAllWindows

    def like_the_screenshot(win: np.ndarray) -> bool:
        img = cv2.imread(str(shot))
        return (
            img is not None and win.shape == img.shape and np.abs(win - img.astype(int)).mean() < 2
        )

    def grab_then_destroy():
        grabbed["img"] = grab_window(
            xenv, "gazeloop", tmp_path / "win.xwd", expect=like_the_screenshot
        )
        real_destroy()

    monkeypatch.setattr(cv2, "destroyAllWindows", grab_then_destroy)
    rc, out, err = cli(
        "run",
        "--source",
        shared / VIDEO,
        "--profile",
        corners4_profile,
        "--oracle",
        "targets",
        "--snapshot-every",
        "0.5",
        "--frames",
        30,
        "--screenshot",
        shot,
        "--no-watch-models",
    )
    assert rc == 0, err
    assert "gazeloop run: 30 frames" in out and "oracle" in out
    assert "oracle: targets, the recording's own targets replayed as labels (ground truth" in out
    img = cv2.imread(str(shot))
    # 1280x720 camera → a 640x360 camera view, a screen canvas beside it, a status strip.
    assert img.shape == (LIVE_H, 1280, 3)
    body, strip = img[:360], img[360:]
    # The gaze dot: red, on the screen canvas (right half), about 10 px in radius.
    red = mask(body, RED)
    ys, xs = np.nonzero(red)
    assert 150 < red.sum() < 500 and xs.min() > 650 and xs.max() - xs.min() < 24
    # The picture-in-picture: the oracle's snapshot, framed in gold, in the camera view's
    # top-right corner (320 px wide).
    gold = mask(body, GOLD)
    assert gold[0:2, 330:630].mean() > 0.9 and gold[:, :320].sum() == 0
    pip_h = int(np.nonzero(gold[:, 330])[0].max()) + 1
    assert pip_h == pytest.approx(180, abs=3)
    # The status line: white text along the bottom strip.
    assert (strip.min(axis=2) > 200).sum() > 300
    # The real window, as the X server shows it, is that very picture.
    win = grabbed.get("img")
    if win is None:
        pytest.skip("xwd is not installed: checked the picture given to the window only")
    not_black(win, "gazeloop", painted)
    assert win.shape == img.shape
    assert np.abs(win.astype(int) - img.astype(int)).mean() < 2.0
    assert mask(win[:360], RED).sum() > 150 and mask(win[:360], GOLD)[0:2, 330:630].mean() > 0.9


@pytest.mark.slow
def test_c_key_calibrates_in_the_running_window_and_the_cursor_appears(
    xenv, shared, tmp_path, monkeypatch
):
    scripted_keys(monkeypatch, {3: "c"})
    grid_takes_recordings(monkeypatch)
    shot = tmp_path / "shot.png"
    rc, out, err = cli(
        "run",
        "--source",
        shared / VIDEO,
        "--screen-px",
        1280,
        720,
        "--settle",
        0.1,
        "--capture",
        3,
        "--ready",
        0.1,
        "--frames",
        10,
        "--screenshot",
        shot,
        "--no-watch-models",
    )
    assert rc == 0, err
    assert "no calibration profile" in out  # it started without one...
    assert "calibrated; the new profile is in use" in out  # ...and has one now
    # The drift loop exists only with a profile: it was created by the install.
    assert "drift offset" in out.splitlines()[-1]
    prof = Profile.load(profile_path("default", "default"))
    assert prof.fit.targets == 9 and prof.screen.px == (1280, 720)
    s = read_session(prof.calibration_session)
    assert {it.label_px for it in s.items} == {
        tuple(p) for p in (grid_targets(9) * (1280, 720)).tolist()
    }
    assert all(it.record.model_extra["capture"] in ("kept", "dropped") for it in s.items)
    # The live view after calibrating has a cursor on the screen canvas.
    img = cv2.imread(str(shot))
    assert mask(img[:360, 650:], RED).sum() > 150
    # And a label store for what the 7 key's glance labels from now on: a run that began
    # without a profile had none, and dropped every label of its c key's profile unsaid.
    assert (user_dir("default") / "labels" / "labels.sqlite3").is_file()


@pytest.mark.slow
def test_c_key_with_another_devices_profile_saves_to_this_devices_own_file(
    xenv, shared, corners4_profile, tmp_path, monkeypatch
):
    """--profile of device `default` tried on device `laptop2`: the c key's fit goes to
    laptop2's own file, the given one is left as it was, and a later model swap refits the
    new profile in its new file (the model watcher is told the path, not only the profile)."""
    from gazeloop.tools.runtime import hotreload

    watchers = []

    class Recorded(hotreload.ModelWatcher):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            watchers.append(self)

    monkeypatch.setattr(hotreload, "ModelWatcher", Recorded)
    # A recording's eyes do not follow the grid: its fit is no better than guessing, which
    # the c key refuses while a profile is in use (tested with calibrate); not the subject.
    from gazeloop.tools.runtime import calibration

    monkeypatch.setattr(calibration, "_no_better_than_guessing", lambda ev: None)
    scripted_keys(monkeypatch, {3: "c"})
    grid_takes_recordings(monkeypatch)
    given = tmp_path / "given.json"
    given.write_bytes(corners4_profile.read_bytes())
    rc, out, err = cli(
        "run",
        "--source",
        shared / VIDEO,
        "--profile",
        given,
        "--device",
        "laptop2",
        "--screen-px",
        1280,
        720,
        "--settle",
        0.1,
        "--capture",
        3,
        "--ready",
        0.1,
        "--frames",
        10,
    )
    assert rc == 0, err
    assert "calibrated; the new profile is in use" in out
    own = profile_path("default", "laptop2")
    assert f"profile saved: {own}" in out
    assert given.read_bytes() == corners4_profile.read_bytes()
    assert Profile.load(own).device == "laptop2"
    (watcher,) = watchers
    assert watcher.profile_path == own and watcher.profile.device == "laptop2"


@pytest.mark.slow
def test_c_key_fit_no_better_than_guessing_leaves_the_profile_in_use(
    xenv, shared, corners4_profile, tmp_path, monkeypatch
):
    """The guard looked for a file at the c key's output path: with another device's profile
    in use that file did not exist, and a useless fit replaced the working profile."""
    scripted_keys(monkeypatch, {3: "c"})
    grid_takes_recordings(monkeypatch)
    given = tmp_path / "given.json"
    given.write_bytes(corners4_profile.read_bytes())
    rc, out, err = cli(
        "run", "--source", shared / VIDEO, "--profile", given, "--device", "laptop2",
        "--screen-px", 1280, 720, "--settle", 0.1, "--capture", 3, "--ready", 0.1,
        "--frames", 10, "--no-watch-models",
    )  # fmt: skip
    assert rc == 0, err
    assert "calibration: calibration not used, the profile kept: no better than guessing" in out
    assert "calibrated; the new profile is in use" not in out
    assert not profile_path("default", "laptop2").exists()
    assert given.read_bytes() == corners4_profile.read_bytes()


@pytest.mark.slow
def test_calibrate_on_screen_shows_the_grid_and_saves_profile_and_session(
    xenv, painted, shared, tmp_path, monkeypatch
):
    grabbed: dict = {}
    real = cv2.waitKey
    count = {"n": 0}

    def wait(ms: int = 0) -> int:
        real(1)
        if ms == 0 or ms >= 100:
            return ord(" ")  # the result screen: any key continues
        count["n"] += 1
        if count["n"] == 12 and "img" not in grabbed:
            out = tmp_path / "grid.xwd"
            grabbed["img"] = grab_window(
                xenv, "gazeloop calibrate", out, real, expect=_grid_dot_shown
            )
        return -1

    monkeypatch.setattr(cv2, "waitKey", wait)
    grid_takes_recordings(monkeypatch)
    rc, out, err = cli(
        "calibrate",
        "--source",
        shared / VIDEO,
        "--screen-px",
        1280,
        720,
        "--points",
        9,
        "--settle",
        0.1,
        "--capture",
        3,
        "--ready",
        0.1,
        "--out",
        tmp_path / "session",
        "--profile",
        tmp_path / "p.json",
    )
    assert rc == 0, err
    assert "leave-one-target-out error: mean" in out
    report = json.loads((tmp_path / "session/report/calibration.json").read_text())
    assert [t["kept"] for t in report["targets"]] == [3] * 9
    assert Profile.load(tmp_path / "p.json").fit.targets == 9
    assert len(read_session(tmp_path / "session")) >= 27
    win = grabbed.get("img")
    if win is None:
        pytest.skip("xwd is not installed: the grid was shown but not grabbed")
    not_black(win, "gazeloop calibrate", painted)
    # The grid as shown, at the screen's size: the dark background and the white dot, at
    # least as large as the smallest dot (radius 0.8% of the screen height).
    assert win.shape == (720, 1280, 3)
    assert mask(win, BACKGROUND, 5).mean() > 0.95
    dot = mask(win, DOT, 5)
    assert dot.sum() >= np.pi * (0.008 * 720) ** 2 * 0.5
    ys, xs = np.nonzero(dot)
    assert xs.max() - xs.min() < 0.1 * 1280  # one dot, not scattered pixels


def test_esc_cancels_the_grid_and_keeps_the_old_profile(xenv, shared, tmp_path, monkeypatch):
    scripted_keys(monkeypatch, {5: chr(27)})
    prof = tmp_path / "p.json"
    prof.write_text("old")
    grid_takes_recordings(monkeypatch)
    rc, out, err = cli(
        "calibrate",
        "--source",
        shared / VIDEO,
        "--screen-px",
        1280,
        720,
        "--out",
        tmp_path / "s",
        "--profile",
        prof,
    )
    assert rc == 1 and "calibration cancelled" in out
    assert prof.read_text() == "old"
    assert not (tmp_path / "s").exists()  # nothing captured yet: no empty session left


def test_ctrl_c_mid_grid_says_what_was_kept(xenv, shared, tmp_path, monkeypatch):
    """Ctrl-C during the grid ended calibrate with exit 130 and not a word: not that the
    profile stayed, not where the frames captured so far were."""
    real, calls = cv2.waitKey, []

    def wait(ms: int = 0) -> int:
        calls.append(ms)
        if len(calls) == 60:
            raise KeyboardInterrupt
        return real(1)

    monkeypatch.setattr(cv2, "waitKey", wait)
    grid_takes_recordings(monkeypatch)
    out_dir, prof = tmp_path / "s", tmp_path / "p.json"
    prof.write_text("old")
    argv = ["--screen-px", 1280, 720, "--out", out_dir, "--profile", prof, "--settle", 0.1]
    rc, out, err = cli("calibrate", "--source", shared / VIDEO, *argv, "--ready", 0.1)
    assert rc == 130, (out, err)
    assert err.strip().splitlines()[-1] == (
        f"calibration interrupted; the profile was not changed; its frames so far are in {out_dir}"
    )
    assert prof.read_text() == "old"
    notes = json.loads((out_dir / "session.json").read_text())["notes"]
    n = len(list(out_dir.glob("img_*.json")))
    assert n > 0 and notes == f"calibration interrupted after {n} captured frames"


@pytest.mark.slow
def test_closing_the_window_during_the_c_keys_grid_ends_the_run(xenv, shared, monkeypatch):
    """The grid was cancelled, and the next frame's imshow opened a new live view: the run
    went on after its window was closed."""
    from tests.tools.commands.test_run_keys import _delete_window, frames_run

    real, calls = cv2.waitKey, []

    def wait(ms: int = 0) -> int:
        calls.append(ms)
        if len(calls) == 3:
            return ord("c")
        if len(calls) == 10:  # in the grid: it draws in the live view's window
            _delete_window("gazeloop", pump=lambda: real(10))
            return -1
        return real(1)

    monkeypatch.setattr(cv2, "waitKey", wait)
    grid_takes_recordings(monkeypatch)
    argv = ["--screen-px", 1280, 720, "--frames", 200, "--no-watch-models", "--ready", 0.1]
    rc, out, err = cli("run", "--source", shared / VIDEO, *argv)
    assert rc == 0, err
    assert "calibration cancelled" in out and frames_run(out) == 3


def test_closing_the_grid_window_cancels_it(xenv, shared, tmp_path, monkeypatch):
    """Closed by its title bar's button, the grid came back (as a normal window, where its
    dots are not where the screen's pixels say) and went on capturing."""
    from tests.tools.commands.test_run_keys import close_window_at

    close_window_at(monkeypatch, 5, title="gazeloop calibrate")
    grid_takes_recordings(monkeypatch)
    out_dir, prof = tmp_path / "s", tmp_path / "p.json"
    argv = ["--screen-px", 1280, 720, "--out", out_dir, "--profile", prof]
    rc, out, err = cli("calibrate", "--source", shared / VIDEO, *argv)
    assert rc == 1 and "calibration cancelled" in out, (out, err)
    assert not prof.exists() and not out_dir.exists()


@pytest.mark.slow
def test_a_source_ending_mid_grid_is_a_clear_error(xenv, shared, tmp_path, monkeypatch):
    scripted_keys(monkeypatch, {})
    grid_takes_recordings(monkeypatch)
    rc, _, err = cli(
        "calibrate",
        "--source",
        shared / VIDEO,
        "--screen-px",
        1280,
        720,
        "--points",
        25,
        "--out",
        tmp_path / "s",
        "--profile",
        tmp_path / "p.json",
    )
    assert rc == 2 and "calibrate.mp4 ended before the last target" in err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_7_key_shows_one_glance_dot_full_screen_and_comes_back(
    xenv, painted, shared, corners4_profile, tmp_path, monkeypatch
):
    """The verify key with a profile: the calibration grid's dot, alone, at the first glance
    point (the centre), in the full-screen window; the live view afterwards; the status line
    and the summary name the glance's outcome."""
    grabbed: dict = {}
    real = cv2.waitKey
    count = {"n": 0}

    def wait(ms: int = 0) -> int:
        real(1)
        if ms == 0 or ms >= 100:
            return ord(" ")
        count["n"] += 1
        if count["n"] == 3:
            return ord("7")
        if count["n"] == 8 and "img" not in grabbed:
            grabbed["img"] = grab_window(
                xenv, "gazeloop", tmp_path / "glance.xwd", real, expect=_grid_dot_shown
            )
            grabbed["rect"] = cv2.getWindowImageRect("gazeloop")
        return -1

    monkeypatch.setattr(cv2, "waitKey", wait)
    shown: list = []
    real_imshow = cv2.imshow
    monkeypatch.setattr(
        cv2, "imshow", lambda name, img: (shown.append(img.shape), real_imshow(name, img))
    )
    rc, out, err = cli(
        "run",
        "--source",
        shared / VIDEO,
        "--profile",
        corners4_profile,
        "--screen-px",
        1280,
        720,
        "--frames",
        110,
        "--no-watch-models",
    )
    assert rc == 0, err
    # Frames 1-3 the live view, then the dot's pictures at the screen's size, then the live
    # view again once the glance was decided (2.5 s of video at the latest).
    assert shown[0] == (LIVE_H, 1280, 3)
    assert shown[3] == (720, 1280, 3)
    assert shown[-1] == (LIVE_H, 1280, 3)
    assert "glance (key)" in out  # its outcome, label or not, is said
    win = grabbed.get("img")
    if win is None:
        pytest.skip("xwd is not installed: the dot was shown but not grabbed")
    not_black(win, "gazeloop", painted)
    assert win.shape == (720, 1280, 3)
    assert mask(win, BACKGROUND, 5).mean() > 0.95
    ys, xs = np.nonzero(mask(win, DOT, 5))
    # One dot, at the centre of the screen.
    assert len(xs) > 20 and xs.max() - xs.min() < 0.1 * 1280
    assert abs(xs.mean() - 640) < 20 and abs(ys.mean() - 360) < 20


@pytest.mark.slow
def test_space_records_samples_as_a_session_on_the_sources_clock(
    xenv, shared, corners4_profile, tmp_path, monkeypatch
):
    """The space key wrote bare pairs into users/<u>/samples: no session.json (so no screen
    to read their pixels on) and the wall clock's time, not the frame's."""
    scripted_keys(monkeypatch, {3: " ", 6: " "})
    rc, out, err = cli(
        "run", "--source", shared / VIDEO, "--profile", corners4_profile, "--frames", 8,
        "--oracle", "none", "--no-watch-models",
    )  # fmt: skip
    assert rc == 0, err
    (folder,) = (tmp_path / "home/users/default/sessions").glob("samples-*")
    assert out.count(f"sample recorded in {folder}") == 2
    s = read_session(folder)
    assert s.manifest.screen_px == Profile.load(corners4_profile).screen.px
    assert s.manifest.source == "gazeloop run (space)" and s.manifest.mirrored is False
    assert [it.record.model_extra["label_source"] for it in s.items] == ["cursor (space key)"] * 2
    # Frames 3 and 6 of a 20 fps video: 150 ms apart on its own clock, whatever the run took.
    assert s.items[1].t_ms - s.items[0].t_ms == 150


def test_a_display_with_no_server_is_one_line_not_a_qt_abort(monkeypatch, tmp_path):
    """DISPLAY=:99 with no server let Qt abort the process (SIGABRT, exit 134)."""
    import sys

    from gazeloop.tools.errors import UserError
    from gazeloop.tools.ui.window import require_display

    if not sys.platform.startswith("linux"):
        pytest.skip("X displays are Linux's")
    monkeypatch.setenv("DISPLAY", ":987")
    with pytest.raises(UserError, match=r"DISPLAY=:987, but no X server listens there"):
        require_display("the grid")
    # A name that is none, and what a broken `ssh -X` leaves: Qt aborted on both.
    monkeypatch.setenv("DISPLAY", "bogus")
    with pytest.raises(UserError, match=r"DISPLAY=bogus is not a display name"):
        require_display("the grid")
    with socket.socket() as closed, socket.create_server(("127.0.0.1", 0)) as listening:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port, answers = closed.getsockname()[1], listening.getsockname()[1]
        if min(port, answers) < 6000:
            pytest.skip("a free port below X's range")
        monkeypatch.setenv("DISPLAY", f"127.0.0.1:{port - 6000}.0")
        with pytest.raises(UserError, match=rf"nothing answers at 127.0.0.1:{port} "):
            require_display("the grid")
        monkeypatch.setenv("DISPLAY", f"127.0.0.1:{answers - 6000}")  # a server answers
        require_display("the grid")


def test_a_camera_that_stops_keeps_the_window_drawing_and_q_still_quits(xenv, monkeypatch):
    """A stuck driver (or a reconnect's back-off) left the window on its last frame, not
    drawing and deaf to q, for up to the stall timeout; now it says why and q quits."""
    import threading

    from gazeloop.fastpath import sources
    from gazeloop.tools.commands import run as run_cmd

    unstick = threading.Event()

    class StuckAfterThree:  # cv2.VideoCapture-shaped: 3 frames, then grab() hangs
        grabbed = 0

        def isOpened(self):  # noqa: N802 - cv2's name
            return True

        def set(self, prop, value):
            return True

        def get(self, prop):
            return 0.0

        def grab(self):
            if self.grabbed >= 3:
                unstick.wait(10)
                return False
            self.grabbed += 1
            return True

        def retrieve(self):
            return True, np.full((480, 640, 3), 90, np.uint8)

        def release(self):
            pass

    monkeypatch.setattr(sources.CameraSource, "_open_cv2", lambda self: StuckAfterThree())
    said: list[np.ndarray] = []

    def waiting_view(last, message):
        img = run_cmd.render_waiting.__wrapped__(last, message)
        said.append(message)
        return img

    waiting_view.__wrapped__ = run_cmd.render_waiting
    monkeypatch.setattr(run_cmd, "render_waiting", waiting_view)
    real_wait = cv2.waitKey

    def keys(ms):
        if len(said) < 2:
            return real_wait(ms)
        unstick.set()  # the driver may return now: closing the camera need not wait for it
        return ord("q")

    monkeypatch.setattr(cv2, "waitKey", keys)
    try:
        rc, out, err = cli("run", "--source", "0", "--oracle", "none", "--no-watch-models")
    finally:
        unstick.set()
    assert rc == 0, err  # the person stopped it: no failure
    assert "gazeloop run: " in out and "failed" not in out
    assert len(said) == 2 and "no frame for" in said[0] and "reconnecting (q quits)" in said[0]
