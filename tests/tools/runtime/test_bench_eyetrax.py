"""`gazeloop bench eyetrax`: both sides see the same frames, alternating who goes first.

EyeTrax itself pins numpy<2 and cannot be installed beside this suite's stack, so the
interleaving is checked with an object shaped like its `GazeEstimator` (the one method the
bench calls); the real package is what the README's numbers were measured with."""

import sys

import numpy as np
import pytest

from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.tools.cli import main
from gazeloop.tools.runtime import bench_eyetrax as be


class _Landmarker:
    closed = False

    def close(self):
        self.closed = True


class EstimatorLike:
    """`eyetrax.gaze.GazeEstimator`'s surface the bench uses: extract_features(bgr) ->
    (features or None, blink)."""

    def __init__(self):
        self._face_landmarker = _Landmarker()
        self.frames: list[np.ndarray] = []

    def extract_features(self, image):
        self.frames.append(image)
        return np.zeros(3), False


@pytest.mark.slow
def test_both_sides_get_every_frame_in_alternating_order(shared, monkeypatch):
    calls = []
    est = EstimatorLike()
    real_process = be.FastPath.process

    def process(self, frame):
        calls.append("ours")
        return real_process(self, frame)

    orig = est.extract_features

    def theirs(image):
        calls.append("theirs")
        return orig(image)

    monkeypatch.setattr(be.FastPath, "process", process)
    est.extract_features = theirs
    video = shared / "data/video-corners4/calibrate.mp4"
    out = be.bench_eyetrax(str(video), 6, FastPathConfig(), est)
    n = be.WARMUP + 6
    assert out["frames"] == 6 and len(est.frames) == n and calls.count("ours") == n
    pairs = [tuple(calls[i : i + 2]) for i in range(0, 2 * n, 2)]
    assert pairs[0::2] == [("ours", "theirs")] * (n // 2)
    assert pairs[1::2] == [("theirs", "ours")] * (n // 2)
    assert all(f.shape == (480, 640, 3) for f in est.frames)
    assert out["face_found"] == {"gazeloop": 6, "eyetrax": 6}
    assert est._face_landmarker.closed
    assert out["ratio"]["p50"] == pytest.approx(
        out["gazeloop_fastpath"]["p50_ms"] / out["eyetrax_extract_features"]["p50_ms"], abs=1e-3
    )


def test_without_eyetrax_it_says_how_to_get_it(monkeypatch, capsys, shared):
    monkeypatch.setitem(sys.modules, "eyetrax", None)  # an import of it fails
    video = shared / "data/video-corners4/calibrate.mp4"
    assert main(["bench", "eyetrax", "--source", str(video), "--frames", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install eyetrax" in err and "numpy<2" in err and "\n" not in err
