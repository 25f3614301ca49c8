"""Which onnxruntime execution providers the fast path's networks run on.

The design says: CoreML on a Mac, CUDA on the training box when those providers are present,
CPU otherwise; `--ep` forces one. The choice is a pure function of what onnxruntime offers,
the platform and the request (`choose_providers`), so every case is a row of a table test
on any machine; `resolve_providers` feeds it this process's facts.

CPU always comes last in a list with another provider: CoreML and CUDA take the nodes they
support and onnxruntime runs the rest on CPU, which is what makes the rebuilt networks run
at all on a provider that lacks one of their operators. A forced provider that this
onnxruntime build does not offer is an error naming it and the ones it does offer, never a
silent fall back to CPU: someone who asked for CUDA and measures CPU would be misled.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
COREML = "CoreMLExecutionProvider"

# What `--ep` accepts, and the onnxruntime provider each name stands for.
EP_NAMES: dict[str, str] = {"cpu": CPU, "cuda": CUDA, "coreml": COREML}
EP_CHOICES = ("auto", *EP_NAMES)


class AutoChoice(list):
    """The providers "auto" chose: a list like any other, which also says that nobody asked
    for them, so `sessions.open_session` may fall back to CPU when the accelerator cannot
    open a network or answers it differently (a forced `--ep` never falls back)."""


class ProviderError(ValueError):
    """A requested execution provider is unknown or not offered by this onnxruntime; the
    message is one line naming it and the available ones."""


def short_name(provider: str) -> str:
    """`CUDAExecutionProvider` -> `cuda` (providers without a short name keep theirs)."""
    for short, full in EP_NAMES.items():
        if full == provider:
            return short
    return provider


def choose_providers(request: str, available: Sequence[str], platform: str) -> list[str]:
    """The provider list for an onnxruntime session.

    `request`: one of EP_CHOICES; `available`: `onnxruntime.get_available_providers()`;
    `platform`: `sys.platform`. "auto" takes CoreML on macOS ("darwin") and CUDA anywhere,
    when offered, before CPU; a named provider is used if offered (with CPU behind it for
    the operators it lacks), else ProviderError.
    """
    if request not in EP_CHOICES:
        raise ProviderError(
            f"unknown execution provider {request!r}; choose one of {', '.join(EP_CHOICES)}"
        )
    if request == "auto":
        if platform == "darwin" and COREML in available:
            return AutoChoice([COREML, CPU])
        if CUDA in available:
            return AutoChoice([CUDA, CPU])
        return AutoChoice([CPU])
    wanted = EP_NAMES[request]
    if wanted not in available:
        offered = ", ".join(short_name(p) for p in available) or "none"
        raise ProviderError(
            f"execution provider {request!r} ({wanted}) is not available in this "
            f"onnxruntime; available: {offered}"
        )
    return [wanted] if wanted == CPU else [wanted, CPU]


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(request: str = "auto") -> list[str]:
    """`choose_providers` for this process: this onnxruntime and this platform."""
    return choose_providers(request, available_providers(), sys.platform)
