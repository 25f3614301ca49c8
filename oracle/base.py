"""The one small interface every oracle implements, and the check every answer must pass.

An oracle is slow and may be wrong: it takes a `Snapshot` (one frame, stamped with the
frame's own time) and returns an `OracleLabel` about that snapshot, in seconds, on the one
worker thread that owns it (`oracle.worker.OracleWorker`). Nothing it returns is trusted
until `check_label` has passed it: a label for another snapshot, a NaN or a point far off the
screen would otherwise walk straight into the calibration loop.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol, runtime_checkable

from gazeloop.calibration.labels import LineObservation, OracleLabel, PointObservation, Snapshot

# A real gaze point may sit a little off the visible area (the user looks at the bezel, a
# model extrapolates); half a screen beyond any edge is no longer an answer about this screen.
POINT_RANGE = (-0.5, 1.5)
# A line's origin is the camera's in-plane position, which for a bezel or external camera
# lies outside [0,1]², but not several screens away.
LINE_ORIGIN_RANGE = (-2.0, 3.0)


class OracleError(RuntimeError):
    """An oracle could not label this snapshot (no target, no model, nothing recorded at t).
    The worker counts it as `failed`; it never reaches the loop."""


class OracleCancelled(OracleError):
    """Raised by a cooperative oracle that saw its `cancel` event set between steps."""


class BadLabel(OracleError):
    """An oracle returned something that is not a usable answer about this snapshot."""


@runtime_checkable
class Oracle(Protocol):
    """What the worker needs from a backend.

    `label` may take seconds and may raise (`OracleError` for the expected failures). It runs
    on one thread only, so backends need not be thread-safe; it should check `cancel`
    between expensive steps (encode, detect, …) and raise `OracleCancelled` when it is set,
    because a timed-out or cancelled call keeps the worker busy until it returns.
    `version` identifies model and settings, so stored labels say what produced them.
    """

    name: str
    version: str

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel: ...

    def close(self) -> None: ...


def _finite(values: tuple[float, ...] | list[float]) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _within(values: tuple[float, ...], lo: float, hi: float) -> bool:
    return all(lo <= float(v) <= hi for v in values)


def _pair(v: object) -> tuple[float, ...] | None:
    if not isinstance(v, tuple | list) or len(v) != 2:
        return None
    return tuple(v)


def check_label(label: object, snap: Snapshot) -> OracleLabel:
    """`label` if it is a sane answer about `snap`, else `BadLabel` with the reason.

    Pydantic validates labels built normally, but `model_construct`, `model_copy(update=…)`
    and attribute assignment skip validation, and a backend may return anything at all; so
    everything the loop relies on is checked again here.
    """
    if not isinstance(label, OracleLabel):
        raise BadLabel(f"not an OracleLabel: {type(label).__name__}")
    if label.snapshot_id != snap.snapshot_id:
        raise BadLabel(f"label is for snapshot {label.snapshot_id!r}, not {snap.snapshot_id!r}")
    if label.t_ns != snap.t_ns:
        raise BadLabel(f"label t_ns {label.t_ns} is not the snapshot's {snap.t_ns}")
    if not isinstance(label.oracle, str) or not label.oracle:
        raise BadLabel("label does not name its oracle")
    c = label.confidence
    if not _finite([c]) or not 0.0 <= float(c) <= 1.0:
        raise BadLabel(f"confidence {c!r} is not in [0, 1]")
    if label.latency_s is not None and (not _finite([label.latency_s]) or label.latency_s < 0):
        raise BadLabel(f"latency_s {label.latency_s!r} is not a finite duration")

    obs = label.observation
    if obs is None:
        return label
    if isinstance(obs, PointObservation):
        xy = _pair(obs.xy)
        if xy is None or not _finite(xy):
            raise BadLabel(f"point {obs.xy!r} is not two finite numbers")
        if not _within(xy, *POINT_RANGE):
            raise BadLabel(f"point {xy} is outside {POINT_RANGE} (normalised screen units)")
    elif isinstance(obs, LineObservation):
        origin, direction = _pair(obs.origin), _pair(obs.direction)
        if origin is None or not _finite(origin):
            raise BadLabel(f"line origin {obs.origin!r} is not two finite numbers")
        if not _within(origin, *LINE_ORIGIN_RANGE):
            raise BadLabel(f"line origin {origin} is outside {LINE_ORIGIN_RANGE}")
        if direction is None or not _finite(direction):
            raise BadLabel(f"line direction {obs.direction!r} is not two finite numbers")
        # The model normalises direction; an unvalidated one may be zero or any length.
        if abs(math.hypot(*direction) - 1.0) > 1e-6:
            raise BadLabel(f"line direction {direction} is not a unit vector")
    else:
        raise BadLabel(f"unknown observation type {type(obs).__name__}")
    return label
