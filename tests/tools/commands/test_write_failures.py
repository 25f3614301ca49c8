"""Outputs that cannot be written: every command that writes, against a read-only folder, a
full disk and a path under a regular file (issue 16). Each must fail before its work with
one line naming the path and the cause, exit 2, no traceback, and leave the files already
there unchanged.

The tests run as root, for whom a chmod stops nothing: the read-only folder and the full
disk are real tmpfs mounts (read-only remounted; filled to the last page), unmounted in
teardown, and skipped with the reason where mounting is not permitted."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gazeloop.tools.cli import main
from tests.paths import SHARED

GRID9 = str(SHARED / "data/sessions/grid9")
CORNERS4 = str(SHARED / "data/video-corners4")
OLD = b"what was there before\n"


def _mount(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")


def _fill(folder: Path) -> None:
    """Write until the disk refuses: what is left free is less than a page."""
    with open(folder / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.fixture
def place(tmp_path):
    """`place(kind, out_name, is_file)`: a folder of the given kind holding `keep.txt` (and
    the output itself when it is a file that exists), and the output path in it."""
    mounted: list[Path] = []

    def make(kind: str, out_name: str, out_is_file: bool) -> tuple[Path, Path]:
        root = tmp_path / kind
        if kind == "under_file":
            root.mkdir()
            blocker = root / "keep.txt"
            blocker.write_bytes(OLD)
            return root, blocker / "sub" / out_name
        _mount(root, "1m" if kind == "readonly" else "128k")
        mounted.append(root)
        (root / "keep.txt").write_bytes(OLD)
        out = root / out_name
        if out_is_file:
            out.write_bytes(OLD)  # a profile or plot from before must survive
        if kind == "readonly":
            subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        else:
            _fill(root)
        return root, out

    yield make
    for m in reversed(mounted):
        subprocess.run(["umount", "-l", str(m)], check=False)


# (name, argv for an output path OUT and a scratch folder TMP, output is a file)
ROWS = [
    ("import corners4", lambda o, t: ["import", "corners4", CORNERS4, str(o)], False),
    (
        "record",
        lambda o, t: (
            ["record", str(o), "--source", GRID9, "--mirrored", "--frames", "2", "--screen-px"]
            + ["1920", "1080"]
        ),
        False,
    ),
    (
        "calibrate session",
        lambda o, t: (
            ["calibrate", "--headless", "--source", GRID9, "--screen-px", "1920"]
            + ["1080", "--out", str(o), "--profile", str(t / "p.json")]
        ),
        False,
    ),
    (
        "calibrate profile",
        lambda o, t: (
            ["calibrate", "--headless", "--source", GRID9, "--screen-px", "1920"]
            + ["1080", "--out", str(t / "s"), "--profile", str(o)]
        ),
        True,
    ),
    (
        "profile fit",
        lambda o, t: ["profile", "fit", GRID9, "--screen-px", "1920", "1080", "--out", str(o)],
        True,
    ),
    ("eval --plot", lambda o, t: ["eval", GRID9, "--plot", str(o)], True),
    ("eval --report", lambda o, t: ["eval", GRID9, "--report", str(o)], False),
    ("demo --out", lambda o, t: ["demo", "--out", str(o), "--passes", "2"], False),
    ("models build --out", lambda o, t: ["models", "build", "--out", str(o)], False),
    (
        "train --out",
        lambda o, t: ["train", "--data", GRID9, "--screen-px", "1920", "1080", "--out", str(o)],
        False,
    ),
    (
        "export --out",
        lambda o, t: ["export", str(t / "model.safetensors"), "--out", str(o), "--no-register"],
        True,
    ),
    (
        "run's label store",
        lambda o, t: (
            ["run", "--headless", "--source", GRID9, "--oracle", "targets"]
            + ["--frames", "3", "--screen-px", "1920", "1080"]
        ),
        False,
    ),
    (
        "collect --out",
        lambda o, t: ["collect", "--mqtt", "mqtt://127.0.0.1:9", "--out", str(o)],
        False,
    ),
    (
        "fetch --registry",
        lambda o, t: ["fetch", "--mqtt", "mqtt://127.0.0.1:9", "--registry", str(o)],
        False,
    ),
]
KINDS = ["readonly", "full", "under_file"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "filler"
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "argv", "is_file"), ROWS, ids=[r[0] for r in ROWS])
def test_an_output_that_cannot_be_written_is_one_line(
    name, argv, is_file, kind, place, tmp_path, capsys, caplog, monkeypatch
):
    out_name = "out.png" if name == "eval --plot" else ("p.json" if is_file else "out")
    root, out = place(kind, out_name, is_file)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("GAZELOOP_HOME", str(out if name == "run's label store" else scratch))
    before = _snapshot(root)
    caplog.set_level(logging.WARNING)
    rc = main(argv(out, scratch))
    err = capsys.readouterr().err
    lines = err.splitlines() + [r.getMessage() for r in caplog.records]
    assert rc == 2, err
    assert len(lines) == 1, lines
    assert str(out) in lines[0] and "Traceback" not in err
    cause = {"readonly": "Read-only", "full": "No space left", "under_file": "is a file"}[kind]
    assert cause in lines[0]
    assert _snapshot(root) == before  # nothing already stored lost or changed


@pytest.mark.slow  # a child process: the real stderr, whole
def test_a_disk_that_fills_mid_recording_keeps_the_frames_before(tmp_path):
    """Room for a few of grid9's 1920x1080 frames past the check: `record` names the file it
    could not write, and the frames written before form a session that reads back."""
    root = tmp_path / "disk"
    _mount(root, "1m")
    try:
        out = root / "rec"
        env = {**os.environ, "GAZELOOP_HOME": str(tmp_path)}
        argv = ["record", str(out), "--source", GRID9, "--mirrored", "--screen-px", "1920", "1080"]
        r = subprocess.run(
            [sys.executable, "-m", "gazeloop.tools.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        lines = r.stderr.splitlines()
        assert r.returncode == 2, r.stderr
        assert len(lines) == 1 and str(out) in lines[0] and "No space left" in lines[0], lines
        assert "valid session" in lines[0]
        from gazeloop.calibration.store.session import read_session

        session = read_session(out)
        assert 1 <= len(session.items) < 9
        assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_disk_with_too_little_room_is_refused_before_the_work(tmp_path):
    """Not full, but short of what the command will write: said with both sizes."""
    from gazeloop.calibration.store.atomic import WriteError, check_writable

    root = tmp_path / "small"
    _mount(root, "128k")
    try:
        with pytest.raises(WriteError) as e:
            check_writable(root / "demo", folder=True, need_bytes=16 * 1024 * 1024)
        assert str(e.value) == (
            f"cannot write {root / 'demo'}: 128.0 kB free on its disk, about 16.0 MB needed"
        )
        assert list(root.iterdir()) == []  # the probe left nothing behind
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.mark.slow
def test_a_label_store_that_fills_during_run_says_so_in_the_summary(
    shared, tmp_path, capsys, monkeypatch
):
    """The store opens (the check before work passes), then its disk fills: tracking goes
    on, the log says it once, and the summary counts the labels not kept next to those kept,
    which stay readable."""
    from gazeloop.calibration.store.labelstore import LabelStore

    corners4 = str(shared / "data/video-corners4")
    profile = tmp_path / "me.json"
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    argv = ["calibrate", "--headless", "--source", corners4, "--out", str(tmp_path / "c4")]
    assert main([*argv, "--profile", str(profile)]) == 0
    home = tmp_path / "disk"
    _mount(home, "400k")
    try:
        monkeypatch.setenv("GAZELOOP_HOME", str(home))
        capsys.readouterr()
        argv = ["run", "--headless", "--source", corners4, "--oracle", "targets"]
        rc = main([*argv, "--snapshot-every", "0.2", "--profile", str(profile)])
        out = capsys.readouterr().out
        summary = out.splitlines()[-1]
        assert rc == 0 and summary.startswith("gazeloop run: 74 frames;")
        stored = int(summary.split("labels stored ")[1].split()[0])
        lost = int(summary.split(" NOT stored: ")[0].rsplit(maxsplit=1)[1])
        assert lost >= 1 and "the disk is full" in summary
        with LabelStore(home / "users/default/labels") as store:
            assert store.count() == stored
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_report_file_that_cannot_be_written_stops_eval_before_any_is(tmp_path, capsys):
    """A folder named report.html in --report: the report stopped after eval.png and
    report.json were written, and left them."""
    blocked = tmp_path / "rdir" / "report.html"
    blocked.mkdir(parents=True)
    rc = main(["eval", GRID9, "--report", str(tmp_path / "rdir")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(blocked) in err, err
    assert [p.name for p in (tmp_path / "rdir").iterdir()] == ["report.html"]
