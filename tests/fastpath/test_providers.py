"""Execution providers: the choice as a table, the flag and its error, and a parity harness.

The harness runs the face networks (`onnx` landmark backend) and the gaze model on the
shared stills under every provider this onnxruntime offers and compares each with CPU. On
this machine onnxruntime offers CPU only (and Azure, which runs nothing locally), so here it
compares CPU with itself, and says so in a warning: the CoreML and CUDA rows are exercised
on a Mac and on the training box. Their tolerances (1 px per landmark, 0.5 degrees of gaze)
allow for the float16 arithmetic CoreML may use on the GPU and Neural Engine; they are not
yet measured numbers.
"""

from __future__ import annotations

import glob
import math
import sys
import warnings

import cv2
import numpy as np
import pytest

from gazeloop.fastpath.features import extract
from gazeloop.fastpath.providers import (
    COREML,
    CPU,
    CUDA,
    EP_NAMES,
    ProviderError,
    available_providers,
    choose_providers,
)
from tests.paths import SHARED

GRID9 = SHARED / "data" / "sessions" / "grid9"
LANDMARK_TOLERANCE_PX = 1.0  # another provider vs CPU, per point (x, y)
GAZE_TOLERANCE_DEG = 0.5  # another provider vs CPU, gaze yaw and pitch
AZURE = "AzureExecutionProvider"

# (request, available, platform) -> providers, or the error's text
CHOICES = [
    ("auto", [AZURE, CPU], "linux", [CPU]),
    ("auto", [CPU], "darwin", [CPU]),
    ("auto", [COREML, CPU], "darwin", [COREML, CPU]),
    ("auto", [COREML, CPU], "linux", [CPU]),  # CoreML only means something on a Mac
    ("auto", [CUDA, CPU], "linux", [CUDA, CPU]),
    ("auto", [CUDA, COREML, CPU], "darwin", [COREML, CPU]),
    ("cpu", [CUDA, CPU], "linux", [CPU]),
    ("cpu", [COREML, CPU], "darwin", [CPU]),
    ("cuda", [CUDA, CPU], "linux", [CUDA, CPU]),
    ("coreml", [COREML, CPU], "darwin", [COREML, CPU]),
    ("cuda", [AZURE, CPU], "linux", "'cuda' (CUDAExecutionProvider) is not available"),
    ("coreml", [CPU], "linux", "available: cpu"),
    ("coreml", [CUDA, CPU], "darwin", "available: cuda, cpu"),
    ("tensorrt", [CPU], "linux", "unknown execution provider 'tensorrt'"),
]


@pytest.mark.parametrize(("request_", "available", "platform", "want"), CHOICES)
def test_choose_providers_table(request_, available, platform, want):
    if isinstance(want, list):
        assert choose_providers(request_, available, platform) == want
    else:
        with pytest.raises(ProviderError) as e:
            choose_providers(request_, available, platform)
        assert want in str(e.value) and "\n" not in str(e.value)


def test_forced_provider_missing_is_a_user_error_naming_it(capsys):
    from gazeloop.tools.cli import main

    missing = next((k for k, v in EP_NAMES.items() if v not in available_providers()), None)
    if missing is None:
        pytest.skip("every provider gazeloop knows is available here")
    rc = main(["bench", "fastpath", "--source", "nowhere.mp4", "--frames", "1", "--ep", missing])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert f"'{missing}'" in err and EP_NAMES[missing] in err and "available: " in err


def test_config_carries_ep():
    from pydantic import ValidationError

    from gazeloop.fastpath.pipeline import FastPathConfig

    assert FastPathConfig().ep == "auto"
    assert FastPathConfig(ep="cpu").ep == "cpu"
    with pytest.raises(ValidationError):
        FastPathConfig(ep="tpu")


# -- parity between providers on the shared stills ----------------------------------------


def _compare(face_task, gaze_onnx, ep: str, stills, ref) -> dict[str, float]:
    """Max abs difference of `ep` against the CPU reference `ref` on `stills`: landmarks
    (px, x/y) and gaze (degrees), the gaze model fed the CPU run's crops."""
    from gazeloop.fastpath.face_onnx import OnnxFaceLandmarker
    from gazeloop.fastpath.gaze_model import GazeModel

    providers = choose_providers(ep, available_providers(), sys.platform)
    face = OnnxFaceLandmarker(face_task, providers=providers)
    gaze = GazeModel(gaze_onnx, providers=providers)
    worst_px = worst_deg = 0.0
    for img, (pts, crops, yp) in zip(stills, ref, strict=True):
        face.reset()
        got = face.detect(img, 0)
        assert got is not None
        worst_px = max(worst_px, float(np.abs(got.points[:, :2] - pts[:, :2]).max()))
        out = gaze.predict(*crops)
        worst_deg = max(worst_deg, math.degrees(float(np.abs(out.yaw_pitch - yp).max())))
    face.close()
    return {"landmarks_px": worst_px, "gaze_deg": worst_deg}


@pytest.mark.slow
def test_providers_agree_with_cpu_on_shared_stills(face_task, gaze_onnx):
    from gazeloop.fastpath.face_onnx import OnnxFaceLandmarker
    from gazeloop.fastpath.gaze_model import GazeModel

    stills = [cv2.imread(f) for f in sorted(glob.glob(str(GRID9 / "*.jpg")))]
    assert len(stills) == 9
    face = OnnxFaceLandmarker(face_task, providers=[CPU])
    gaze = GazeModel(gaze_onnx, providers=[CPU])
    ref = []
    for img in stills:
        face.reset()
        f = face.detect(img, 0)
        feats = extract(f, img)
        crops = (feats.left.crop, feats.right.crop, f.head_ypr)
        ref.append((f.points.copy(), crops, gaze.predict(*crops).yaw_pitch))
    face.close()

    offered = [k for k, v in EP_NAMES.items() if v in available_providers()]
    results = {ep: _compare(face_task, gaze_onnx, ep, stills, ref) for ep in offered}
    assert results["cpu"] == {"landmarks_px": 0.0, "gaze_deg": 0.0}  # deterministic
    for ep, r in results.items():
        assert r["landmarks_px"] <= LANDMARK_TOLERANCE_PX, (ep, r)
        assert r["gaze_deg"] <= GAZE_TOLERANCE_DEG, (ep, r)
    if offered == ["cpu"]:
        warnings.warn(
            "provider parity: onnxruntime offers only CPU here; compared CPU with itself",
            stacklevel=1,
        )


# -- an accelerator "auto" chose is checked against the CPU ---------------------------------


class _Accelerator:
    """A session of an accelerator as onnxruntime gives one (`get_inputs`, `get_outputs`,
    `run`), answering as the CPU's times `gain`: CoreML and CUDA do not run here."""

    def __init__(self, cpu, gain: float) -> None:
        self.cpu, self.gain = cpu, gain

    def get_inputs(self):
        return self.cpu.get_inputs()

    def get_outputs(self):
        return self.cpu.get_outputs()

    def get_providers(self):
        return [COREML, CPU]

    def run(self, names, feed):
        outs = self.cpu.run(names, feed)
        if self.gain is None:  # an operator that loses a dimension
            return [o.reshape(-1) for o in outs]
        return [out * self.gain for out in outs]


def _accelerated(monkeypatch, behave):
    """`sessions._open` where a provider list led by CoreML gets `behave(cpu session)`."""
    from gazeloop.fastpath import sessions

    real = sessions._open

    opens: list[list[str]] = []

    def opened(source, opts, providers):
        opens.append(list(providers))
        cpu = real(source, opts, [CPU])
        return cpu if list(providers) == [CPU] else behave(cpu)

    monkeypatch.setattr(sessions, "_open", opened)
    monkeypatch.setattr(sessions, "_VERDICTS", {})
    return opens


def test_auto_is_marked_so_and_a_forced_provider_is_not():
    from gazeloop.fastpath.providers import AutoChoice

    assert isinstance(choose_providers("auto", [COREML, CPU], "darwin"), AutoChoice)
    assert not isinstance(choose_providers("coreml", [COREML, CPU], "darwin"), AutoChoice)


@pytest.mark.parametrize(
    ("behave", "said"),
    [
        (lambda cpu: _Accelerator(cpu, 1.0 + 1e-2), None),  # float16-sized differences
        (lambda cpu: _Accelerator(cpu, 1.2), "answers it differently from the CPU (output"),
        (lambda cpu: _Accelerator(cpu, float("nan")), "answers it differently"),
        (lambda cpu: _Accelerator(cpu, None), "answers it differently from the CPU (output"),
        (lambda cpu: _raise("CoreML: unsupported op"), "cannot run it (CoreML: unsupported"),
    ],
)
def test_an_accelerator_auto_chose_runs_only_when_it_answers_as_the_cpu(
    gaze_onnx, monkeypatch, caplog, behave, said
):
    """A CoreML that could not open a network stopped the fast path before its first frame,
    and one answering in float16 was never compared with anything. Forced, it is used."""
    from gazeloop.fastpath.providers import AutoChoice
    from gazeloop.fastpath.sessions import SessionOpenError, open_session

    opens = _accelerated(monkeypatch, behave)
    caplog.set_level("WARNING", logger="gazeloop.fastpath.sessions")
    auto = AutoChoice([COREML, CPU])
    got = open_session(gaze_onnx, providers=auto, name="gaze model g")
    if said is None:
        assert isinstance(got, _Accelerator) and not caplog.records
    else:
        assert not isinstance(got, _Accelerator)  # the CPU's own session
        (record,) = caplog.records
        assert record.getMessage().startswith("gaze model g: coreml ")
        assert said in record.getMessage() and "it runs on the CPU" in record.getMessage()
    # Opened again (a hot reload): judged once, only the chosen side opens, nothing said.
    del opens[:]
    again = open_session(gaze_onnx, providers=auto, name="gaze model g")
    assert isinstance(again, _Accelerator) == (said is None) and len(caplog.records) <= 1
    assert opens == [[CPU] if said else [COREML, CPU]]
    forced = [COREML, CPU]
    if said is not None and "cannot run" in said:
        with pytest.raises(SessionOpenError, match="unsupported op"):
            open_session(gaze_onnx, providers=forced)
    else:
        assert isinstance(open_session(gaze_onnx, providers=forced), _Accelerator)


def _raise(text: str):
    from gazeloop.fastpath.sessions import SessionOpenError

    raise SessionOpenError(text)


def test_a_child_takes_the_verdicts_and_opens_only_the_chosen_side(gaze_onnx, monkeypatch):
    """The hot reload's refit runs in a child that opens the same networks: the verdicts
    go with its job (JSON), so the child does not probe the accelerator again."""
    import json

    from gazeloop.fastpath import sessions
    from gazeloop.fastpath.providers import AutoChoice

    opens = _accelerated(monkeypatch, lambda cpu: _Accelerator(cpu, 1.2))
    auto = AutoChoice([COREML, CPU])
    sessions.open_session(gaze_onnx, providers=auto)
    rows = json.loads(json.dumps(sessions.known_verdicts()))
    monkeypatch.setattr(sessions, "_VERDICTS", {})  # the child's own, empty at its start
    sessions.adopt_verdicts(rows)
    del opens[:]
    assert not isinstance(sessions.open_session(gaze_onnx, providers=auto), _Accelerator)
    assert opens == [[CPU]]
