"""Which frames are one target: leave-one-target-out holds a place out whole, whatever the
recorder numbered it. Real session folders (a copy of an evit sitting), no networks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gazeloop.calibration.store.session import read_session
from gazeloop.fastpath.collect import target_ids
from tests.paths import SHARED

SITTING = SHARED / "data/evit/p1_s05"


def _copy(tmp_path: Path) -> tuple[Path, list[Path]]:
    out = tmp_path / "sitting"
    shutil.copytree(SITTING, out)
    return out, sorted(out.glob("img_*.json"))


def _add(folder: Path, like: Path, t_ms: int, **fields) -> None:
    """Another still of `like`'s picture at `t_ms`, its record changed by `fields`."""
    shutil.copy(like.with_suffix(".jpg"), folder / f"img_{t_ms}.jpg")
    record = {**json.loads(like.read_text()), "timestamp": t_ms, **fields}
    (folder / f"img_{t_ms}.json").write_text(json.dumps(record))


def _groups(folder: Path) -> dict[str, int]:
    s = read_session(folder)
    return {it.image.stem: g for it, g in zip(s.items, target_ids(s), strict=True)}


def test_the_recorders_numbers_are_the_targets_when_they_agree_with_the_places(tmp_path):
    folder, records = _copy(tmp_path)
    groups = _groups(folder)
    assert len(set(groups.values())) == 16
    for path in records:
        assert groups[path.stem] == json.loads(path.read_text())["target"]


def test_a_place_looked_at_again_under_another_number_is_one_target(tmp_path):
    """A recorder that numbers clicks, not places: a second still of target 5's place came
    as target 16, and each copy was predicted with the other in the fit (36 px against 74
    with the place held out whole)."""
    folder, records = _copy(tmp_path)
    like = next(p for p in records if json.loads(p.read_text())["target"] == 5)
    last = max(int(p.stem.removeprefix("img_")) for p in records)
    _add(folder, like, last + 1000, target=16)
    groups = _groups(folder)
    assert len(set(groups.values())) == 16
    assert groups[f"img_{last + 1000}"] == groups[like.stem]


def test_one_number_at_two_places_holds_both_out_together(tmp_path):
    folder, records = _copy(tmp_path)
    like = next(p for p in records if json.loads(p.read_text())["target"] == 3)
    last = max(int(p.stem.removeprefix("img_")) for p in records)
    _add(folder, like, last + 1000, screen_x=11.0, screen_y=17.0)
    groups = _groups(folder)
    assert len(set(groups.values())) == 16
    assert groups[f"img_{last + 1000}"] == groups[like.stem]
