"""Oracles that misbehave on purpose, built in `gazeloop.oracle.host` children by import path."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gazeloop.calibration.labels import OracleLabel, PointObservation


class Misbehave:
    name = "misbehave"
    version = "t1"

    def __init__(
        self,
        mode: str = "ok",
        pid_file: str | None = None,
        start_gate: str = "",
        fail_if: str = "",
        first_call_gate: str = "",
    ):
        self.mode = mode
        self.first_call_gate = first_call_gate
        if fail_if and os.path.exists(fail_if):
            raise RuntimeError(f"{fail_if} exists")
        # A slow-loading backend whose load the test ends: the child waits for the gate file
        # and takes it, so each start needs a gate of its own.
        while start_gate:
            try:
                os.remove(start_gate)
                break
            except FileNotFoundError:
                time.sleep(0.01)
        if pid_file:
            with open(pid_file, "w") as f:
                f.write(str(os.getpid()))
        if mode == "fail_init":
            raise RuntimeError("weights not found at /nowhere")

    def label(self, snap, cancel):
        # A cold first call (a model warming up) whose end the test decides: the child says
        # it has the call ("<gate>.entered") and waits for the gate file; later calls don't.
        gate, self.first_call_gate = self.first_call_gate, ""
        if gate:
            Path(f"{gate}.entered").touch()
            while not os.path.exists(gate):
                time.sleep(0.01)
        if self.mode == "hang" or snap.meta.get("hang"):
            if snap.meta.get("entered"):  # the test cancels once the call is really running
                Path(snap.meta["entered"]).touch()
            time.sleep(3600)
        if self.mode == "raise":
            raise ValueError("backend exploded")
        if self.mode == "crash":
            os._exit(3)
        print("noise on stdout must not break the channel", flush=True)
        os.write(1, b"C-level noise too\n")
        h, w = snap.image.shape[:2]
        mean = float(snap.image.mean())
        return OracleLabel(
            t_ns=snap.t_ns,
            snapshot_id=snap.snapshot_id,
            oracle=self.name,
            oracle_version=self.version,
            observation=PointObservation(xy=snap.target_xy or (0.5, 0.5)),
            details={"shape": [h, w], "mean": mean, "pid": os.getpid(), "eye": snap.eye_px},
        )

    def close(self):
        pass
