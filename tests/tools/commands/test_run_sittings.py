"""`gazeloop run` in a new sitting starts with the profile of all the user's calibration
sessions on that device and screen pooled (`tools.runtime.sittings_profile`); in the sitting
of the last calibration it keeps that calibration's own profile."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.calibration.profile import Profile
from gazeloop.fastpath import feature_cache
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.tools.cli import main
from gazeloop.tools.runtime.live import from_earlier_sitting
from gazeloop.tools.runtime.refit import refit_profile


def _calibrate(shared, home, stamp: str) -> str:
    out = home / "users/u/sessions" / f"calibration-{stamp}"
    argv = ["calibrate", "--headless", "--source", str(shared / "data/video-corners4")]
    assert main([*argv, "--user", "u", "--device", "d", "--out", str(out)]) == 0
    return str(out.resolve())


def _another(session: str, stamp: str, **manifest) -> str:
    """A later calibration session: a copy of `session` (its features come from the cache)
    under a later time stamp, its manifest changed as given (another device or screen)."""
    out = Path(session).with_name(f"calibration-{stamp}")
    shutil.copytree(session, out)
    doc = json.loads((out / "session.json").read_text())
    (out / "session.json").write_text(json.dumps(doc | manifest))
    return str(out.resolve())


def _age(path, hours: float) -> None:
    doc = json.loads(path.read_text())
    doc["created"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="seconds")
    path.write_text(json.dumps(doc))


def _run(shared, capsys) -> str:
    video = shared / "data/video-corners4/calibrate.mp4"
    argv = ["run", "--headless", "--source", str(video), "--frames", "5", "--oracle", "none"]
    assert main([*argv, "--user", "u", "--device", "d"]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_a_new_sitting_starts_with_every_sitting_on_the_screen_pooled(
    shared, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    first = _calibrate(shared, tmp_path, "20261201-090000")
    _another(first, "20261201-100000", screen_px=[1280, 720])
    _another(first, "20261201-110000", device="other")
    second = _another(first, "20261202-090000")
    capsys.readouterr()
    own = tmp_path / "users/u/profiles/d.json"
    screen = json.loads((Path(first) / "session.json").read_text())["screen_px"]
    pooled = tmp_path / f"users/u/profiles/d.sittings-{screen[0]}x{screen[1]}.json"

    out = _run(shared, capsys)  # the same sitting as the last calibration: its own profile
    assert "pooled" not in out and not pooled.exists()

    _age(own, hours=2)
    out = _run(shared, capsys)
    assert "pooling 2 calibration sessions of u/d" in out
    assert f"a new sitting, so the 2 sittings pooled: {pooled}" in out
    prof = Profile.load(pooled)
    # the other screen's and the other device's sessions are not this screen's sittings
    assert prof.calibration_sessions == [first, second]
    assert prof.fit.targets == 4 and prof.user == "u" and prof.device == "d"
    assert from_earlier_sitting(prof)  # the loop starts as in a new sitting

    out = _run(shared, capsys)  # nothing new to pool: the saved one, as it is
    assert "pooling" not in out and "2 sittings pooled" in out
    assert Profile.load(pooled) == prof
    # Its frames were read as they are now; read otherwise (a still gap set then, not now),
    # the pool is gazeloop's own file: pooled again with these settings, not noted.
    now = FastPathConfig().feature_settings()
    assert prof.read_with == Profile.load(own).read_with == now
    pooled.write_text(
        prof.model_copy(update={"read_with": {**now, "still_gap_s": 2.0}}).model_dump_json()
    )
    out = _run(shared, capsys)
    assert "pooling 2 calibration sessions of u/d" in out and "note:" not in out
    assert Profile.load(pooled).read_with == now

    third = _another(first, "20261203-090000")
    _age(own, hours=2)
    capsys.readouterr()
    out = _run(shared, capsys)
    assert "pooling 3 calibration sessions" in out and "3 sittings pooled" in out
    assert Profile.load(pooled).calibration_sessions == [first, second, third]

    # A session with no usable frame (the camera was covered) is left out once, and not
    # pooled again on every run after: nothing about it changed.
    blind = Path(_another(first, "20261204-090000"))
    for jpg in blind.glob("*.jpg"):
        shape = cv2.imread(str(jpg)).shape
        cv2.imwrite(str(jpg), np.zeros(shape, np.uint8))
    _age(own, hours=2)
    capsys.readouterr()
    out = _run(shared, capsys)
    assert "pooling 4 calibration sessions" in out and "3 sittings pooled" in out
    assert Profile.load(pooled).calibration_sessions == [first, second, third]
    assert Profile.load(pooled).unusable_sessions == [str(blind.resolve())]
    out = _run(shared, capsys)
    assert "pooling" not in out and "3 sittings pooled" in out


@pytest.mark.slow
def test_one_calibration_session_is_nothing_to_pool(shared, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    _calibrate(shared, tmp_path, "20261201-090000")
    _age(tmp_path / "users/u/profiles/d.json", hours=2)
    capsys.readouterr()
    out = _run(shared, capsys)
    assert "pooled" not in out and "d.json" in out
    assert not list((tmp_path / "users/u/profiles").glob("d.sittings*"))


@pytest.mark.slow
def test_two_sessions_of_which_one_is_unusable_pool_nothing_and_say_so(
    shared, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    first = _calibrate(shared, tmp_path, "20261201-090000")
    broken = Path(_another(first, "20261202-090000"))
    for jpg in broken.glob("*.jpg"):  # no face anywhere: no usable frame
        cv2.imwrite(str(jpg), np.zeros((48, 64, 3), np.uint8))
    _age(tmp_path / "users/u/profiles/d.json", hours=2)
    capsys.readouterr()
    out = _run(shared, capsys)
    assert "pooling 2 calibration sessions" in out
    assert "fewer than two of them are usable; nothing pooled" in out
    assert not list((tmp_path / "users/u/profiles").glob("d.sittings*"))


@pytest.mark.slow
def test_a_calibration_with_earlier_sittings_saves_what_its_own_points_favour(
    shared, tmp_path, monkeypatch, capsys
):
    """The second calibration of a user on a screen compares this sitting alone with it
    pooled with the first (`calibration.sittings.choose_with_history`), saves the one its
    points favour, says so, and keeps the comparison in the profile and the report."""
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    # Its own feature cache: a miss is asserted below, which no other test may make a hit.
    monkeypatch.setattr(feature_cache, "cache_dir", lambda: tmp_path / "features")
    sessions = tmp_path / "users/u/sessions"
    argv = ["calibrate", "--headless", "--user", "u", "--device", "d"]
    first = sessions / "calibration-20261201-090000"
    assert main([*argv, "--source", str(shared / "data/evit/p1_s01"), "--out", str(first)]) == 0
    own = tmp_path / "users/u/profiles/d.json"
    assert Profile.load(own).fit.history is None  # nothing earlier to pool with
    # An earlier session whose pictures are damaged: left out, and the calibration goes on.
    broken = Path(_another(str(first), "20261201-120000"))
    for jpg in broken.glob("*.jpg"):
        jpg.write_bytes(b"not a jpeg")
    second = sessions / "calibration-20261202-090000"
    capsys.readouterr()
    assert main([*argv, "--source", str(shared / "data/evit/p1_s02"), "--out", str(second)]) == 0
    said = capsys.readouterr()
    out = said.out
    prof = Profile.load(own)
    h = prof.fit.history
    assert h is not None and h.earlier_sittings == 1
    assert prof.read_with == FastPathConfig().feature_settings()  # the pool's fit records it
    assert "calibration: weighing this sitting against 2 earlier ones on this screen" in said.err
    # the first sitting's frames were never read for features: said, and cached after
    assert "reading earlier sitting calibration-20261201-090000 (1 of 2)" in said.err
    # p1's sittings agree: pooled about 69 px against 98 alone on this sitting's points
    assert h.chosen == "pooled" and h.pooled_px < h.alone_px - 10
    assert f"with 1 earlier sitting on this screen: pooled {h.pooled_px:.0f} px" in out
    report = json.loads((second / "report/calibration.json").read_text())
    assert report["history"] == h.model_dump(mode="json")
    assert prof.calibration_sessions == [str(first.resolve()), str(second.resolve())]
    assert prof.fit.chosen.label == h.pooled_candidate
    assert "this sitting alone, leave-one-target-out error" in out
    assert prof.calibration_session == str(second.resolve())
    assert main(["profile", "show", str(own)]) == 0
    assert "with 1 earlier sitting on this screen: pooled" in capsys.readouterr().out
    assert not from_earlier_sitting(prof)  # the loop starts as after a calibration
    # Refitted for another read of the network, it stays the same sitting's pooled profile.
    fp = FastPath(FastPathConfig(mirror_average=False, gaze_frame="camera"))
    try:
        refit = refit_profile(prof, fp.cfg, None)
    finally:
        fp.close()
    assert refit.gaze_read == "single" and refit.mapping != prof.mapping
    assert refit.fit.history == h and refit.calibration_sessions == prof.calibration_sessions
    assert not from_earlier_sitting(refit)
    # Refitted later it keeps its sittings' time (it was "this sitting" for a week), and a
    # session deleted since leaves the rest to refit on (run could not start).
    week_old = prof.model_copy(update={"created": "2026-11-29T09:00:00+00:00"})
    shutil.rmtree(first)
    fp = FastPath(FastPathConfig(mirror_average=False, gaze_frame="camera"))
    try:
        later = refit_profile(week_old, fp.cfg, None)
    finally:
        fp.close()
    assert later.created == week_old.created and from_earlier_sitting(later)
    assert later.calibration_session == str(second.resolve())
    # A fixed mapping asks for no selection: nothing is pooled.
    third = sessions / "calibration-20261203-090000"
    src = ["--source", str(shared / "data/evit/p1_s03"), "--out", str(third)]
    capsys.readouterr()
    assert main([*argv, *src, "--mapping", "ridge", "--json"]) == 0
    assert Profile.load(own).fit.history is None
    assert "history" not in json.loads(capsys.readouterr().out)  # stdout: the report alone


def test_the_c_key_saves_over_the_given_profile_only_when_it_is_this_runs(tmp_path):
    """A profile of this user and device is recalibrated in place; another's, given to try
    it, is never overwritten: the new fit goes to this user's and device's own file."""
    from types import SimpleNamespace

    from gazeloop.calibration.profile import profile_path
    from gazeloop.tools.commands.run import calibration_out

    args = SimpleNamespace(user="ann", device="mac")
    own = profile_path("ann", "mac")
    given = tmp_path / "p.json"
    mine, theirs = (SimpleNamespace(user="ann", device=d) for d in ("mac", "desk"))
    assert calibration_out(None, None, args) == own
    assert calibration_out(given, mine, args) == given
    assert calibration_out(given, theirs, args) == own
    assert calibration_out(given, None, args) == given  # a --profile not yet in use
