"""`gazeloop track`: with `--profile` on a session folder, screen points read as the
profile's frames were; a long run's summary in fixed memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli import cli


def _points(out: str) -> np.ndarray:
    rows = [json.loads(line) for line in out.splitlines()]
    return np.array([r["screen_px"] for r in rows if "index" in r], dtype=float)


@pytest.mark.slow
def test_a_selfie_session_without_a_manifest_is_read_as_the_profiles_frames_were(
    shared, gaze_onnx, tmp_path
):
    """grid9 says nothing of its selfie view: `eval --profile` read it as the profile's own
    frames (un-mirrored) and scored about 50 px, while `track --profile` read it as it lies
    and put the top-right target at the left edge of the screen."""
    grid9 = shared / "data/sessions/grid9"
    prof = tmp_path / "g9.json"
    fit = ["profile", "fit", grid9, "--screen-px", 1920, 1080, "--mirrored", "--out", prof]
    assert cli(*fit)[0] == 0
    labels = _grid9_labels(grid9)
    rc, out, err = cli("track", grid9, "--profile", prof, "--jsonl")
    assert rc == 0, err
    err_px = np.hypot(*(_points(out) - labels).T)
    assert err_px.mean() < 120, err_px.round()  # in-sample: the fit saw these frames
    # Told otherwise, it reads them as they lie: the points land across the screen.
    rc, out, err = cli("track", grid9, "--profile", prof, "--jsonl", "--no-mirrored")
    assert rc == 0, err
    assert np.hypot(*(_points(out) - labels).T).mean() > 500
    for source in (shared / "data/video-corners4/calibrate.mp4", "0"):  # "0": a camera
        rc, _, err = cli("track", source, "--mirrored")
        assert rc == 2 and "--mirrored is for a session folder's images" in err, err
    # A screen without a profile to map to was silently ignored.
    rc, _, err = cli("track", grid9, "--screen-px", 1920, 1080)
    assert rc == 2 and "--screen-px is for a --profile's points" in err, err


def _grid9_labels(grid9) -> np.ndarray:
    return np.array(
        [[json.loads(p.read_text())[k] for k in ("screen_x", "screen_y")]
         for p in sorted(grid9.glob("img_*.json"))]
    )  # fmt: skip


@pytest.mark.slow
def test_a_profile_refitted_for_another_read_reads_the_frames_as_it_was_fitted(
    shared, gaze_onnx, tmp_path
):
    """The refit (another gaze read, or a promoted model) read grid9 as the frames told
    (mirrored) but no longer said so in the profile: track then read the frames as they lie
    and put the top-right target at the left edge (an audit: (1675, 21) at (150, 186))."""
    grid9 = shared / "data/sessions/grid9"
    prof = tmp_path / "g9.json"
    assert cli("profile", "fit", grid9, "--screen-px", 1920, 1080, "--out", prof)[0] == 0
    single = tmp_path / "single.json"
    single.write_text('{"mirror_average": false}')  # another read: the profile is refitted
    rc, out, err = cli("track", grid9, "--profile", prof, "--config", single, "--jsonl")
    assert rc == 0 and "refit" in err.lower(), err
    err_px = np.hypot(*(_points(out) - _grid9_labels(grid9)).T)
    assert err_px.mean() < 150, err_px.round()  # in-sample; read as lying: over 500


def test_the_summary_of_a_long_run_is_kept_in_fixed_memory(monkeypatch):
    """Every frame's latency and gaze were kept for the summary: 290 MB over 8 hours at
    60 Hz. The gaze range is running; the latencies a uniform sample of fixed size."""
    from gazeloop.fastpath.types import GazeSample, Quality
    from gazeloop.tools.commands import track

    monkeypatch.setattr(track, "_KEPT_LATENCIES", 500)
    tally = track.Tally()
    rng = np.random.default_rng(3)
    yp = rng.normal(0.0, 0.2, (5000, 2))
    for i in range(5000):
        s = GazeSample(i, i, Quality(face=True), gaze_yp=yp[i], stage_ms={"all": float(i % 100)})
        tally.add(s)
    out = tally.summary()
    assert len(tally.total_ms) == 500 and out["frames"] == 5000
    assert abs(out["latency_p50_ms"] - 49.5) < 8  # every frame's median, from the sample
    deg = np.degrees(yp)
    assert out["gaze_yaw_deg"] == {
        "min": round(float(deg[:, 0].min()), 2),
        "max": round(float(deg[:, 0].max()), 2),
        "mean": round(float(deg[:, 0].mean()), 2),
    }
