"""The per-frame feature cache: a rerun reads features instead of running the fast path; a
changed file, another setting or a corrupt entry is a miss; entries are JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.fastpath import feature_cache
from gazeloop.fastpath.collect import collect_session


@dataclass
class _Quality:
    error: str | None = None
    face: bool = True
    blink: bool = False


@dataclass
class _Sample:
    yaw: float
    quality: _Quality = field(default_factory=_Quality)

    @property
    def gaze_yp_raw(self):
        return np.array([self.yaw, 0.1])

    def feature_dict(self):
        return {"gaze_yaw": self.yaw, "gaze_pitch": 0.1, "emb_0": 9.0}


class CountingFastPath:
    """Stands in for the fast path: the gaze yaw is the image's mean blue level in radians
    per 100 levels (an angle, as the cache checks), and every frame it sees is counted."""

    def __init__(self, setting: str = "a"):
        self.cfg = setting
        self.calls = 0

    def reset(self):
        pass

    def process(self, frame):
        self.calls += 1
        return _Sample(float(frame.image[..., 0].mean()) / 100)


def make_session(folder: Path, n: int = 4, step: int = 40, levels=None) -> Path:
    """`n` stills of one grey level each (`levels`, else `step` apart), target i at x 100·i."""
    folder.mkdir(parents=True)
    levels = [step * i for i in range(n)] if levels is None else levels
    for i, level in enumerate(levels):
        t = 1_700_000_000_000 + 1000 * i
        img = np.full((48, 64, 3), level, np.uint8)
        cv2.imwrite(str(folder / f"img_{t}.jpg"), img)
        rec = {"timestamp": t, "screen_x": 100.0 * i, "screen_y": 50.0 * (i % 2)}
        (folder / f"img_{t}.json").write_text(json.dumps(rec))
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GAZELOOP_CACHE", str(tmp_path / "cache"))
    # the settings' digest without model files: the fake's cfg is the setting itself
    monkeypatch.setattr(feature_cache, "config_digest", lambda cfg: f"cfg-{cfg}")
    return tmp_path / "cache" / "features"


def test_a_rerun_reads_the_cache(tmp_path, cache):
    folder = make_session(tmp_path / "s")
    fp = CountingFastPath()
    first = collect_session(folder, fp, mirrored=False, cache=True)
    assert fp.calls == 4
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())  # JSON, not pickle
    assert entry["version"] == feature_cache.CACHE_VERSION
    assert all("emb_0" not in f["features"] for f in entry["frames"])  # no embedding stored
    second = collect_session(folder, fp, mirrored=False, cache=True)
    assert fp.calls == 4  # nothing ran again
    a = [ls.sample.feature_dict()["gaze_yaw"] for ls in first.samples]
    b = [ls.sample.feature_dict()["gaze_yaw"] for ls in second.samples]
    assert a == pytest.approx(b)
    assert [ls.name for ls in first.samples] == [ls.name for ls in second.samples]
    assert [ls.target for ls in first.samples] == [ls.target for ls in second.samples]


def test_changed_content_setting_or_flip_is_a_miss(tmp_path, cache):
    folder = make_session(tmp_path / "s")
    fp = CountingFastPath()
    collect_session(folder, fp, mirrored=False, cache=True)
    img = next(folder.glob("*.jpg"))
    cv2.imwrite(str(img), np.full((48, 64, 3), 200, np.uint8))
    collect_session(folder, fp, mirrored=False, cache=True)
    assert fp.calls == 8
    other = CountingFastPath(setting="b")
    collect_session(folder, other, mirrored=False, cache=True)
    assert other.calls == 4
    collect_session(folder, fp, mirrored=True, cache=True)  # frames flipped back: other key
    assert fp.calls == 12


def test_a_corrupt_entry_is_recomputed(tmp_path, cache):
    folder = make_session(tmp_path / "s")
    fp = CountingFastPath()
    collect_session(folder, fp, mirrored=False, cache=True)
    (entry,) = cache.glob("*.json")
    entry.write_text("{not json")
    again = collect_session(folder, fp, mirrored=False, cache=True)
    assert fp.calls == 8 and len(again.samples) == 4
    assert json.loads(entry.read_text())["version"] == feature_cache.CACHE_VERSION


def test_without_the_cache_the_samples_keep_their_embedding(tmp_path, cache):
    folder = make_session(tmp_path / "s")
    col = collect_session(folder, CountingFastPath(), mirrored=False)
    assert "emb_0" in col.samples[0].sample.feature_dict()
    assert not cache.exists()


def test_both_reads_unless_the_frames_say_the_same_without_any_one_target(tmp_path, cache):
    """The frames' verdict on all targets picks the first read, and the other read comes
    too unless the verdict is the same with any one target left out: a leave-one-target-out
    evaluation decides again without the held-out target (with one read only, that target's
    own label chose how its frames were read). A statement leaves one read."""
    fp = CountingFastPath()
    # every frame alike: the gaze does not follow the targets, so the mirroring is unknown
    flat = make_session(tmp_path / "flat", step=0)
    col = collect_session(flat, fp, cache=True, both_reads=True)
    assert col.other is not None and col.other.unmirrored != col.unmirrored
    assert "cannot tell" in col.mirror_basis
    # the yaw grows with the target's x: decisively a selfie view, read un-mirrored first,
    # and so with any target left out: every fold would rule the other read out
    steep = make_session(tmp_path / "steep")
    col = collect_session(steep, fp, cache=True, both_reads=True)
    assert col.unmirrored and "detected mirrored" in col.mirror_basis and col.other is None
    # a selfie view on all five targets (r = +0.70), undecided without the first
    loose = make_session(tmp_path / "loose", levels=[0, 40, 120, 160, 80])
    col = collect_session(loose, fp, cache=True, both_reads=True)
    assert col.unmirrored and "detected mirrored (gaze yaw vs target x r=+0.70)" in col.mirror_basis
    assert col.other is not None and not col.other.unmirrored
    assert collect_session(loose, fp, cache=True).other is None  # not asked for
    stated = collect_session(steep, fp, mirrored=False, cache=True, both_reads=True)
    assert stated.other is None and stated.mirror_basis == "stated"


def test_every_setting_that_changes_a_feature_changes_the_key(gaze_onnx, face_task):
    """A cached feature computed under other settings must be a miss, never a stale hit:
    the read of the network (mirror-averaged or not) and the head-pose frame included."""
    from gazeloop.fastpath.pipeline import FastPathConfig

    base = FastPathConfig(face_model=face_task, gaze_model=gaze_onnx)
    keys = {
        feature_cache.config_digest(base.model_copy(update=u))
        for u in (
            {},
            {"mirror_average": not base.mirror_average},
            {"gaze_frame": "camera" if base.gaze_frame == "ray" else "ray"},
            {"crop_scale": 1.7},
            {"focal_px": 600.0},
            {"still_gap_s": 2.0},
        )
    }
    assert len(keys) == 6
    assert feature_cache.config_digest(base.model_copy(update={"filter": "kalman"})) in keys


def test_the_feature_settings_are_fast_path_settings():
    """A name misspelt in the list would leave its setting out of the cache key and out of
    every profile's `read_with`, without a word (pydantic's include ignores it)."""
    from gazeloop.fastpath.pipeline import _FEATURE_SETTINGS, FastPathConfig

    assert set(FastPathConfig().feature_settings()) == _FEATURE_SETTINGS


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_models_and_features_share_the_users_cache(platform, tmp_path, monkeypatch):
    """On macOS the feature cache was in ~/.cache and the models in ~/Library/Caches."""
    import sys

    from gazeloop.fastpath import feature_cache, models

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(models.ENV_CACHE, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    root = tmp_path / ("Library/Caches" if platform == "darwin" else ".cache") / "gazeloop"
    assert (models.cache_dir(), feature_cache.cache_dir()) == (root / "models", root / "features")
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path / "c"))
    assert (models.cache_dir(), feature_cache.cache_dir()) == (
        tmp_path / "c",
        tmp_path / "c/features",
    )
