"""The label store: round trip, export to a readable session, following it by id, schema
versions (schema 1 stores with their `sent` column still open), disk errors, orphans, and a
writer killed with SIGKILL."""

from __future__ import annotations

import errno
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from gazeloop.calibration.drift.loop import LoopDecision
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import LineObservation, OracleLabel, PointObservation
from gazeloop.calibration.store.labelstore import (
    DB_NAME,
    SCHEMA_VERSION,
    DuplicateLabelError,
    LabelStore,
    LabelStoreError,
)
from gazeloop.calibration.store.session import load_image, read_session

SCREEN = ScreenGeometry(px=(1728, 1080), mm=(345.0, 215.6), camera_mm=(172.5, -8.0, 0.0))


def img(seed: int = 0, shape=(48, 64, 3)) -> np.ndarray:
    """A smooth picture (JPEG keeps it close), different for every seed."""
    h, w, _ = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), (seed * 37) % 256)], axis=-1)
    return base.astype(np.uint8)


def decision(accepted=True, why="accepted", residual=(0.01, -0.02), offset=(0.03, 0.0)):
    return LoopDecision(
        accepted=accepted,
        why=why,
        residual=np.array(residual),
        step=np.zeros(2),
        offset=np.array(offset),
    )


def point(i: int, xy=(0.25, 0.75), **kw) -> OracleLabel:
    return OracleLabel(
        t_ns=1_000 + i,
        snapshot_id=f"snap-{i}",
        oracle="clicks",
        oracle_version="1",
        observation=PointObservation(xy=xy),
        **kw,
    )


def test_round_trip_keeps_every_field(tmp_path):
    with LabelStore(tmp_path) as store:
        line = OracleLabel(
            t_ns=123_456_789,
            snapshot_id="snap/odd id",
            oracle="moondream",
            oracle_version="2025-04-14 fp16",
            observation=LineObservation(origin=(0.5, -0.04), direction=(0.6, 0.8)),
            confidence=0.7,
            in_frame=False,
            latency_s=2.5,
            details={"raw": np.array([1.5, 2.0]), "n": np.int64(3), "text": "ok"},
        )
        image = img(1)
        rid = store.add(
            line, image, np.array([0.4, 0.6]), decision(False, "outlier: 5σ"), snapshot_ms=42
        )
        row = store.get(rid)
        assert row is not None and row.id == rid
        back = row.to_label()
        assert back.observation == line.observation
        assert (back.t_ns, back.snapshot_id, back.oracle, back.oracle_version) == (
            line.t_ns,
            line.snapshot_id,
            line.oracle,
            line.oracle_version,
        )
        assert (back.confidence, back.in_frame, back.latency_s) == (0.7, False, 2.5)
        assert back.details == {"raw": [1.5, 2.0], "n": 3, "text": "ok"}
        assert row.fast_xy == (0.4, 0.6) and not row.accepted and row.why == "outlier: 5σ"
        assert row.residual == (0.01, -0.02) and row.offset == (0.03, 0.0)
        assert row.snapshot_ms == 42 and abs(row.created_ms - time.time() * 1000) < 60_000
        path = store.image_path(row)
        assert path is not None and path.parent == tmp_path / "images"
        decoded = load_image(path)
        assert decoded.shape == image.shape
        assert np.abs(decoded.astype(int) - image).mean() < 3  # JPEG of this picture

        none = OracleLabel(t_ns=5, snapshot_id="empty", oracle="moondream", in_frame=False)
        rid2 = store.add(none, None, None, None)
        row2 = store.get(rid2)
        assert row2.observation is None and row2.image is None and row2.fast_xy is None
        assert row2.why == "not processed by the loop"
        assert store.get(999) is None
        assert store.count() == 2 and store.count(accepted=False) == 2
        assert [r.id for r in store.iter(batch=1)] == [rid, rid2]
    # Reopened: same rows.
    with LabelStore(tmp_path) as store:
        assert store.get(rid) == row and store.integrity_check() == "ok"


def test_duplicate_snapshot_is_refused_and_the_first_image_kept(tmp_path):
    with LabelStore(tmp_path) as store:
        store.add(point(1), img(1), None, decision())
        first = store.image_path(store.get(1)).read_bytes()
        with pytest.raises(LabelStoreError, match="already stored"):
            store.add(point(1), img(2), None, decision())
        assert store.count() == 1
        assert store.image_path(store.get(1)).read_bytes() == first
        assert len(list((tmp_path / "images").iterdir())) == 1


def test_ids_after_follow_the_store(tmp_path):
    with LabelStore(tmp_path) as store:
        ids = [store.add(point(i), img(i), None, decision()) for i in range(5)]
        assert store.ids_after(0) == ids
        assert store.ids_after(ids[1], limit=2) == ids[2:4]
        assert store.ids_after(ids[-1]) == [] and store.ids_after(0, limit=0) == []
        assert store.legacy_sent_ids() == []  # a store of this schema keeps no such flag


def make_schema_1(root, sent_ids) -> None:
    """A store as schema 1 left it: the same table plus the uplink's `sent` column."""
    with sqlite3.connect(root / DB_NAME) as db:
        db.execute("ALTER TABLE labels ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")
        db.execute("CREATE INDEX labels_unsent ON labels (sent, id)")
        db.executemany("UPDATE labels SET sent = 1 WHERE id = ?", [(i,) for i in sent_ids])
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")


def test_a_schema_1_store_opens_and_its_sent_column_is_read_once(tmp_path):
    with LabelStore(tmp_path) as store:
        ids = [store.add(point(i), img(i), None, decision()) for i in range(4)]
    make_schema_1(tmp_path, ids[:2])
    with LabelStore(tmp_path) as store:
        assert store.legacy_sent_ids() == ids[:2]
        new = store.add(point(9), img(9), None, decision())  # the column keeps its default
        assert store.ids_after(0) == [*ids, new] and store.get(new).snapshot_id == "snap-9"
        assert store.legacy_sent_ids() == ids[:2] and store.integrity_check() == "ok"
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # still schema 1 on disk
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row == ("1",)


def test_a_run_records_its_screen_and_settings_and_its_labels_name_it(tmp_path):
    with LabelStore(tmp_path) as store:
        before = store.add(point(0), img(0), None, decision())  # no run: not recorded
        run = store.begin_run({"config": {"loop": {"huber_k": 2.0}}, "source": "0"}, SCREEN)
        ids = [store.add(point(i), img(i), None, decision(), run_id=run) for i in (1, 2)]
        other = store.begin_run({"source": "1"})  # a run whose screen nobody knew
        last = store.add(point(3), img(3), None, decision(), run_id=other)
        assert store.get(before).run_id is None
        assert [store.get(i).run_id for i in ids] == [run, run] and store.get(last).run_id == other
        assert [r.id for r in store.iter(accepted=True)] == [before, *ids, last]
        got = store.run(run)
        assert got.screen == SCREEN and got.settings["config"]["loop"]["huber_k"] == 2.0
        assert [r.id for r in store.runs()] == [run, other] and store.runs()[1].screen is None
        assert store.run(other + 1) is None
        # A label of a run that was never begun is refused, and leaves nothing behind.
        with pytest.raises(LabelStoreError, match=f"no run {other + 1}"):
            store.add(point(4), img(4), None, decision(), run_id=other + 1)
        assert store.count() == 4 and len(list((tmp_path / "images").iterdir())) == 4
        assert store.integrity_check() == "ok"
    with LabelStore(tmp_path) as store:  # reopened: every link kept
        assert [r.run_id for r in store] == [None, run, run, other]


def test_a_refused_run_link_loses_the_label_whole_and_is_not_called_a_duplicate(tmp_path):
    """The link to the run is in the label's transaction: when SQLite refuses it (a trigger
    here, a constraint or a failing disk in life) neither the row nor its image stays, and
    the error says so rather than calling the label a replay."""
    with LabelStore(tmp_path) as store:
        run = store.begin_run({"source": "0"}, SCREEN)
        with sqlite3.connect(tmp_path / DB_NAME) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON label_runs BEGIN SELECT "
                "RAISE(ABORT, 'constraint failed'); END"
            )
        with pytest.raises(LabelStoreError) as e:
            store.add(point(1), img(1), None, decision(), run_id=run)
        assert not isinstance(e.value, DuplicateLabelError) and "snap-1" in str(e.value)
        assert store.count() == 0 and not any((tmp_path / "images").iterdir())


@pytest.mark.parametrize("schema", [1, 2])
def test_an_older_store_gains_the_run_tables_and_keeps_its_labels(tmp_path, schema):
    """Stores made before runs were recorded: the two tables are added when the store is
    opened, the labels table and the schema version are left as they were, and an older
    gazeloop can still read and write it."""
    with LabelStore(tmp_path) as store:
        ids = [store.add(point(i), img(i), None, decision()) for i in range(3)]
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript("DROP TABLE label_runs; DROP TABLE runs;")
    if schema == 1:
        make_schema_1(tmp_path, ids[:1])
    with LabelStore(tmp_path) as store:
        assert [r.run_id for r in store] == [None] * 3 and store.runs() == []
        run = store.begin_run({"source": "0"}, SCREEN)
        new = store.add(point(7), img(7), None, decision(), run_id=run)
        assert store.get(new).run_id == run and store.integrity_check() == "ok"
        assert store.legacy_sent_ids() == (ids[:1] if schema == 1 else [])
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row == (str(schema),)
        cols = [r[1] for r in db.execute("PRAGMA table_info(labels)")]
        assert "run_id" not in cols  # the links live beside the labels, not in them


def test_export_leaves_out_labels_of_a_run_on_another_screen(tmp_path):
    store = LabelStore(tmp_path / "store")
    here = store.begin_run({"source": "0"}, SCREEN)
    there = store.begin_run({"source": "0"}, ScreenGeometry(px=(2560, 1440)))
    unknown = store.begin_run({"source": "0"})
    store.add(point(0, (0.2, 0.2)), img(0), None, decision(), snapshot_ms=1_700_000_000_000)
    store.add(point(1, (0.4, 0.4)), img(1), None, decision(), run_id=here)
    store.add(point(2, (0.6, 0.6)), img(2), None, decision(), run_id=there)
    store.add(point(3, (0.8, 0.8)), img(3), None, decision(), run_id=unknown)
    stats = store.export_session(tmp_path / "out", SCREEN)
    assert stats == {"written": 3, "skipped": {"recorded on another screen (2560x1440)": 1}}
    got = sorted(it.label_px for it in read_session(tmp_path / "out").items)
    np.testing.assert_allclose(got, [(x * 1728, x * 1080) for x in (0.2, 0.4, 0.8)], atol=1e-9)
    store.close()


def test_export_knows_the_screen_of_a_run_recorded_while_it_reads(tmp_path, monkeypatch):
    """An export read the runs once: labels of a run another process began meanwhile, on
    another screen, were exported in this screen's pixels."""
    store = LabelStore(tmp_path / "store")
    here = store.begin_run({"source": "0"}, SCREEN)
    store.add(point(0, (0.2, 0.2)), img(0), None, decision(), run_id=here)
    there = store.begin_run({"source": "0"}, ScreenGeometry(px=(1280, 720)))
    store.add(point(1, (0.4, 0.4)), img(1), None, decision(), run_id=there)
    real_runs, calls = store.runs, []

    def runs_as_at_the_start():  # the first read, before the second run was recorded
        calls.append(1)
        return [r for r in real_runs() if r.id == here] if len(calls) == 1 else real_runs()

    monkeypatch.setattr(store, "runs", runs_as_at_the_start)
    stats = store.export_session(tmp_path / "out", SCREEN)
    assert stats == {"written": 1, "skipped": {"recorded on another screen (1280x720)": 1}}
    store.close()


def test_export_writes_a_session_the_reader_accepts(tmp_path):
    store = LabelStore(tmp_path / "store")
    pts = [(0.1, 0.2), (0.5, 0.5), (0.9, 0.8)]
    for i, xy in enumerate(pts):
        store.add(point(i, xy), img(i), (0.5, 0.5), decision(), snapshot_ms=1_700_000_000_000)
    store.add(point(10, (1.2, 0.5)), img(10), None, decision())  # off the screen
    store.add(point(11, (0.3, 0.3)), img(11), None, decision(False, "outlier"))
    store.add(point(12, (0.4, 0.4)), None, None, decision())  # no image
    line = OracleLabel(
        t_ns=99,
        snapshot_id="line",
        oracle="moondream",
        observation=LineObservation(origin=(0.5, 0.0), direction=(0.0, 1.0)),
    )
    store.add(line, img(20), (0.6, 0.7), decision(), snapshot_ms=1_700_000_000_500)
    store.add(OracleLabel(t_ns=1, snapshot_id="none", oracle="m"), img(21), None, decision())
    # No loop judged it (no profile yet): a click like any other, as `collect` files it.
    store.add(point(30, (0.7, 0.1)), img(30), None, None, snapshot_ms=1_800_000_000_000)

    out = tmp_path / "session"
    stats = store.export_session(out, SCREEN)
    assert stats == {
        "written": 4,
        "skipped": {
            "off the screen": 1,
            "rejected by the loop": 1,
            "no image": 1,
            "line label": 1,
            "no observation": 1,
        },
    }
    sess = read_session(out, check_images=True)
    assert sess.rejected == [] and len(sess) == 4
    unjudged = sess.items[-1]
    assert unjudged.label_px == pytest.approx((0.7 * 1728, 0.1 * 1080))
    assert unjudged.record.model_extra["oracle"]["accepted"] is None
    assert sess.manifest.screen_px == (1728, 1080) and sess.manifest.camera_mm == (172.5, -8.0)
    # Three labels shared one snapshot millisecond: names moved on by 1 ms each.
    assert [it.t_ms for it in sess.items][:3] == [1_700_000_000_000 + k for k in range(3)]
    got = sorted(it.label_px for it in sess.items[:3])
    want = sorted((x * 1728, y * 1080) for x, y in pts)
    np.testing.assert_allclose(got, want, atol=1e-9)
    rec = sess.items[0].record.model_extra
    assert rec["oracle"]["name"] == "clicks" and rec["oracle"]["accepted"] is True
    # Images are the stored bytes, not a re-encoding.
    by_sid = {r.snapshot_id: r for r in store.iter()}
    sid = rec["oracle"]["snapshot_id"]
    assert sess.items[0].image.read_bytes() == store.image_path(by_sid[sid]).read_bytes()

    # Pseudo points for lines: the fast estimate's projection onto the line, marked.
    out2 = tmp_path / "pseudo"
    stats = store.export_session(out2, SCREEN, lines="pseudo", accepted_only=False)
    assert stats["written"] == 6  # 3 points + the unjudged + the rejected point + the line
    sess2 = read_session(out2)
    pseudo = [it for it in sess2.items if (it.record.model_extra or {}).get("pseudo")]
    assert len(pseudo) == 1
    np.testing.assert_allclose(pseudo[0].label_px, (0.5 * 1728, 0.7 * 1080), atol=1e-9)
    assert pseudo[0].record.model_extra["line"] == {"origin": [0.5, 0.0], "direction": [0.0, 1.0]}
    with pytest.raises(ValueError):
        store.export_session(tmp_path / "new", SCREEN, lines="guess")
    with pytest.raises(LabelStoreError, match="not empty"):
        store.export_session(out, SCREEN)
    store.close()
    with pytest.raises(LabelStoreError, match="closed"):
        store.count()


def test_newer_schema_is_a_clear_error(tmp_path):
    LabelStore(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}"
    with pytest.raises(LabelStoreError, match=newer):
        LabelStore(tmp_path)


def _store_with_pictures(root, n: int = 3) -> list[str]:
    with LabelStore(root) as store:
        for i in range(n):
            store.add(point(i), img(i), None, decision())
    return sorted(p.name for p in (root / "images").iterdir())


def test_an_emptied_database_beside_pictures_is_refused_and_nothing_is_deleted(tmp_path):
    # Found by a fault-injection sweep: a zero-byte database opened as a new store made
    # every picture an "orphan", and `train --labels` deleted them all.
    pictures = _store_with_pictures(tmp_path)
    (tmp_path / DB_NAME).write_bytes(b"")
    with pytest.raises(LabelStoreError, match=r"is empty but .* holds 3 picture\(s\)"):
        LabelStore(tmp_path)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == pictures
    assert (tmp_path / DB_NAME).read_bytes() == b""


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ("CREATE TABLE labels (a INTEGER)", "is not a gazeloop label store"),
        (
            "CREATE TABLE meta (key TEXT, value TEXT); CREATE TABLE labels (a INTEGER)",
            "no readable schema_version",
        ),
        (
            "CREATE TABLE meta (key TEXT, value TEXT); CREATE TABLE labels (a INTEGER);"
            "INSERT INTO meta VALUES ('schema_version', 'two')",
            "no readable schema_version",
        ),
    ],
)
def test_a_database_of_another_shape_is_refused_unchanged(tmp_path, schema, says):
    pictures = _store_with_pictures(tmp_path)
    (tmp_path / DB_NAME).unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / (DB_NAME + extra)).unlink(missing_ok=True)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript(schema)
    before = (tmp_path / DB_NAME).read_bytes()
    with pytest.raises(LabelStoreError, match=says):
        LabelStore(tmp_path)
    assert (tmp_path / DB_NAME).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == pictures


def test_a_new_store_in_an_empty_folder_opens(tmp_path):
    with LabelStore(tmp_path / "new") as store:
        assert store.count() == 0


def test_store_is_wal_with_full_sync(tmp_path):
    with LabelStore(tmp_path) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_second_opener_waits_for_the_first_ones_cleanup(tmp_path, monkeypatch):
    """A store opened while another process's open is still cleaning up orphans waits for
    it: it went on at once, stored labels, and their pictures, written after the clean-up
    had listed the known ones, were moved to orphans/ (rows whose picture was gone)."""
    import threading

    LabelStore(tmp_path).close()
    listed, go_on = threading.Event(), threading.Event()
    clean = LabelStore._clean_orphans

    def slow_clean(self):
        listed.set()  # the first opener holds its lock here, as a long walk of images/ does
        go_on.wait(30)
        clean(self)

    monkeypatch.setattr(LabelStore, "_clean_orphans", slow_clean)
    first: list[LabelStore] = []
    a = threading.Thread(target=lambda: first.append(LabelStore(tmp_path)))
    a.start()
    assert listed.wait(30)
    second: list[LabelStore] = []

    def open_and_add():
        second.append(store := LabelStore(tmp_path))
        store.add(point(1), img(1), None, decision())

    b = threading.Thread(target=open_and_add)
    b.start()
    try:
        b.join(0.5)
        assert b.is_alive() and not second, "the second opener went on during the clean-up"
    finally:
        go_on.set()
        a.join(30)
        b.join(30)
    try:
        row = second[0].get(1)
        assert (tmp_path / "images" / row.image).is_file()
        assert not (tmp_path / "orphans").exists()
    finally:
        for store in first + second:
            store.close()


def test_orphans_are_moved_aside_and_temp_files_cleaned_on_open(tmp_path):
    """A picture without a row is moved to orphans/, not deleted: a database restored from
    an older backup has its lost labels' pictures there, and every open deleted them."""
    with LabelStore(tmp_path) as store:
        store.add(point(1), img(1), None, decision())
        kept = store.get(1).image
    images = tmp_path / "images"
    (images / "snap-2-deadbeef0000.jpg").write_bytes(b"\xff\xd8 orphan")
    (images / ".snap-3.jpg.abc.tmp").write_bytes(b"half")
    (images / "notes.txt").write_text("not ours")
    with LabelStore(tmp_path) as store:
        assert sorted(p.name for p in images.iterdir()) == sorted([kept, "notes.txt"])
        orphan = tmp_path / "orphans" / "snap-2-deadbeef0000.jpg"
        assert orphan.read_bytes() == b"\xff\xd8 orphan"
        assert store.count() == 1
        # A second opener is not alone: it must not delete what may be in flight.
        (images / "in-flight-000000000000.jpg").write_bytes(b"\xff\xd8")
        with LabelStore(tmp_path) as other:
            assert other.count() == 1
        assert (images / "in-flight-000000000000.jpg").exists()


def test_a_read_only_open_changes_nothing(tmp_path):
    """`gazeloop labels` (read-only, says the README) opened the store for writing: it
    cleaned 'orphans' (the pictures of rows a restored backup lacks) and upgraded older
    schemas in place."""
    with LabelStore(tmp_path) as store:
        for i in (1, 2):
            store.add(point(i), img(i), None, decision())
    db = sqlite3.connect(tmp_path / DB_NAME)
    with db:
        db.execute("DELETE FROM labels WHERE id = 2")  # as if restored from an older backup
    db.close()

    def stored():  # SQLite's own -wal/-shm aside (empty, removed by the next writer)
        files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
        return {p.name: p.read_bytes() for p in files if not p.name.endswith(("-wal", "-shm"))}

    before = stored()
    with LabelStore(tmp_path, readonly=True) as store:
        assert store.count() == 1 and [r.id for r in store] == [1]
        with pytest.raises(LabelStoreError, match="open read-only"):
            store.add(point(3), img(3), None, decision())
    assert stored() == before
    # A writer that opens after the reader: the reader reads what it commits, never a page
    # half-changed under it (an `immutable` reader did: "database disk image is malformed").
    with LabelStore(tmp_path, readonly=True) as reader:
        assert reader.count() == 1
        with LabelStore(tmp_path) as writer:
            for i in range(4, 400):
                writer.add(point(i), None, None, decision())
        assert reader.count() == 397
    with pytest.raises(LabelStoreError, match="no label store here"):
        LabelStore(tmp_path / "nowhere", readonly=True)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod cannot make a folder read-only (see the ENOSPC test)",
)
def test_read_only_location_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(LabelStoreError, match="read-only"):
            LabelStore(ro / "store")
    finally:
        ro.chmod(0o755)
    store = LabelStore(tmp_path / "rw")
    (tmp_path / "rw" / "images").chmod(0o555)
    try:
        with pytest.raises(LabelStoreError, match="read-only"):
            store.add(point(1), img(1), None, decision())
        assert store.count() == 0
    finally:
        (tmp_path / "rw" / "images").chmod(0o755)
        store.close()


def test_full_disk_while_writing_the_image_stores_nothing(tmp_path, monkeypatch):
    store = LabelStore(tmp_path)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_image", full)
    with pytest.raises(LabelStoreError, match="disk is full") as ei:
        store.add(point(1), img(1), None, decision())
    assert "snap-1" in str(ei.value)
    assert store.count() == 0 and list((tmp_path / "images").iterdir()) == []
    monkeypatch.undo()
    assert store.add(point(1), img(1), None, decision()) == 1  # and it recovers
    store.close()


def test_failed_insert_removes_the_image_it_wrote(tmp_path, monkeypatch):
    store = LabelStore(tmp_path)

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_insert", full)
    with pytest.raises(LabelStoreError, match="disk is full"):
        store.add(point(1), img(1), None, decision())
    assert list((tmp_path / "images").iterdir()) == []
    store.close()


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gazeloop.calibration.labels import OracleLabel, PointObservation
    from gazeloop.calibration.store.labelstore import LabelStore

    root, start = sys.argv[1], int(sys.argv[2])
    store = LabelStore(root)
    rng = np.random.default_rng(start)
    print("ready", flush=True)
    i = start
    while True:
        image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        label = OracleLabel(t_ns=i, snapshot_id=f"s{i}", oracle="crash",
                            observation=PointObservation(xy=(0.5, 0.5)))
        rid = store.add(label, image, (0.4, 0.4), None)
        print(rid, flush=True)
        i += 1
    """
)


@pytest.mark.slow
def test_a_writer_killed_at_a_random_point_loses_at_most_the_label_in_flight(tmp_path):
    rng = random.Random(1234)
    committed: set[int] = set()
    for round_, start in enumerate((0, 100_000)):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = ""
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            # One label committed before the random kill, however slow the disk is.
            first = proc.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            # Read through the same text wrappers as readline() did: it may have
            # buffered the first ids with "ready", and communicate() reads the raw
            # pipes past that buffer, which lost id 1 in a CI run under load.
            out, err = first + proc.stdout.read(), proc.stderr.read()
        assert proc.returncode == -signal.SIGKILL, err
        printed = {int(x) for x in out.split()}
        assert printed, f"round {round_}: the writer committed nothing before the kill"
        committed |= printed

        with LabelStore(tmp_path) as store:
            assert store.integrity_check() == "ok"
            rows = list(store.iter())
            ids = {r.id for r in rows}
            assert committed <= ids  # every label reported committed is there
            assert len(ids - committed) <= 1  # at most the one being reported when killed
            committed |= ids
            for r in rows:  # no partial rows: every one complete, with its image
                assert r.image is not None and r.fast_xy == (0.4, 0.4)
                assert load_image(store.image_path(r)).shape == (120, 160, 3)
            on_disk = {p.name for p in (tmp_path / "images").iterdir()}
            assert on_disk == {r.image for r in rows}  # orphans moved aside, temp files gone


def test_a_store_nobody_may_write_to_is_still_read(tmp_path):
    """A store in a folder the reader may not write to (a backup, a read-only mount, another
    user's): SQLite cannot make the -shm file a WAL reader needs, and `gazeloop labels` said
    'unable to open database file'. Read as another user (as root, chmod alone would not
    stop us), from copies taken while a writer still had labels in its write-ahead log."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="gazeloop-ro-")  # pytest's own is root's alone
    try:
        with LabelStore(tmp_path) as store:
            for i in (1, 2, 3):
                store.add(point(i), img(i), None, decision())
            wal = tmp_path / f"{DB_NAME}-wal"
            assert wal.is_file() and wal.stat().st_size > 0  # not checkpointed yet
            ro = os.path.join(folder, "labels")
            shutil.copytree(tmp_path, ro, ignore=shutil.ignore_patterns("*-shm", ".lock"))
        for d, _, files in os.walk(ro):
            os.chmod(d, 0o555)
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
        os.chmod(folder, 0o755)
        code = textwrap.dedent(f"""
            import os
            from gazeloop.calibration.store.labelstore import LabelStore
            if os.geteuid() == 0:  # imported first: root's Python may be root's alone
                os.setgid(65534)
                os.setuid(65534)
            with LabelStore({ro!r}, readonly=True) as s:
                print(s.count(), len(list(s)))
        """)
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/"
        )
        assert r.returncode == 0 and r.stdout.split() == ["3", "3"], r.stderr
        assert sorted(os.listdir(ro)) == ["images", DB_NAME, f"{DB_NAME}-wal"]  # untouched
    finally:
        for d, _, _ in os.walk(folder):
            os.chmod(d, 0o755)
        shutil.rmtree(folder)
