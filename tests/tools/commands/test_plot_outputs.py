"""`eval --plot` and `eval-sittings --plot`: a picture that cannot be written costs no work
and no numbers. A missing folder is refused before anything is read; a write that fails
after the work (its folder removed meanwhile, the disk full) comes after the report is out."""

from __future__ import annotations

import errno
import json

import pytest

from gazeloop.calibration.store.atomic import WriteError
from tests.cli import cli


@pytest.fixture
def failing_picture(monkeypatch):
    """Every picture write fails as a disk that filled during the work would fail it."""

    def full(draw, path):
        raise WriteError(errno.ENOSPC, "No space left on device", str(path))

    from gazeloop.tools.commands import eval_, eval_sittings

    monkeypatch.setattr(eval_, "write_plot", full)
    monkeypatch.setattr(eval_sittings, "write_plot", full)


def _one_line_naming(err: str, folder) -> None:
    (line,) = err.splitlines()
    assert f"the folder {folder} does not exist" in line, err


def test_eval_refuses_a_picture_in_a_missing_folder_before_reading_the_session(tmp_path):
    png = tmp_path / "nodir" / "p.png"
    rc, out, err = cli("eval", tmp_path / "no-session", "--plot", png, "--json")
    assert rc == 2 and out == ""
    _one_line_naming(err, png.parent)  # not the session, which does not exist either


def test_eval_sittings_refuses_a_picture_in_a_missing_folder_before_any_sitting(tmp_path):
    (tmp_path / "s1").mkdir()
    png = tmp_path / "nodir" / "deeper" / "p.png"
    rc, out, err = cli("eval-sittings", tmp_path, "--plot", png)
    assert rc == 2 and out == ""
    _one_line_naming(err, png.parent)


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_eval_prints_its_numbers_before_a_picture_that_fails(
    shared, gaze_onnx, face_task, failing_picture, tmp_path, as_json
):
    png = tmp_path / "p.png"
    grid9 = shared / "data" / "sessions" / "grid9"
    rc, out, err = cli("eval", grid9, "--plot", png, *(["--json"] if as_json else []))
    assert rc == 2 and f"cannot write {png}: No space left" in err, err
    if as_json:
        assert json.loads(out)["targets"] == 9
    else:
        assert "9 targets" in out and "mean " in out
        assert "plot:" not in out  # it was not written


@pytest.mark.slow
def test_eval_sittings_prints_its_numbers_before_a_picture_that_fails(
    shared, gaze_onnx, face_task, failing_picture, tmp_path
):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "p1_s08").symlink_to(shared / "data" / "evit" / "p1_s08")
    png = tmp_path / "p.png"
    rc, out, err = cli("eval-sittings", folder, "--json", "--plot", png)
    assert rc == 2 and f"cannot write {png}: No space left" in err, err
    assert [s["sitting"] for s in json.loads(out)["sittings"]] == ["p1_s08"]
