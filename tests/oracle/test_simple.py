from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import PointObservation, Snapshot
from gazeloop.calibration.store.session import SessionManifest, read_session
from gazeloop.calibration.store.writer import write_manifest, write_record
from gazeloop.oracle.base import Oracle, OracleCancelled, OracleError, check_label
from gazeloop.oracle.simple import ReplayOracle, SimulatedOracle, TargetOracle
from gazeloop.oracle.worker import OracleWorker
from tests.paths import SHARED

GRID9 = SHARED / "data" / "sessions" / "grid9"
MS = 1_000_000
_IMAGE = np.zeros((4, 4, 3), np.uint8)
SCREEN = ScreenGeometry(px=(1920, 1080))


def snap(t_ns: int, sid: str = "s", **kw) -> Snapshot:
    return Snapshot(t_ns=t_ns, image=_IMAGE, snapshot_id=sid, **kw)


def point(label) -> tuple[float, float]:
    assert isinstance(label.observation, PointObservation)
    return label.observation.xy


def never() -> threading.Event:
    return threading.Event()


def grid9() -> Path:
    if not GRID9.is_dir():
        pytest.skip(f"shared session {GRID9} is absent (the replay test reads real labels)")
    return GRID9


# ---- TargetOracle ----


def test_target_oracle_labels_the_target() -> None:
    o = TargetOracle()
    assert isinstance(o, Oracle)
    s = snap(5, "t", target_xy=(0.1, 0.9))
    label = check_label(o.label(s, never()), s)
    assert point(label) == (0.1, 0.9)
    assert (label.confidence, label.oracle, label.t_ns) == (1.0, "target", 5)


def test_target_oracle_refuses_snapshots_without_a_target() -> None:
    with pytest.raises(OracleError, match="no target_xy"):
        TargetOracle().label(snap(5), never())
    with pytest.raises(OracleError, match="non-finite"):
        TargetOracle().label(snap(5, target_xy=(math.nan, 0.5)), never())


# ---- ReplayOracle ----


def test_replay_oracle_returns_grid9_labels_normalised() -> None:
    session = read_session(grid9(), screen_px=SCREEN.px)
    o = ReplayOracle(grid9(), SCREEN, tolerance_ms=50)
    assert "ground-truth" in o.version and "grid9" in o.version
    assert len(session.items) == 9
    for item in session.items:
        s = snap(item.t_ms * MS + 30 * MS, item.name)  # 30 ms late: within tolerance
        label = check_label(o.label(s, never()), s)
        x, y = point(label)
        assert x == pytest.approx(item.label_px[0] / 1920, abs=1e-12)
        assert y == pytest.approx(item.label_px[1] / 1080, abs=1e-12)
        assert label.details["record"] == item.name
    # The first record of grid9 is the top-right target.
    first = point(o.label(snap(session.items[0].t_ms * MS), never()))
    assert first[0] > 0.8 and first[1] < 0.05


def test_replay_oracle_refuses_times_without_a_record() -> None:
    o = ReplayOracle(grid9(), SCREEN, tolerance_ms=50)
    items = o.session.items
    midway = (items[0].t_ms + items[1].t_ms) // 2 * MS  # seconds from either record
    with pytest.raises(OracleError, match="no record"):
        o.label(snap(midway), never())
    with pytest.raises(OracleError, match="no record"):
        o.label(snap(items[-1].t_ms * MS + 51 * MS), never())


def test_replay_oracle_through_the_worker() -> None:
    session = read_session(grid9(), screen_px=SCREEN.px)
    item = session.items[4]
    # Session times are wall-clock based: the age check would compare them with the wrong
    # clock, so replays switch it off.
    with OracleWorker(ReplayOracle(session, SCREEN), max_age_s=None) as w:
        label = w.run_now(snap(item.t_ms * MS, "mid"), timeout=10.0)
    assert label is not None
    np.testing.assert_allclose(point(label), np.array(item.label_px) / (1920, 1080))


def test_replay_oracle_refuses_another_screen(tmp_path: Path) -> None:
    write_manifest(tmp_path, SessionManifest(screen_px=(1280, 800)))
    write_record(tmp_path, 1_000, _IMAGE, (640.0, 400.0))
    with pytest.raises(ValueError, match="1280x800"):
        ReplayOracle(tmp_path, SCREEN)
    o = ReplayOracle(tmp_path, ScreenGeometry(px=(1280, 800)))
    assert point(o.label(snap(1_000 * MS), never())) == (0.5, 0.5)


# ---- SimulatedOracle ----


def _truth(t_ns: int) -> tuple[float, float]:
    return (0.25 + 0.5 * ((t_ns // MS) % 2), 0.5)


def test_simulated_oracle_noise_and_bias_statistics() -> None:
    o = SimulatedOracle(_truth, noise_px=20.0, bias_px=(10.0, -5.0), screen=SCREEN, seed=3)
    assert "simulated" in o.name and "simulated" in o.version
    n = 2000
    err_px = np.empty((n, 2))
    for i in range(n):
        s = snap(i * MS)
        label = check_label(o.label(s, never()), s)
        assert label.details["outlier"] is False
        err_px[i] = (np.array(point(label)) - _truth(s.t_ns)) * SCREEN.size_px
    # Mean within 4 standard errors of the bias; spread within 10% of noise_px.
    np.testing.assert_allclose(err_px.mean(axis=0), (10.0, -5.0), atol=4 * 20 / math.sqrt(n))
    np.testing.assert_allclose(err_px.std(axis=0), (20.0, 20.0), rtol=0.1)


def test_simulated_oracle_outliers_are_uniform_on_screen() -> None:
    o = SimulatedOracle(_truth, noise_px=0.0, outlier_rate=0.3, screen=SCREEN, seed=1)
    labels = [o.label(snap(i * MS), never()) for i in range(2000)]
    flags = np.array([lb.details["outlier"] for lb in labels])
    assert flags.mean() == pytest.approx(0.3, abs=0.04)
    pts = np.array([point(lb) for lb in labels])
    truth = np.array([_truth(i * MS) for i in range(2000)])
    # Inliers are exactly the truth (no noise, no bias); outliers cover the whole screen.
    np.testing.assert_array_equal(pts[~flags], truth[~flags])
    out = pts[flags]
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.abs(out.mean(axis=0) - 0.5) < 0.05)


def test_simulated_oracle_is_deterministic_per_seed_and_snapshot() -> None:
    def answers(seed: int, order: list[int]) -> dict[int, tuple[float, float]]:
        o = SimulatedOracle(_truth, noise_px=30.0, outlier_rate=0.2, screen=SCREEN, seed=seed)
        return {t: point(o.label(snap(t), never())) for t in order}

    a = answers(7, [1, 2, 3, 4])
    assert a == answers(7, [4, 2, 3, 1])  # the same answers whatever was skipped before
    assert a != answers(8, [1, 2, 3, 4])


def test_simulated_oracle_honours_cancel_and_missing_truth() -> None:
    o = SimulatedOracle(_truth, noise_px=1.0, screen=SCREEN, delay_s=30.0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(OracleCancelled):
        o.label(snap(0), cancel)
    blind = SimulatedOracle(lambda t: None, noise_px=1.0, screen=SCREEN)
    with pytest.raises(OracleError, match="no simulated truth"):
        blind.label(snap(0), never())
