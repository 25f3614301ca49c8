"""Where and with what a number was measured: the machine, the packages that move it, and
the time. Baselines store it beside their numbers; the speed benchmarks print it in their
JSON, since a timing means nothing without its host (README: timings move with the host)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
from importlib import metadata
from typing import Any

PACKAGES = ("numpy", "onnxruntime", "mediapipe", "opencv-contrib-python")


def machine() -> str:
    return f"{os.cpu_count()}-core {platform.machine()} {platform.system()}"


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Python's and each installed package's version (one not installed is left out)."""
    out = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def processor() -> str | None:
    """The processor's model name (Linux's /proc/cpuinfo; elsewhere what Python knows)."""
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("model name"):
                return line.partition(":")[2].strip() or None
    return platform.processor() or None


def measured_on(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The machine, its processor, the versions and the time (UTC, to the second)."""
    return {
        "machine": machine(),
        "processor": processor(),
        "versions": versions(extra),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
