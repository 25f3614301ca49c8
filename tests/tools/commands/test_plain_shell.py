"""The README's Quick start in a plain shell (issue 16, item 6): after `make setup` ran
`gazeloop models build` with GAZELOOP_MODELS pointing at the shared models, a new shell with
nothing exported finds every model file in the user cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import ROOT


def _gazeloop(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gazeloop.tools.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.slow
def test_models_are_found_without_exporting_anything_after_setup(shared, tmp_path):
    plain = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GAZELOOP_") and k not in ("XDG_CACHE_HOME", "HOME")
    }
    plain |= {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    plain["GAZELOOP_OFFLINE"] = "1"  # no download can hide a model that was not found
    before = _gazeloop(["models", "check"], plain)
    assert before.returncode != 0 and "GAZELOOP_MODELS" in before.stdout + before.stderr

    setup = _gazeloop(["models", "build"], plain | {"GAZELOOP_MODELS": str(shared / "models")})
    assert setup.returncode == 0, setup.stderr
    cache = tmp_path / "cache" / "gazeloop" / "models"
    assert (cache / "face_landmarker.task").read_bytes() == (
        shared / "models" / "face_landmarker.task"
    ).read_bytes()

    check = _gazeloop(["models", "check"], plain)
    assert check.returncode == 0, check.stdout + check.stderr
    assert str(shared) not in check.stdout  # every file from the cache, nothing from ../shared
    track = _gazeloop(["track", str(shared / "data/sessions/grid9"), "--frames", "2"], plain)
    assert track.returncode == 0, track.stderr
    assert track.stderr == ""
