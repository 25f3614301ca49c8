"""Where a run trains and in what precision: decided by the device accelerate really uses
and by accelerate's own setting, not by CUDA being present (on a DGX Spark `accelerate
config ... bf16` or `launch --mixed_precision no` changed nothing, and `launch --cpu`
trained in bf16 on the CPU). A CUDA that is there and does not run is one clear error."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")

from gazeloop.trainer import train as tr  # noqa: E402
from gazeloop.trainer.config import TrainError  # noqa: E402


@pytest.mark.parametrize(
    ("asked", "cuda", "env", "want"),
    [
        ("auto", True, None, "bf16"),
        ("auto", False, None, "no"),
        ("auto", True, "no", "no"),  # accelerate config / launch --mixed_precision no
        ("auto", True, "bf16", "bf16"),
        ("auto", True, "fp16", "bf16"),  # not offered: the nearest, said
        ("auto", False, "bf16", "no"),  # the CPU trains in float32
        ("no", True, "bf16", "no"),  # the run's own config wins over accelerate's
        ("bf16", False, None, "no"),
    ],
)
def test_precision_follows_the_device_and_accelerates_setting(monkeypatch, asked, cuda, env, want):
    if env is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    assert tr._precision(asked, cuda) == want


def test_accelerate_sent_to_the_cpu_is_not_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # accelerate launch --cpu
    assert tr._on_cuda() is False


def test_a_cuda_that_is_there_and_fails_is_one_clear_error(monkeypatch):
    """This torch has no CUDA: told there is one, its first tensor fails, as a build
    without kernels for the GPU does."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    with pytest.raises(TrainError, match=r"^CUDA is there but does not run \(") as e:
        tr._on_cuda()
    assert str(e.value).endswith("or train on the CPU with ACCELERATE_USE_CPU=1")
