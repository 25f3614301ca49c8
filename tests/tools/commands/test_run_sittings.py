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
from gazeloop.tools.cli import main
from gazeloop.tools.runtime.live import from_earlier_sitting


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
    pooled = tmp_path / "users/u/profiles/d.sittings.json"

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
    assert not (tmp_path / "users/u/profiles/d.sittings.json").exists()
