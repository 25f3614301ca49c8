"""What the oracles say, in one set of types that the oracle worker, the loop, the label store
and the MQTT bridge share.

Screen positions are normalised to [0,1]² (x right, y down). An observation is either a full
point (a click, a calibration target, a stronger gaze model) or a line through a known point
on which the true gaze point lies (Moondream's eye→target direction through the camera
position): the loop corrects only what an observation constrains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(slots=True)
class Snapshot:
    """A frame handed to an oracle, stamped with the frame's own time so the label can be
    compared with the fast path's estimate at that same instant."""

    t_ns: int
    image: np.ndarray  # HxWx3 uint8 BGR, un-mirrored
    snapshot_id: str
    eye_px: tuple[float, float] | None = None  # midpoint between the eyes, image pixels
    pupils_px: tuple[tuple[float, float], tuple[float, float]] | None = None  # (left, right)
    fast_xy: tuple[float, float] | None = None  # fast path's screen point at t (if any)
    target_xy: tuple[float, float] | None = None  # a known target being looked at (if any)
    on_demand: bool = False  # the verify key, not the unattended policy
    meta: dict[str, Any] = field(default_factory=dict)


def _finite(v: tuple[float, ...]) -> tuple[float, ...]:
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"not finite: {v}")
    return v


class PointObservation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["point"] = "point"
    xy: tuple[float, float]

    @field_validator("xy")
    @classmethod
    def _xy_ok(cls, v):
        return _finite(v)


class LineObservation(BaseModel):
    """The gaze point lies on origin + s·direction, s ≥ 0 (a ray, in normalised screen
    units with the screen's aspect already applied to `direction` by the producer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["line"] = "line"
    origin: tuple[float, float]
    direction: tuple[float, float]

    @field_validator("origin")
    @classmethod
    def _origin_ok(cls, v):
        return _finite(v)

    @field_validator("direction")
    @classmethod
    def _unit(cls, v):
        _finite(v)
        n = math.hypot(*v)
        if n < 1e-9:
            raise ValueError("direction has zero length")
        return (v[0] / n, v[1] / n)


Observation = Annotated[PointObservation | LineObservation, Field(discriminator="kind")]


class OracleLabel(BaseModel):
    """One oracle answer about one snapshot. `observation` is None when the oracle had
    nothing usable to say (e.g. Moondream saw the target outside the frame: expected for a
    screen behind the camera, and itself information)."""

    model_config = ConfigDict(extra="forbid")

    t_ns: int  # the snapshot's time, not when the answer came back
    snapshot_id: str
    oracle: str
    oracle_version: str = ""
    observation: Observation | None = None
    confidence: float = Field(1.0, ge=0.0, le=1.0)
    in_frame: bool | None = None
    latency_s: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)  # raw answers, for the store
