"""Opening a network in onnxruntime: its untyped, many-line complaints become one typed line,
which the face networks and the gaze model each put behind the file's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from gazeloop.fastpath.face_onnx import FaceOnnxError, _Net
from gazeloop.fastpath.gaze_model import GazeModel, ModelLoadError
from gazeloop.fastpath.sessions import SessionOpenError, open_session

NOT_ONNX = b"\x08\x07not an onnx model" * 50


def test_a_file_onnxruntime_cannot_open_is_one_line_with_its_cause(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(NOT_ONNX)
    for model in (bad, NOT_ONNX):
        with pytest.raises(SessionOpenError) as e:
            open_session(model)
        text = str(e.value)
        assert text and "\n" not in text
        assert e.value.__cause__ is not None  # onnxruntime's own error, kept for -v


def test_each_network_names_the_file_it_could_not_open(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(NOT_ONNX)
    with pytest.raises(ModelLoadError) as gaze:
        GazeModel(bad)
    with pytest.raises(FaceOnnxError) as face:
        _Net(bad, "face landmarks", threads=1, providers=None)
    for e in (gaze, face):
        text = str(e.value)
        assert str(bad) in text and "\n" not in text
        assert e.value.__cause__ is None  # `from None`: the one line is the whole story
    assert "cannot load the face landmarks model" in str(face.value)
