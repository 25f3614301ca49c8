"""Screen geometry: the one place where normalised screen points meet pixels and millimetres.

Inside gazeloop a screen point is normalised to [0,1]² (x right, y down; (0,0) is the top-left
corner of the visible area, (1,1) the bottom-right). Pixels and millimetres appear only at
the edges, always through a `ScreenGeometry`, so a profile fitted at one resolution works at
another (`with_px`).

Pixel convention: pixel coordinates are continuous, 0..w and 0..h across the visible area, so
`to_norm(px) = px / (w, h)`. (A pixel *centre* i+0.5 is therefore not an edge; the labels in
session files are continuous coordinates already.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator


def _out(a: np.ndarray) -> Any:
    """A scalar in gives a float out; an array in gives an array out."""
    return float(a) if np.ndim(a) == 0 else a


def _pairs(a: Any) -> np.ndarray:
    """`a` as a float array of shape (..., 2); the clear error a caller needs otherwise."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != 2:
        raise ValueError(f"expected points of shape (..., 2), got shape {arr.shape}")
    return arr


# No screen is wider or taller than this many pixels (8K is 7680x4320): a size or a label
# beyond it is not of any screen, whatever it was recorded on (a typo, a unit mix-up).
MAX_SCREEN_PX = 16384


class ScreenGeometry(BaseModel):
    """A screen: its size in pixels and, when known, in millimetres, where the camera sits
    and how far the user's eyes are from it.

    `camera_mm` is the camera position relative to the top-left corner of the visible area:
    x right, y down, z toward the user (a webcam in the bezel above the screen has y < 0 and
    z ≈ 0). A 2-tuple (the session manifest's in-plane form) is read with z = 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    px: tuple[int, int]  # (width, height)
    mm: tuple[float, float] | None = None  # (width, height) of the visible area
    camera_mm: tuple[float, float, float] | None = None
    viewing_distance_mm: float | None = None  # eyes to screen plane

    @field_validator("px")
    @classmethod
    def _positive_px(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError(f"screen size in px must be positive, got {v[0]}x{v[1]}")
        if v[0] > MAX_SCREEN_PX or v[1] > MAX_SCREEN_PX:
            raise ValueError(f"screen size {v[0]}x{v[1]} px is beyond any screen")
        return v

    @field_validator("mm")
    @classmethod
    def _positive_mm(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (
            math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] > 0 and v[1] > 0
        ):
            raise ValueError(f"screen size in mm must be positive and finite, got {v}")
        return v

    @field_validator("camera_mm", mode="before")
    @classmethod
    def _camera_xyz(cls, v: Any) -> Any:
        if v is None:
            return v
        v = tuple(v)
        if len(v) == 2:  # the session manifest stores the in-plane position only
            v = (*v, 0.0)
        if len(v) != 3:
            raise ValueError(f"camera_mm must be (x, y) or (x, y, z) in mm, got {v}")
        if not all(math.isfinite(float(c)) for c in v):
            raise ValueError(f"camera_mm must be finite, got {v}")
        return v

    @field_validator("viewing_distance_mm")
    @classmethod
    def _positive_distance(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"viewing_distance_mm must be positive and finite, got {v}")
        return v

    # --- constructors --------------------------------------------------------------------

    @classmethod
    def from_targets(cls, px_points: Any) -> ScreenGeometry:
        """The bounding box of calibration targets as a stand-in screen, for when the real
        screen size is unknown. Its `diag_px` is the basis of `diag_basis="targets"` (the
        targets' extent, smaller than the screen's, so % errors read larger).

        Its origin is still the screen's (0, 0), not the box's corner, so targets normalised
        with it are not spread over [0,1]²; `to_norm` and `to_px` stay exact inverses, so
        fitting in its units and converting back gives the right pixel errors.
        """
        pts = _pairs(px_points).reshape(-1, 2)
        if not np.isfinite(pts).all():
            raise ValueError("target points must be finite")
        distinct = np.unique(pts, axis=0)
        if len(distinct) < 2:
            raise ValueError(
                f"need at least 2 distinct targets for a bounding box, got {len(distinct)}"
            )
        w, h = pts.max(axis=0) - pts.min(axis=0)
        # A row or column of targets has no extent in one axis; 1 px keeps the model valid.
        return cls(px=(max(1, math.ceil(w)), max(1, math.ceil(h))))

    @classmethod
    def from_manifest(cls, manifest: Any, viewing_distance_mm: float | None = None):
        """From anything with `screen_px`, `screen_mm`, `camera_mm` (a `SessionManifest`)."""
        return cls(
            px=manifest.screen_px,
            mm=getattr(manifest, "screen_mm", None),
            camera_mm=getattr(manifest, "camera_mm", None),
            viewing_distance_mm=viewing_distance_mm,
        )

    def with_px(self, w: int, h: int) -> ScreenGeometry:
        """The same physical screen driven at another resolution: mm, camera and distance
        stay, only the pixel grid changes."""
        return type(self).model_validate({**self.model_dump(), "px": (w, h)})

    # --- pixels <-> normalised -----------------------------------------------------------

    @property
    def size_px(self) -> np.ndarray:
        return np.array(self.px, dtype=np.float64)

    def to_norm(self, px_xy: Any) -> np.ndarray:
        """Pixels (..., 2) → normalised (..., 2)."""
        return _pairs(px_xy) / self.size_px

    def to_px(self, norm: Any) -> np.ndarray:
        """Normalised (..., 2) → pixels (..., 2)."""
        return _pairs(norm) * self.size_px

    @staticmethod
    def clamp_norm(xy: Any) -> np.ndarray:
        """Onto the screen: a cursor must not leave it even when a mapping extrapolates."""
        return np.clip(_pairs(xy), 0.0, 1.0)

    # --- physical sizes ------------------------------------------------------------------

    @property
    def aspect(self) -> float:
        """Physical width / height: from mm when known, else from px (square pixels). This
        is what makes a normalised error square (`mapping.fit_select(aspect=...)`)."""
        if self.mm is not None:
            return self.mm[0] / self.mm[1]
        return self.px[0] / self.px[1]

    @property
    def diag_px(self) -> float:
        return math.hypot(*self.px)

    @property
    def diag_mm(self) -> float | None:
        return None if self.mm is None else math.hypot(*self.mm)

    @property
    def px_to_mm_scale(self) -> tuple[float, float] | None:
        """Millimetres per pixel along x and y; None when the mm size is unknown."""
        if self.mm is None:
            return None
        return (self.mm[0] / self.px[0], self.mm[1] / self.px[1])

    def norm_to_mm(self, norm: Any) -> np.ndarray:
        """Normalised (..., 2) → mm from the top-left corner. Raises when mm are unknown."""
        if self.mm is None:
            raise ValueError("the screen size in mm is unknown; cannot convert to mm")
        return _pairs(norm) * np.array(self.mm, dtype=np.float64)

    def mm_to_norm(self, mm_xy: Any) -> np.ndarray:
        if self.mm is None:
            raise ValueError("the screen size in mm is unknown; cannot convert from mm")
        return _pairs(mm_xy) / np.array(self.mm, dtype=np.float64)

    @property
    def camera_norm(self) -> np.ndarray | None:
        """The camera's in-plane position in normalised screen units (outside [0,1]² for a
        bezel camera); None when the camera position or the mm size is unknown."""
        if self.camera_mm is None or self.mm is None:
            return None
        return self.mm_to_norm(self.camera_mm[:2])

    # --- errors --------------------------------------------------------------------------

    def error_pct_diag(self, err_px: Any) -> Any:
        """An error distance in px as % of this screen's diagonal."""
        return _out(100.0 * np.asarray(err_px, dtype=np.float64) / self.diag_px)

    def error_mm(self, err_px: Any) -> Any:
        """An error distance in px as mm (through the diagonal's mm/px, exact for square
        pixels); None when the mm size is unknown."""
        if self.diag_mm is None:
            return None
        return _out(np.asarray(err_px, dtype=np.float64) * (self.diag_mm / self.diag_px))

    def error_deg(self, err_px: Any) -> Any:
        """The visual angle of an error distance, in degrees: 2·atan(e_mm / (2·d)), the angle
        a segment of length e centred on the line of sight subtends at distance d (for the
        small errors of gaze tracking it equals atan(e/d) to well under 1%). None when the mm
        size or the viewing distance is unknown. Scalar in, float out; array in, array out.
        """
        e_mm = self.error_mm(err_px)
        if e_mm is None or self.viewing_distance_mm is None:
            return None
        return _out(np.degrees(2.0 * np.arctan(e_mm / (2.0 * self.viewing_distance_mm))))


def session_screen(
    session: Any,
    *,
    screen_mm: tuple[float, float] | None = None,
    distance_mm: float | None = None,
) -> ScreenGeometry | None:
    """A session's screen (`calibration.store.session.Session`) as evaluation, fitting and
    the promotion gate read it: the size `read_session` resolved (manifest first, then what
    the caller stated; the labels were checked against it), the physical size and camera
    position from the manifest unless given. None when nobody knows the size (the targets
    will stand in)."""
    px = session.screen_px
    if px is None:
        return None
    m = session.manifest
    mm = screen_mm or (m.screen_mm if m else None)
    cam = m.camera_mm if m else None
    return ScreenGeometry(
        px=px,
        mm=mm,
        camera_mm=(*cam, 0.0) if cam is not None and len(cam) == 2 else cam,
        viewing_distance_mm=distance_mm,
    )
