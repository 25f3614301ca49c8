"""Oracles that need no model: known targets, recorded ground truth, and a simulation.

- `TargetOracle`: a calibration target or a click; the user looks where the target is.
- `ReplayOracle`: the labels of a recorded session, i.e. ground truth, for evaluating the
  loop on recordings. Never a measurement of anything: its `version` says so.
- `SimulatedOracle`: ground truth plus noise, bias and outliers, for benchmarks of the loop's
  gating and step bounds against an oracle of known quality.

All three answer with a full point (`PointObservation`) in normalised screen units.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import OracleLabel, PointObservation, Snapshot
from gazeloop.calibration.store.session import Session, read_session
from gazeloop.oracle.base import OracleCancelled, OracleError

_MS = 1_000_000


def _point(snap: Snapshot, name: str, version: str, xy: Sequence[float], **details):
    return OracleLabel(
        t_ns=snap.t_ns,
        snapshot_id=snap.snapshot_id,
        oracle=name,
        oracle_version=version,
        observation=PointObservation(xy=(float(xy[0]), float(xy[1]))),
        confidence=1.0,
        details=details,
    )


class TargetOracle:
    """The snapshot's `target_xy` (a calibration target being shown, or where the user just
    clicked) is where the user looks. Snapshots without one are an `OracleError`: guessing
    would feed the loop a label about nothing."""

    name = "target"
    version = "1"

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel:
        if snap.target_xy is None:
            raise OracleError(f"snapshot {snap.snapshot_id} has no target_xy to label with")
        x, y = (float(v) for v in snap.target_xy)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise OracleError(f"snapshot {snap.snapshot_id} has a non-finite target {(x, y)}")
        return _point(snap, self.name, self.version, (x, y), source="target_xy")

    def close(self) -> None:
        pass


class ReplayOracle:
    """Replays the ground-truth labels of a recorded session (NOT a gaze estimate).

    A snapshot at `t_ns` gets the label of the record nearest `t_ns` (record times are
    `t_ms × 1e6`, as `fastpath.sources.SessionSource` stamps its frames), if one lies within
    `tolerance_ms`; otherwise `OracleError`. Pixels are normalised through `screen`, which
    must be the screen the session was recorded on (a manifest's size must agree).
    """

    name = "replay"

    def __init__(
        self,
        session: str | os.PathLike[str] | Session,
        screen: ScreenGeometry,
        *,
        tolerance_ms: float = 50.0,
    ) -> None:
        if not (math.isfinite(tolerance_ms) and tolerance_ms >= 0):
            raise ValueError(f"tolerance_ms must be finite and >= 0, got {tolerance_ms}")
        if not isinstance(session, Session):
            session = read_session(session, screen_px=screen.px)
        if session.screen_px is not None and tuple(session.screen_px) != tuple(screen.px):
            # Normalising pixels of one screen by another's size would shift every label.
            raise ValueError(
                f"session {session.folder} was recorded on a {session.screen_px[0]}x"
                f"{session.screen_px[1]} screen, not the given {screen.px[0]}x{screen.px[1]}"
            )
        self.session = session
        self.screen = screen
        self.tolerance_ns = round(tolerance_ms * _MS)
        self.version = f"ground-truth replay of {Path(session.folder).name}"
        self._t = [it.t_ms * _MS for it in session.items]  # sorted by read_session
        self._xy = screen.to_norm([it.label_px for it in session.items])

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel:
        i = bisect.bisect_left(self._t, snap.t_ns)
        near = [j for j in (i - 1, i) if 0 <= j < len(self._t)]
        j = min(near, key=lambda k: abs(self._t[k] - snap.t_ns))
        dt = abs(self._t[j] - snap.t_ns)
        if dt > self.tolerance_ns:
            raise OracleError(
                f"no record of {self.session.folder.name} within {self.tolerance_ns / _MS:g} ms "
                f"of t_ns {snap.t_ns} (nearest is {dt / _MS:g} ms away)"
            )
        item = self.session.items[j]
        return _point(snap, self.name, self.version, self._xy[j], record=item.name)

    def close(self) -> None:
        pass


class SimulatedOracle:
    """A simulated oracle of known quality, for benchmarks (never a measurement).

    `truth(t_ns)` gives where the user really looks (normalised; None: unknown, an
    `OracleError`). The answer is truth + `bias_px` + Gaussian noise of `noise_px` per axis;
    with probability `outlier_rate` it is instead a uniform point on the screen. The draws
    depend only on (`seed`, snapshot t_ns), so a snapshot gets the same answer whichever
    others the worker skipped. `delay_s` imitates a slow model and honours `cancel`.
    """

    name = "simulated"

    def __init__(
        self,
        truth: Callable[[int], Sequence[float] | np.ndarray | None],
        noise_px: float,
        bias_px: tuple[float, float] = (0.0, 0.0),
        outlier_rate: float = 0.0,
        *,
        screen: ScreenGeometry,
        seed: int = 0,
        delay_s: float = 0.0,
    ) -> None:
        if not (math.isfinite(noise_px) and noise_px >= 0):
            raise ValueError(f"noise_px must be finite and >= 0, got {noise_px}")
        if not all(math.isfinite(b) for b in bias_px) or len(bias_px) != 2:
            raise ValueError(f"bias_px must be two finite numbers, got {bias_px}")
        if not 0.0 <= outlier_rate <= 1.0:
            raise ValueError(f"outlier_rate must be in [0, 1], got {outlier_rate}")
        if not (math.isfinite(delay_s) and delay_s >= 0):
            raise ValueError(f"delay_s must be finite and >= 0, got {delay_s}")
        self.truth = truth
        self.noise_px = float(noise_px)
        self.bias_px = (float(bias_px[0]), float(bias_px[1]))
        self.outlier_rate = float(outlier_rate)
        self.screen = screen
        self.seed = int(seed)
        self.delay_s = float(delay_s)
        self.version = (
            f"simulated noise={self.noise_px:g}px bias=({self.bias_px[0]:g},"
            f"{self.bias_px[1]:g})px outliers={self.outlier_rate:g} seed={self.seed}"
        )

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel:
        if self.delay_s and cancel.wait(self.delay_s):
            raise OracleCancelled(f"cancelled while simulating {self.delay_s:g} s of work")
        truth = self.truth(snap.t_ns)
        if truth is None:
            raise OracleError(f"no simulated truth at t_ns {snap.t_ns}")
        true_xy = np.asarray(truth, dtype=np.float64).reshape(2)
        # t_ns masked to 64 bits: SeedSequence takes non-negative integers only.
        rng = np.random.default_rng([self.seed & (2**63 - 1), snap.t_ns & (2**64 - 1)])
        outlier = bool(rng.random() < self.outlier_rate)
        if outlier:
            xy = rng.random(2)
        else:
            offset_px = np.array(self.bias_px) + rng.normal(0.0, self.noise_px, 2)
            xy = true_xy + offset_px / self.screen.size_px
        return _point(
            snap,
            self.name,
            self.version,
            xy,
            simulated=True,
            outlier=outlier,
            truth_xy=[float(true_xy[0]), float(true_xy[1])],
        )

    def close(self) -> None:
        pass
