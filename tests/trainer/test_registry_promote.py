"""Promotions from several processes at once: the gate after a training run, a fetch, a
person's `gazeloop models promote`. Each rewrites `promoted.json` from what it read; without
a lock the later writer drops the other's history entry.

The interleaving is forced, not hoped for: one promoter stops between reading the pointer
and writing it until the other has either finished (no lock: the lost update happens every
time) or is waiting for the lock (it then reads what the first wrote). Two registry objects
in two threads hold two open file descriptions, which flock serialises as it does two
processes."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

onnx = pytest.importorskip("onnx")
fcntl = pytest.importorskip("fcntl", reason="promotions are locked with flock (macOS, Linux)")

from gazeloop.trainer import registry as registry_module  # noqa: E402
from gazeloop.trainer.registry import LOCK_FILE, ModelRegistry  # noqa: E402


def tiny_model(folder: Path, n_weights: int) -> tuple[Path, dict]:
    """The MQTT tests' small valid ONNX and its card, as model "gaze-net"."""
    from tests.tools.runtime.test_mqtt import tiny_model as mqtt_tiny_model

    return mqtt_tiny_model(folder, "gaze-net", n_weights)


def test_concurrent_promotions_keep_both_history_entries(tmp_path, monkeypatch):
    root = tmp_path / "registry"
    a, b = ModelRegistry(root), ModelRegistry(root)
    v1 = a.register(*tiny_model(tmp_path / "m", 100)).version
    v2 = a.register(*tiny_model(tmp_path / "m", 200)).version
    a_has_read, b_is_past = threading.Event(), threading.Event()

    def a_reads_then_waits(model_id: str) -> dict:
        pointer = ModelRegistry._pointer(a, model_id)
        a_has_read.set()
        assert b_is_past.wait(30), "the other promoter neither finished nor waited"
        return pointer

    a._pointer = a_reads_then_waits  # this object only

    def flock(fd: int, op: int) -> None:
        if threading.current_thread().name == "promoter-b" and op & fcntl.LOCK_EX:
            b_is_past.set()  # about to wait for the lock a holds
        fcntl.flock(fd, op)

    lock = SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_UN=fcntl.LOCK_UN)
    monkeypatch.setattr(registry_module, "fcntl", lock, raising=False)
    errors: list[BaseException] = []

    def run(name: str, fn) -> threading.Thread:
        def target() -> None:
            try:
                fn()
            except BaseException as e:  # shown by the test, not lost in the thread
                errors.append(e)

        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        return t

    def promote_b() -> None:
        assert a_has_read.wait(30)
        b.promote(v2, reason="b")
        b_is_past.set()  # done (without a lock it never waits)

    threads = [run("promoter-a", lambda: a.promote(v1, reason="a")), run("promoter-b", promote_b)]
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    reader = ModelRegistry(root)
    history = reader._pointer("gaze-net")["history"]
    assert [h["reason"] for h in history] == ["a", "b"]
    assert reader.promoted().version == v2  # the last writer's, with the other's kept


def test_the_lock_file_is_no_model_and_rollback_takes_it_too(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    v1 = reg.register(*tiny_model(tmp_path / "m", 100), promote=True).version
    v2 = reg.register(*tiny_model(tmp_path / "m", 200), promote=True).version
    assert (reg.root / LOCK_FILE).is_file()
    assert reg.model_ids() == ["gaze-net"] and reg.stray_versions() == []
    assert reg.promoted().version == v2
    assert reg.rollback().version == v1
    assert reg.rollback() is None and reg.promoted() is None


def test_a_promotion_judged_against_another_served_version_is_refused(tmp_path):
    """`expected`: the version the candidate was judged against. Promoted since by someone
    else, the candidate is not promoted over a model it was never compared with."""
    from gazeloop.trainer.registry import ServedChanged

    reg = ModelRegistry(tmp_path / "registry")
    v1 = reg.register(*tiny_model(tmp_path / "m", 100), promote=True).version
    v2 = reg.register(*tiny_model(tmp_path / "m", 200)).version
    v3 = reg.register(*tiny_model(tmp_path / "m", 300)).version
    reg.promote(v2, "gaze-net", reason="a person, meanwhile")
    with pytest.raises(ServedChanged, match="judged against v1, and v2 is served now"):
        reg.promote(v3, "gaze-net", reason="gate", expected=v1)
    assert reg.promoted("gaze-net").version == v2 and len(reg.promotions("gaze-net")) == 2
    reg.promote(v3, "gaze-net", reason="gate", expected=v2)
    assert reg.promoted("gaze-net").version == v3


def test_promoting_the_served_version_again_leaves_one_rollback_to_undo_it(tmp_path):
    """`models promote 2` twice recorded v2 twice: `rollback` then said "v2 is served
    again" and changed nothing."""
    reg = ModelRegistry(tmp_path / "registry")
    v1 = reg.register(*tiny_model(tmp_path / "m", 100), promote=True).version
    v2 = reg.register(*tiny_model(tmp_path / "m", 200)).version
    reg.promote(v2, "gaze-net", reason="a person")
    reg.promote(v2, "gaze-net", reason="the same person, again")
    assert [h["version"] for h in reg.promotions("gaze-net")] == [v1, v2]
    assert reg.rollback("gaze-net").version == v1
    assert reg.promoted("gaze-net").version == v1
