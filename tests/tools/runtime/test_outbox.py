"""The uplink's outbox on a real label store, no broker: every label taken in once, marked
sent once, kept across reopening; a schema 1 store's `sent` column taken over once; a store
made anew in the same folder noticed."""

from __future__ import annotations

import shutil
import sqlite3
import threading

import numpy as np
import pytest

from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.calibration.store.labelstore import DB_NAME, LabelStore
from gazeloop.tools.runtime.mqtt.outbox import SCHEMA_VERSION, Outbox, OutboxError, outbox_path


def add(store: LabelStore, i: int) -> int:
    label = OracleLabel(
        t_ns=1_000 + i,
        snapshot_id=f"snap-{i}",
        oracle="clicks",
        observation=PointObservation(xy=(0.25, 0.75)),
    )
    return store.add(label, np.full((8, 8, 3), i % 256, np.uint8))


def test_labels_are_taken_in_once_and_leave_when_acknowledged(tmp_path):
    store = LabelStore(tmp_path)
    ids = [add(store, i) for i in range(5)]
    with Outbox(outbox_path(tmp_path)) as ob:
        assert ob.take_in(store) == 5 and ob.take_in(store) == 0
        assert ob.pending(3) == ids[:3]
        assert ob.mark_sent(ids[:2]) == 2
        assert ob.mark_sent(ids[:1]) == 0  # a label acknowledged twice counts once
        assert ob.mark_sent([]) == 0
        new = add(store, 5)
        assert ob.take_in(store) == 1 and ob.pending() == [*ids[2:], new]
    with Outbox(outbox_path(tmp_path)) as ob:  # durable
        assert ob.take_in(store) == 0 and ob.pending() == [*ids[2:], new]
        assert ob.count() == 4  # what `run` reports as pending
    store.close()


def test_a_schema_1_store_hands_over_its_sent_column_once(tmp_path):
    store = LabelStore(tmp_path)
    ids = [add(store, i) for i in range(4)]
    store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("ALTER TABLE labels ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")
        db.executemany("UPDATE labels SET sent = 1 WHERE id = ?", [(i,) for i in ids[::2]])
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = LabelStore(tmp_path)
    with Outbox(outbox_path(tmp_path)) as ob:
        assert ob.take_in(store) == 2 and ob.pending() == ids[1::2]
        assert ob.mark_sent(ids[1::2]) == 2
    # Later labels are pending; the column (still 0 for them, 1 for the first ones) is not
    # read again, so nothing the old uplink sent comes back.
    new = add(store, 4)
    with Outbox(outbox_path(tmp_path)) as ob:
        assert ob.take_in(store) == 1 and ob.pending() == [new]
    store.close()


def test_a_store_made_anew_in_the_folder_starts_the_outbox_over(tmp_path, caplog):
    store = LabelStore(tmp_path)
    for i in range(3):
        add(store, i)
    ob = Outbox(outbox_path(tmp_path))
    ob.take_in(store)
    ob.mark_sent(ob.pending())
    store.close()
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    # With its pictures: a database gone beside them is a lost one, which the store refuses.
    shutil.rmtree(tmp_path / "images")
    store = LabelStore(tmp_path)
    fresh = [add(store, 10 + i) for i in range(2)]  # ids 1 and 2 again, other labels
    assert ob.take_in(store) == 2 and ob.pending() == fresh
    assert "not the one this outbox followed" in caplog.text
    assert "went back" not in caplog.text  # a new store, not one restored from a copy
    ob.close()
    store.close()


def test_a_store_restored_from_an_older_copy_sends_what_came_after_the_restore(tmp_path):
    """A restored store keeps its first label (the anchor holds) but goes back in ids: the
    labels stored after the restore took ids the outbox had passed and were never sent."""
    store = LabelStore(tmp_path)
    for i in range(3):
        add(store, i)
    backup = tmp_path.parent / f"{tmp_path.name}-backup.sqlite3"
    with sqlite3.connect(tmp_path / DB_NAME) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)  # the copy holds labels 1-3
    for i in range(3, 5):
        add(store, i)
    ob = Outbox(outbox_path(tmp_path))
    ob.take_in(store)
    assert ob.mark_sent(ob.pending()) == 5
    store.close()
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    shutil.copyfile(backup, tmp_path / DB_NAME)
    store = LabelStore(tmp_path)  # labels 4 and 5's pictures go to orphans/
    after = [add(store, 100 + i) for i in range(3)]  # ids 4, 5 and 6: new labels
    assert after == [4, 5, 6]
    ob.take_in(store)
    # Every label again (the collector drops the ones it has by their uid): none lost.
    assert ob.pending() == [1, 2, 3, *after]
    ob.mark_sent(ob.pending())
    assert ob.take_in(store) == 0  # and once only
    ob.close()
    store.close()


def test_another_uplink_taking_labels_in_meanwhile_is_not_a_store_gone_back(tmp_path):
    """The label at seen_up_to was read before the transaction, its snapshot in it: another
    uplink on the same file taking labels in between looked like a restored store, and
    every acknowledged label was sent again."""
    store = LabelStore(tmp_path)
    for i in range(3):
        add(store, i)
    a, b = Outbox(outbox_path(tmp_path)), Outbox(outbox_path(tmp_path))
    a.take_in(store)
    a.mark_sent(a.pending())
    add(store, 3)

    class Between:  # a's view of the store: b takes label 4 in between a's read and check
        done = False

        def __getattr__(self, name):
            return getattr(store, name)

        def get(self, label_id):
            row = store.get(label_id)
            if label_id == 3 and not Between.done:
                Between.done = True
                b.take_in(store)
                b.mark_sent(b.pending())
            return row

    assert a.take_in(Between()) == 0 and a.pending() == []
    a.close()
    b.close()
    store.close()


def test_two_outboxes_on_one_file_take_each_label_in_once(tmp_path):
    """Two uplinks (or two processes) sharing the file: SQLite serialises the take-ins."""
    store = LabelStore(tmp_path)
    ids = [add(store, i) for i in range(40)]
    a, b = Outbox(outbox_path(tmp_path)), Outbox(outbox_path(tmp_path))
    counts: list[int] = []
    threads = [threading.Thread(target=lambda o=o: counts.append(o.take_in(store))) for o in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 40 and a.pending(100) == b.pending(100) == ids
    assert a.mark_sent(ids[:10]) == 10 and b.mark_sent(ids[:20]) == 10
    a.close()
    b.close()
    store.close()


def test_newer_schema_and_closed_outbox_are_clear_errors(tmp_path):
    path = outbox_path(tmp_path)
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    with pytest.raises(OutboxError, match="newer than the"):
        Outbox(path)
    ob = Outbox(tmp_path / "other.sqlite3")
    ob.close()
    with pytest.raises(OutboxError, match="closed"):
        ob.pending()
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(tmp_path / "no-such-folder" / "outbox.sqlite3")


@pytest.mark.parametrize("key", ["seen_up_to", "anchor_id", "schema_version"])
def test_a_meta_value_that_is_no_number_is_one_outbox_error(tmp_path, key):
    """'abc' where a number belongs was a ValueError traceback, twice (the uplink's thread
    and `run`), where every other damage to the outbox is one line."""
    store = LabelStore(tmp_path)
    add(store, 0)
    with Outbox(outbox_path(tmp_path)) as ob:
        ob.take_in(store)
    with sqlite3.connect(outbox_path(tmp_path)) as db:
        db.execute("UPDATE meta SET value = 'abc' WHERE key = ?", (key,))
    said = rf"is damaged: its {key} is 'abc', not a number"
    with pytest.raises(OutboxError, match=said), Outbox(outbox_path(tmp_path)) as ob:
        ob.take_in(store)
    store.close()
