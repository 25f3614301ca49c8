"""Shared fixtures: the real data and models in ../shared, read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import SHARED


def need_shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (tests read real data from it)")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def _offline_models(tmp_path_factory):
    """No network in tests; models from ../shared; built models into a throwaway cache."""
    cache = tmp_path_factory.mktemp("model-cache")
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
