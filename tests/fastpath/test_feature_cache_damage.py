"""A damaged feature cache entry that still parses as JSON is a miss: the command neither
crashes nor gives other numbers, and the entry is written again. What the writer itself
writes (a frame without a face, an undecodable file, an eye position it could not place)
stays a hit."""

from __future__ import annotations

import json
import math

import pytest

from gazeloop.fastpath import feature_cache
from gazeloop.fastpath.collect import collect_session
from tests.fastpath.test_feature_cache import CountingFastPath, _Quality, _Sample, make_session


def _linked(shared, out, n: int = 4):
    """The first `n` stills of evit p1_s00 linked into `out`, the first one replaced by bytes
    that are no JPEG: the entry then has a skipped file as well as frames."""
    src = shared / "data/evit/p1_s00"
    out.mkdir()
    (out / "session.json").symlink_to(src / "session.json")
    for i, jpg in enumerate(sorted(src.glob("*.jpg"))[:n]):
        (out / jpg.with_suffix(".json").name).symlink_to(jpg.with_suffix(".json"))
        if i == 0:
            (out / jpg.name).write_bytes(b"not a jpeg")
        else:
            (out / jpg.name).symlink_to(jpg)
    return out


def _named(sample) -> dict:
    # A rebuild hands on the live samples, embedding included; the cache never has it.
    return {k: v for k, v in sample.feature_dict().items() if not k.startswith("emb_")}


def _numbers(col) -> list:
    """Everything a command reads from a collected session."""
    rows = [(s.name, s.t_ns, s.target, s.label_px, _named(s.sample)) for s in col.samples]
    return [json.dumps(rows), [(r.file, r.why) for r in col.rejected]]


@pytest.fixture(scope="module")
def real(shared, tmp_path_factory):
    """A session of real stills, its fast path, the clean run read back from the cache, and
    the entry's path and text."""
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig

    tmp = tmp_path_factory.mktemp("damage")
    folder = _linked(shared, tmp / "s")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(feature_cache, "cache_dir", lambda: tmp / "features")
        fp = FastPath(FastPathConfig())
        try:
            collect_session(folder, fp, cache=True)
            (path,) = (tmp / "features").glob("*.json")
            clean = collect_session(folder, fp, cache=True)  # from the entry
            yield folder, fp, _numbers(clean), path, path.read_text()
        finally:
            fp.close()


def _frame(k: int):
    def get(e):
        return e["frames"][k]

    return get


def _set(key, value, k=0):
    return lambda e: _frame(k)(e).__setitem__(key, value)


def _feature(key, value):
    return lambda e: _frame(0)(e)["features"].__setitem__(key, value)


def _why_everywhere(e):
    for f in e["frames"]:
        f["why"] = "no face found"


DAMAGE = {
    "frames are numbers": lambda e: e.__setitem__("frames", [1, 2, 3]),
    "a name not in the session": _set("name", "img_1.jpg"),
    "features gone": lambda e: _frame(0)(e).pop("features"),
    "features a list": _set("features", [1, 2]),
    "features empty": _set("features", {}),
    "no gaze_pitch": lambda e: _frame(0)(e)["features"].pop("gaze_pitch"),
    "another feature gone": lambda e: _frame(1)(e)["features"].pop("head_yaw"),
    "gaze_yaw a string": _feature("gaze_yaw", "abc"),
    "gaze_yaw null": _feature("gaze_yaw", None),
    "gaze_yaw a list": _feature("gaze_yaw", [1, 2]),
    "gaze_yaw NaN": _feature("gaze_yaw", math.nan),
    "gaze_yaw Infinity": _feature("gaze_yaw", math.inf),
    "gaze_yaw 1e308": _feature("gaze_yaw", 1e308),
    "t_ns a string": _set("t_ns", "abc"),
    "t_ns gone": lambda e: _frame(0)(e).pop("t_ns"),
    "skipped a number": lambda e: e.__setitem__("skipped", [1]),
    "skipped without file": lambda e: e.__setitem__("skipped", [{"x": 1}]),
    "skipped twice": lambda e: e.__setitem__("skipped", e["skipped"] * 2),
    "every frame twice": lambda e: e.__setitem__("frames", e["frames"] * 2),
    "first frame dropped": lambda e: e["frames"].pop(0),
    "every frame given a why": _why_everywhere,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_entry_is_rebuilt_with_the_same_numbers(real, damage):
    folder, fp, clean, path, text = real
    entry = json.loads(text)
    damage(entry)
    path.write_text(json.dumps(entry))
    assert _numbers(collect_session(folder, fp, cache=True)) == clean
    assert json.loads(path.read_text()) == json.loads(text)  # written again


def test_json_nested_too_deep_is_a_miss(real):
    folder, fp, clean, path, text = real
    path.write_text("[" * 100_000 + "]" * 100_000)  # json's parser recurses
    assert _numbers(collect_session(folder, fp, cache=True)) == clean
    assert json.loads(path.read_text()) == json.loads(text)


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "cache_dir", lambda: tmp_path / "features")
    monkeypatch.setattr(feature_cache, "config_digest", lambda cfg: f"cfg-{cfg}")


class Writes(CountingFastPath):
    """The fake fast path, with a sample of our choosing for every frame."""

    def __init__(self, sample):
        super().__init__()
        self.sample = sample

    def process(self, frame):
        self.calls += 1
        return self.sample


class _Placeless(_Sample):
    def feature_dict(self):
        return super().feature_dict() | {"eye_x_mm": math.nan, "eye_y_mm": math.nan}


@pytest.mark.parametrize(
    "sample",
    [_Sample(0.2, _Quality(face=False)), _Placeless(0.2)],
    ids=["no face in any frame", "eye position not found (NaN)"],
)
def test_what_the_writer_writes_is_a_hit(tmp_path, fake_cache, sample):
    folder = make_session(tmp_path / "s")
    next(folder.glob("*.jpg")).write_bytes(b"not a jpeg")  # skipped, also a hit
    fp = Writes(sample)
    first = collect_session(folder, fp, mirrored=False, cache=True)
    again = collect_session(folder, fp, mirrored=False, cache=True)
    assert fp.calls == 3  # the second read ran nothing
    assert len(again.rejected) == len(first.rejected) >= 1
    assert [s.sample.feature_dict().keys() for s in again.samples] == [
        s.sample.feature_dict().keys() - {"emb_0"} for s in first.samples
    ]
