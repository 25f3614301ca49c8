"""gazeloop: a webcam eye tracker that stays calibrated on its own.

The front door: the types a program needs to track gaze from Python. Each is imported on
first use, so `import gazeloop` stays cheap (MediaPipe and onnxruntime load only with the
fast path).

    import gazeloop
    fp = gazeloop.FastPath(gazeloop.FastPathConfig())
    for frame in gazeloop.open_source("0"):
        sample = fp.process(frame)

The rooms behind it: `gazeloop.fastpath` (frame → gaze sample), `gazeloop.oracle` (slow,
trusted labels), `gazeloop.calibration` (profiles, mappings, the drift loop, storage),
`gazeloop.trainer` (learning new models) and `gazeloop.tools` (the running system and the
`gazeloop` command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "FastPath": "gazeloop.fastpath.pipeline",
    "FastPathConfig": "gazeloop.fastpath.pipeline",
    "GazeSample": "gazeloop.fastpath.types",
    "Filter": "gazeloop.fastpath.filters",
    "OneEuroFilter": "gazeloop.fastpath.filters",
    "KalmanFilter": "gazeloop.fastpath.filters",
    "Frame": "gazeloop.fastpath.types",
    "open_source": "gazeloop.fastpath.sources",
    "History": "gazeloop.calibration.drift.history",
    "DriftLoop": "gazeloop.calibration.drift.loop",
    "LoopConfig": "gazeloop.calibration.drift.loop",
    "OracleWorker": "gazeloop.oracle.worker",
    "Profile": "gazeloop.calibration.profile",
    "ProfileMapper": "gazeloop.calibration.profile",
    "ScreenGeometry": "gazeloop.calibration.geometry",
    "read_session": "gazeloop.calibration.store.session",
    "collect_session": "gazeloop.fastpath.collect",
    "LabelledFrames": "gazeloop.calibration.frames",
}

__all__ = [
    "DriftLoop",
    "FastPath",
    "FastPathConfig",
    "Filter",
    "Frame",
    "GazeSample",
    "History",
    "KalmanFilter",
    "LabelledFrames",
    "LoopConfig",
    "OneEuroFilter",
    "OracleWorker",
    "Profile",
    "ProfileMapper",
    "ScreenGeometry",
    "collect_session",
    "open_source",
    "read_session",
]

if TYPE_CHECKING:
    from gazeloop.calibration.drift.history import History
    from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig
    from gazeloop.calibration.frames import LabelledFrames
    from gazeloop.calibration.geometry import ScreenGeometry
    from gazeloop.calibration.profile import Profile, ProfileMapper
    from gazeloop.calibration.store.session import read_session
    from gazeloop.fastpath.collect import collect_session
    from gazeloop.fastpath.filters import Filter, KalmanFilter, OneEuroFilter
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.fastpath.sources import open_source
    from gazeloop.fastpath.types import Frame, GazeSample
    from gazeloop.oracle.worker import OracleWorker


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'gazeloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
