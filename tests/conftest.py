"""Shared fixtures: the real data and models in ../shared, read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import SHARED

# One BLAS thread, set before any test module imports numpy. With two, on a loaded 2-core
# machine one OpenBLAS thread waits for a core while the other waits for it: measured here,
# the rbf leave-one-target-out tests took 72-90 s instead of 1-3 s. A caller may still ask
# for more.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def need_shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (tests read real data from it)")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def _offline_models(tmp_path_factory):
    """No network in tests; models from ../shared; built models into a throwaway cache."""
    cache = tmp_path_factory.mktemp("model-cache")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One feature cache for every worker of this run: entries are keyed by content and
        # written atomically, and without it each worker ran the networks over the same
        # shared sessions again (the evit sittings alone: 20 s a worker). Models stay per
        # worker: tests build, damage and rebuild them in place.
        features = tmp_path_factory.getbasetemp().parent / "features"
        features.mkdir(exist_ok=True)
        (cache / "features").symlink_to(features, target_is_directory=True)
    old = {k: os.environ.get(k) for k in ("GAZELOOP_OFFLINE", "GAZELOOP_MODELS", "GAZELOOP_CACHE")}
    os.environ["GAZELOOP_OFFLINE"] = "1"
    os.environ["GAZELOOP_CACHE"] = str(cache)
    if SHARED.is_dir():
        os.environ["GAZELOOP_MODELS"] = str(SHARED / "models")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def shared() -> Path:
    return need_shared()


@pytest.fixture(scope="session")
def gaze_onnx(shared) -> Path:
    from gazeloop.fastpath import models

    return models.resolve_gaze_onnx()


@pytest.fixture(scope="session")
def face_task(shared) -> Path:
    from gazeloop.fastpath import models

    return models.resolve(models.FACE_LANDMARKER)


@pytest.fixture(scope="session")
def c4_profile(shared, tmp_path_factory) -> Path:
    """A profile fitted on the 4-corner recording (an oracle corrects a calibrated cursor)."""
    from tests.cli import cli

    corners4 = shared / "data" / "video-corners4"
    if not (corners4 / "calibrate.mp4").is_file():
        pytest.skip(f"{corners4 / 'calibrate.mp4'} is missing")
    d = tmp_path_factory.mktemp("c4")
    assert cli("import", "corners4", corners4, d / "session")[0] == 0
    assert cli("profile", "fit", d / "session", "--out", d / "profile.json")[0] == 0
    return d / "profile.json"


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved during the test, in order, the file still written: what is drawn
    (titles, points, axis limits) is the behaviour, and a PNG's pixels hide it. Closed at
    the end (the code under test may have closed them already)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure
    import matplotlib.pyplot as plt

    saved = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    yield saved
    for fig in saved:
        plt.close(fig)


# ---- markers (registered in pyproject.toml) --------------------------------------------------
@pytest.fixture(scope="session")
def xdisplay():
    """An Xvfb display for the tests that draw real windows (one for the whole run)."""
    from tests.xvfb import xvfb

    with xvfb() as display:
        yield display


@pytest.fixture
def xenv(xdisplay, monkeypatch, tmp_path):
    """The display in DISPLAY and a user home of the test's own."""
    monkeypatch.setenv("DISPLAY", xdisplay)
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    return xdisplay


# needs_shared, needs_broker and needs_display follow from what a test uses, so a new test
# gets them without anyone remembering; `slow` is put on by hand, where the time is spent.

SHARED_FIXTURES = {"shared", "gaze_onnx", "face_task"}
BROKER_FIXTURES = {"make_broker"}  # tests/tools/runtime/test_mqtt.py: starts mosquitto
DISPLAY_FIXTURES = {"xdisplay"}  # above: starts Xvfb


def _reads_shared(module) -> bool:
    """The module took SHARED from tests.paths and builds its paths from it."""
    return module is not None and getattr(module, "SHARED", None) is SHARED


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))  # with every fixture's own fixtures
        if used & SHARED_FIXTURES or _reads_shared(getattr(item, "module", None)):
            item.add_marker(pytest.mark.needs_shared)
        if used & BROKER_FIXTURES:
            item.add_marker(pytest.mark.needs_broker)
        if used & DISPLAY_FIXTURES:
            item.add_marker(pytest.mark.needs_display)
