"""Where a run trains and in what precision: decided by the device accelerate really uses,
not by CUDA being present (`accelerate launch --cpu` trained in bf16 on the CPU). A CUDA
that is there and does not run is one clear error."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")

from gazeloop.trainer import train as tr  # noqa: E402
from gazeloop.trainer.config import TrainError  # noqa: E402


@pytest.mark.parametrize(
    ("asked", "cuda", "want"),
    [("auto", True, "bf16"), ("auto", False, "no"), ("no", True, "no"), ("bf16", False, "no")],
)
def test_precision_follows_the_device_the_run_uses(monkeypatch, asked, cuda, want):
    # `accelerate launch` sets "no" whenever its config names none: not read as a choice.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert tr._precision(asked, cuda) == want


def test_accelerate_sent_to_the_cpu_is_not_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # accelerate launch --cpu
    assert tr._on_cuda() is False


def test_a_cuda_that_is_there_and_fails_is_one_clear_error(monkeypatch):
    """Told there is a CUDA whose first tensor fails, as a torch build without kernels for
    the GPU does (on a machine whose CUDA works too)."""
    real_ones = torch.ones
    asked = []

    def ones(*a, device=None, **k):
        if device is not None and str(device).startswith("cuda"):
            asked.append(str(device))
            raise RuntimeError("CUDA error: no kernel image is available for execution")
        return real_ones(*a, device=device, **k)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "ones", ones)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(TrainError, match=r"^CUDA is there but does not run \(") as e:
        tr._on_cuda()
    assert str(e.value).endswith("or train on the CPU with ACCELERATE_USE_CPU=1")
    assert "no kernel image" in str(e.value)
    assert asked == ["cuda:3"]  # this process's own GPU, not every rank's cuda:0
