"""`gazeloop run --mqtt` beside `gazeloop collect`, against a real mosquitto: every label
`run` stores reaches the collector's dataset exactly once, also across a broker restart in
the middle of the run; the gaze stream carries capture times on the wall clock, converted
once at the source, for video, session and camera sources.

`run` runs in-process (so the test can hold its frames at chosen points and restart the
broker at a known moment, never at a guessed one); `collect` runs as the real subprocess
a training box would run. Every wait is on a condition, with a generous bound.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gazeloop.calibration.store.session import MANIFEST_NAME, read_session
from gazeloop.fastpath.sources import SessionSource, VideoSource
from gazeloop.tools.cli import main
from gazeloop.tools.runtime.labelled import open_labelled
from gazeloop.tools.runtime.mqtt.gaze import decode_sample
from gazeloop.tools.runtime.mqtt.timebase import SourceClock
from tests.paths import SHARED

# make_broker is the mosquitto fixture (it also puts the needs_broker marker on).
from tests.tools.runtime.test_mqtt import (  # noqa: F401
    Listener,
    make_broker,
    self_signed,
    wait_until,
)

# ruff: noqa: F811 - test parameters named after the imported fixture

pytest.importorskip("aiomqtt", reason="aiomqtt is not installed (pip install -e '.[mqtt]')")

CORNERS4 = SHARED / "data" / "video-corners4"
VIDEO = CORNERS4 / "calibrate.mp4"
GRID9 = SHARED / "data" / "sessions" / "grid9"


# -- the time base, per source -----------------------------------------------------------------


def test_a_session_frame_keeps_its_recorded_time_and_a_video_starts_now():
    with SessionSource(GRID9) as src:
        clock = SourceClock(src)
        got = [(clock.stamp(f.t_ns).epoch_ms, f.name) for f in src]
    assert [t for t, _ in got] == [it.t_ms for it in src.session.items]  # once, not twice

    before = time.time_ns() // 1_000_000
    with VideoSource(VIDEO, max_frames=5) as video:
        clock = SourceClock(video)  # no creation time in this file: placed at the start
        after = time.time_ns() // 1_000_000
        stamps = [clock.stamp(f.t_ns) for f in video]
    assert before <= stamps[0].epoch_ms <= after
    # Media time: the file says 20 fps, so 50 ms apart, however fast it is decoded.
    assert [s.epoch_ms - stamps[0].epoch_ms for s in stamps] == [0, 50, 100, 150, 200]


# -- run and collect, end to end ---------------------------------------------------------------


class Gate:
    """Holds a source's frames: frame i passes once `open_to(n)` with n > i was called."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.limit = 0
        self.waiting_at: int | None = None  # the frame the source is held at

    def open_to(self, n: float) -> None:
        with self.cond:
            self.limit = n
            self.cond.notify_all()

    def passes(self, index: int) -> None:
        with self.cond:
            self.waiting_at = index
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: index < self.limit, 300), "gate never opened"
            self.waiting_at = None

    def held_at(self, index: int) -> bool:
        with self.cond:
            return self.waiting_at == index


def gated_open_labelled(gate: Gate):
    """`open_labelled` whose session source waits at the gate before each frame. A
    subclass, not a wrapper: the clock must still see a SessionSource."""

    class GatedSessionSource(SessionSource):
        def __iter__(self):
            for frame in super().__iter__():
                gate.passes(frame.index)
                yield frame

    def opener(*args, **kw):
        ls = open_labelled(*args, **kw)
        ls.source.close()
        ls.source = GatedSessionSource(ls.session)
        return ls

    return opener


class CollectProcess:
    """`gazeloop collect` as a subprocess; its stdout lines are kept as they come."""

    def __init__(self, url: str, out: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = log
        with log.open("w") as err:  # a file: a pipe nobody reads could fill and block it
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gazeloop", "collect", "--mqtt", url, "--out", str(out)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def subscribed(self, n: int) -> bool:
        return any(f"(connection {n})" in line for line in self.lines)

    def stop(self) -> dict:
        """SIGTERM, as a service manager stops it; returns its summary."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.log.read_text()
        self._reader.join(10)
        return json.loads(self.lines[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def stored_labels(home: Path, after_ms: int = 0) -> int:
    """Labels in run's store (those stored after `after_ms`, unix ms)."""
    db = home / "users" / "default" / "labels" / "labels.sqlite3"
    if not db.is_file():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as c:
        sql = "SELECT COUNT(*) FROM labels WHERE created_ms > ?"
        return int(c.execute(sql, (after_ms,)).fetchone()[0])


def collected(out: Path) -> list[dict]:
    """Every label record the collector wrote (seed records and the ones kept aside)."""
    paths = [p for p in out.glob("*/**/*.json") if p.name != MANIFEST_NAME]
    return [json.loads(p.read_text()) for p in paths]


@pytest.mark.slow
def test_every_label_run_stores_reaches_collect_once_across_a_broker_restart(
    make_broker, c4_profile, tmp_path, monkeypatch, capsys
):
    broker = make_broker()
    home, out = tmp_path / "home", tmp_path / "dataset"
    monkeypatch.setenv("GAZELOOP_HOME", str(home))
    gate = Gate()
    monkeypatch.setattr("gazeloop.tools.commands.run.open_labelled", gated_open_labelled(gate))
    collect = CollectProcess(broker.url, out, tmp_path / "collect.log")
    result: dict = {}
    argv = ["run", "--headless", "--source", str(VIDEO), "--oracle", "targets"]
    argv += ["--mqtt", broker.url, "--profile", str(c4_profile), "--snapshot-every", "0.5"]
    argv += ["--no-watch-models", "--mqtt-wait", "60"]
    runner = threading.Thread(target=lambda: result.setdefault("rc", main(argv)), daemon=True)
    try:
        # The collector's persistent session exists before the first label is sent.
        assert wait_until(lambda: collect.subscribed(1), 60), (collect.lines, broker.log())
        runner.start()

        # 1. Broker up: the first labels arrive as they are stored.
        gate.open_to(25)
        assert wait_until(lambda: gate.held_at(25), 120)
        assert wait_until(lambda: 1 <= stored_labels(home) == len(collected(out)), 60)

        # 2. Broker away: labels are stored and wait in the store (the outbox).
        broker.stop()
        t_stop = time.time_ns() // 1_000_000
        gate.open_to(55)
        assert wait_until(lambda: gate.held_at(55), 120)
        assert wait_until(lambda: stored_labels(home, after_ms=t_stop) >= 1, 60)
        held = stored_labels(home, after_ms=t_stop)

        # 3. Broker back: the held labels go; the collector picks its session up again.
        broker.start()
        assert wait_until(lambda: collect.subscribed(2), 60), collect.lines
        assert wait_until(lambda: stored_labels(home) == len(collected(out)), 60), broker.log()
        n3 = stored_labels(home)

        # 4. The rest of the recording; run waits for its last labels before exiting.
        gate.open_to(float("inf"))
        runner.join(300)
        assert not runner.is_alive() and result.get("rc") == 0
        summary = collect.stop()
    finally:
        gate.open_to(float("inf"))
        collect.kill()
    printed = capsys.readouterr().out
    n = stored_labels(home)
    recs = collected(out)
    uids = [r["label_uid"] for r in recs]
    assert held >= 1 and n > n3 and len(uids) == n and len(set(uids)) == n  # each once
    assert summary["written"] + summary["other"] == n and summary["malformed"] == 0
    assert summary["reconnects"] >= 1 and summary["received"] >= n
    last = printed.strip().splitlines()[-1]
    assert f"labels stored {n}, sent {n}, pending 0" in last, printed

    # A replay's gaze stream waits out the outage too: all 74 frames have a gaze point.
    assert "gaze sent 74, dropped 0" in last, printed

    # What the trainer reads: one session folder, on the recording's own clock.
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert folder.name == "default__default__2560x1440"
    session = read_session(folder, check_images=True)
    assert len(session) == summary["written"] and not session.rejected
    t_ms = [it.t_ms for it in session.items]
    assert min(t_ms) >= 1708071395772 and max(t_ms) <= 1708071403326  # the recording's span
    from gazeloop.trainer.datasets import detect_kind
    from gazeloop.trainer.readers.sessions import SessionReader

    assert detect_kind(out) == "session"
    units, skipped = SessionReader(out).units()
    assert [u.path for u in units] == [folder] and not skipped


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["video", "session"])
def test_the_gaze_stream_carries_capture_times(
    kind, make_broker, c4_profile, tmp_path, monkeypatch, capsys
):
    """A plain video (media time placed at the run's start) and the imported 4-corner
    session (its recorded times): every sample is published, at the replay's own pace,
    with `t` = the frame's capture time in unix seconds."""
    broker = make_broker()
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    source = VIDEO if kind == "video" else c4_profile.parent / "session"
    argv = ["run", "--headless", "--source", str(source), "--frames", "30"]
    argv += ["--mqtt", broker.url, "--profile", str(c4_profile), "--no-watch-models"]
    with Listener(broker.url, "gazeloop/+/+/gaze") as rx:
        before = time.time()
        assert main(argv) == 0
        after = time.time()
        assert wait_until(lambda: len(rx.messages) >= 30, 30)
    msgs = sorted((decode_sample(p) for _, p in rx.messages), key=lambda m: m.seq)
    assert [m.seq for m in msgs] == list(range(1, 31))
    t = [m.t for m in msgs]
    if kind == "video":
        assert before - 1 <= t[0] <= after  # placed at the run's start, this year
        assert [round((x - t[0]) * 1000) for x in t] == [50 * i for i in range(30)]
    else:
        items = read_session(source).items[:30]
        assert [m.t_ms for m in msgs] == [it.t_ms for it in items]
    assert all(0 <= m.age_ms < 60_000 for m in msgs)
    assert "gaze sent 30, dropped 0" in capsys.readouterr().out


@pytest.mark.slow
def test_labels_a_run_could_not_send_go_with_the_next_run(
    make_broker, c4_profile, tmp_path, monkeypatch, capsys
):
    """The store is the outbox across runs: a run that ends with the broker away says what
    it kept back; the next `run --mqtt`, even without an oracle, sends it."""
    from gazeloop.tools.runtime.mqtt.labels import Collector

    broker = make_broker()
    broker.stop()
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    base = ["run", "--headless", "--source", str(VIDEO), "--profile", str(c4_profile)]
    base += ["--mqtt", broker.url, "--no-watch-models"]
    argv = [*base, "--oracle", "targets", "--snapshot-every", "0.5", "--mqtt-wait", "1"]
    assert main([*argv, "--frames", "40"]) == 0
    out = capsys.readouterr().out
    k = stored_labels(tmp_path / "home")
    assert k >= 1 and f"{k} labels not sent yet" in out
    assert f"labels stored {k}, sent 0, pending {k}" in out.strip().splitlines()[-1]

    broker.start()
    subscribed = threading.Event()
    collector = Collector(
        broker.url, tmp_path / "dataset", on_subscribed=lambda n: subscribed.set()
    )
    collector.start()
    try:
        assert subscribed.wait(30), broker.log()
        assert main([*base, "--frames", "5", "--mqtt-wait", "60"]) == 0
        assert wait_until(lambda: collector.stats.written + collector.stats.other == k, 30)
    finally:
        collector.close()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"labels stored 0, sent {k}, pending 0" in last and "gaze sent 5, dropped 0" in last
    assert collector.stats.duplicates == 0 and collector.stats.malformed == 0


@pytest.mark.slow
def test_run_streams_to_a_tls_broker_with_the_ca_file(
    make_broker, c4_profile, tmp_path, monkeypatch, capsys
):
    """The README says every MQTT command takes --ca-file and --insecure; `run` took
    neither."""
    cert, key = self_signed(tmp_path)
    broker = make_broker(tls=(cert, key))
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    base = ["run", "--headless", "--source", str(VIDEO), "--profile", str(c4_profile)]
    base += ["--no-watch-models", "--frames", "5"]
    assert main([*base, "--mqtt", broker.url, "--ca-file", str(cert), "--mqtt-wait", "30"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "gaze sent 5, dropped 0" in last, last
    assert main([*base, "--ca-file", str(cert)]) == 2  # for a broker: said before anything
    assert "give --mqtt URL too" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "says"), [(["1920"], "is W H in pixels"), (["0", "5"], "must be positive")]
)
def test_collect_screen_px_is_w_h_like_every_command_and_wxh_still_reads(
    tmp_path, capsys, given, says
):
    from gazeloop.tools.commands.mqtt import _screen

    assert _screen(["1920", "1080"]) == _screen(["1920x1080"]) == (1920, 1080)
    argv = ["collect", "--mqtt", "mqtt://127.0.0.1:1", "--out", str(tmp_path / "o")]
    assert main([*argv, "--screen-px", *given]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was made
