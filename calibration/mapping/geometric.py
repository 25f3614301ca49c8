"""A mapping that knows where the head is: the gaze ray from the eyes, intersected with the
screen plane.

Inputs, five feature columns (by name when `feature_names` hold them, else the first five in
this order): `gaze_yaw`, `gaze_pitch` (the gaze network's angles, radians) and `eye_x_mm`,
`eye_y_mm`, `eye_z_mm` (the midpoint of the eye corners in camera axes, from
`fastpath.eye_geometry`: x image right, y up, z from the face toward the camera, so z < 0).

The network's frame. The gaze network (OMZ gaze-estimation-adas-0002) answers in a frame
whose z axis runs from the eyes to the camera and whose y axis is vertical (its model card
says so; an eye crop cannot tell where in the image it was cut). Checked on the 28 evit
sittings against the true eye→target direction (screen and camera position known to a few
mm): regressing the network's angle on the true camera-axes angle and on the eye–camera
ray's own angle gives the ray a coefficient of −0.7 × the gain for yaw and −1.5 × for pitch
(p1, 18 sittings; 0 would mean camera axes, −1 the ray frame), and the residual spread is
smaller in the ray frame (yaw 3.11° vs 3.17°, pitch 1.90° vs 2.17°). Yaw and pitch are not
swapped (yaw follows screen x with r = −0.90…−1.00 in every sitting, pitch screen y) and
their signs are the fast path's (yaw > 0 toward image right = screen left for un-mirrored
frames; pitch > 0 up). So the corrected angles are turned into a camera-axes ray with the
eye's own frame: z from the eye to the camera, y the camera's up made orthogonal to z,
x = y × z. Those regressions were measured while the fast path told the network the head
pose in camera axes (then the default), which leans its answer part-way back toward camera
axes. With `FastPathConfig.gaze_frame = "ray"` (the default since 2026-12) the fast path tells
it the pose in this same ray frame, so the same eyes anywhere in the image give the same
angles and this mapping stays put when the head turns about the camera (`gazeloop
head-shift` on grid9, image moved 8 % sideways: it misses by 15 px, ridge on the same angles
by 22 px; `docs/baselines/head_shift_grid9.json`), while following moves in depth.

Per frame:
    yaw'   = kappa_yaw   + gain_yaw · yaw     + yaw_from_pitch · pitch
    pitch' = kappa_pitch + gain_pitch · pitch + pitch_from_yaw · yaw
    v = R(eye)ᵀ · (cos pitch' sin yaw', sin pitch', cos pitch' cos yaw')   camera axes
    screen point = where eye + t·v (t > 0) meets the screen plane, in mm, / screen size.
The screen plane holds the camera (a built-in webcam sits in the bezel): the camera is at
(`camera_x_mm`, `camera_y_mm`) from the top-left corner of the screen (x right, y down, as
`ScreenGeometry.camera_mm`), and the plane is turned by `tilt` (radians) about the camera's
x axis (0: the camera looks along the screen's normal, as a built-in one does; > 0: the
screen's bottom edge comes toward the user).

What is fitted:
- always the per-person angular offset (kappa) and gain, yaw and pitch; weak priors: kappa
  0 ± 10°, gains 1 ± 1;
- unless the hyper-parameter `flex` is 0, the two cross terms (0 ± 0.1·flex), which a
  4-corner calibration needs as much as a ridge does (the network's yaw drifts with pitch);
- from `FULL_TARGETS` (6) targets and `flex` > 0, also the camera position (± 10·flex mm
  around `camera_above_mm` above the top edge, centred) and the tilt (0 ± 3°·flex). With
  the head nearly still during a calibration these are weakly identified (a camera offset
  looks like an angular offset) and stay near the laptop prior; they are there for
  calibrations whose head does move (and labels pooled across sittings).
So with 3–5 targets (e.g. 4 corners) at most 6 numbers are fitted (kappa, gains, cross),
the layout fixed; selection chooses `flex` from (0, 1, 3) by nested leave-one-target-out,
and with no target to spare (3) uses 3, which measured best on 4-corner calibrations
(30 of them: c4 and the corners of grid9 and of each evit sitting).

Units: mm inside the geometry; normalised [0,1]² at the edge through `screen_w_mm`,
`screen_h_mm`, the physical size of the visible screen, given as hyper-parameters (through
`fit_select(options=...)`). Unknown, they default to a typical 13–14" laptop: 300 × 190 mm
(≈ 0.2 mm per CSS px at 1500 × 950). For a still head the gains absorb a wrong size; it
scales how far a sideways head move shifts the prediction. The eye depth scales with the
focal length and eye span assumed in the fast path, which the gains absorb too.

Fitting: a robust (soft-L1, scale `ROBUST_MM` = 20 mm on the screen) Levenberg–Marquardt in
numpy, frames weighted so that each target counts as one observation against the priors.
Frames whose ray points away from the screen plane predict NaN. A nested selection's folds
(every target left out in turn) are fitted side by side, each as its own fit would go
(`_Folds`): one fit at a time, a calibration with its earlier sittings spent most of its
time in numpy's per-call overhead on a few dozen frames.

A fit that cannot work raises `GeometryError` (a ValueError) with the reason — eyes not in
front of the camera, targets on one line, gaze angles that do not vary, a gain at or below
zero (mirrored frames, or a pitch that does not follow the targets) — so selection and
callers comparing families drop the mapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gazeloop.calibration.mapping.families import ScreenMapping, _dist

COLUMNS = ("gaze_yaw", "gaze_pitch", "eye_x_mm", "eye_y_mm", "eye_z_mm")
PARAM_NAMES = (
    "kappa_yaw",
    "kappa_pitch",
    "gain_yaw",
    "gain_pitch",
    "yaw_from_pitch",
    "pitch_from_yaw",
    "camera_x_mm",
    "camera_y_mm",
    "tilt",
)
_BASIC = (0, 1, 2, 3)  # what a few targets fit: kappa and gains
# As far as `flex` lets them move: the cross terms between yaw and pitch, and from
# FULL_TARGETS targets the camera position and the tilt.
_CROSS = (4, 5)
_LAYOUT = (6, 7, 8)
_FLEX = _CROSS + _LAYOUT
FULL_TARGETS = 6
ROBUST_MM = 20.0  # soft-L1 scale: residuals beyond this count linearly, not squared
# Prior widths (1 sd); those of _FLEX are multiplied by `flex`.
_PRIOR_SD = np.array(
    [math.radians(10.0), math.radians(10.0), 1.0, 1.0, 0.1, 0.1, 10.0, 10.0, math.radians(3.0)]
)
# Below this a frame is not in front of the camera (eye depth in mm, |eye_z_mm|).
_MIN_DEPTH_MM = 50.0
# Finite-difference steps of the Jacobian: 1e-4 mm for the two positions, 1e-7 elsewhere.
_FD_STEPS = np.where(np.isin(np.arange(len(_PRIOR_SD)), (6, 7)), 1e-4, 1e-7)
_MIN_GAIN = 0.05
# Levenberg–Marquardt stops when an accepted step lowers the cost by less than this share, or
# moves no parameter by more than this many finite-difference steps (1e-5 rad, 0.01 mm: a
# hundredth of a pixel on a laptop screen). Tighter (1e-9, 10 steps) took 6-13 iterations
# where these take 4-9, for the same points to 0.05 px, and a nested selection makes
# thousands of fits (measured on evit p1_s03 and p2_s02, 2026-12-05).
_STOP_COST = 1e-6
_STOP_STEPS = 100.0
# `_Folds` fitted at once: folds × (parameters + 1) × frames at most this, which keeps
# the Jacobian's arrays near 30-50 MB (144 targets of 30 frames: 240-300 MB at the peak).
FOLD_BATCH = 2_000_000


class GeometryError(ValueError):
    """The geometric mapping cannot be fitted to these data; the message says why."""


# --- the geometry --------------------------------------------------------------------------


def ray_frames(eye: np.ndarray) -> np.ndarray:
    """(n, 3, 3): rows are the x, y, z axes of each eye's normalised frame in camera axes
    (z from the eye to the camera, y the camera's up made orthogonal to z, x = y × z), so
    v_ray = R @ v_cam and v_cam = Rᵀ @ v_ray."""
    z = -eye / np.linalg.norm(eye, axis=1, keepdims=True)
    y = np.empty_like(z)
    y[:, 0] = -z[:, 1] * z[:, 0]
    y[:, 1] = 1.0 - z[:, 1] * z[:, 1]
    y[:, 2] = -z[:, 1] * z[:, 2]
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=1)


def camera_rays(yaw: np.ndarray, pitch: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Unit gaze directions in camera axes from angles in each eye's ray frame; yaw and pitch
    (..., n) against frames (n, 3, 3) → (..., n, 3)."""
    cp = np.cos(pitch)
    return (
        (cp * np.sin(yaw))[..., None] * frames[:, 0]
        + np.sin(pitch)[..., None] * frames[:, 1]
        + (cp * np.cos(yaw))[..., None] * frames[:, 2]
    )


def ray_angles(v_cam: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The inverse of `camera_rays`: (yaw, pitch) in each eye's ray frame, radians."""
    v = np.einsum("nij,nj->ni", frames, v_cam)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return np.stack([np.arctan2(v[:, 0], v[:, 2]), np.arcsin(np.clip(v[:, 1], -1, 1))], axis=1)


def screen_mm(
    p: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, eye: np.ndarray, frames: np.ndarray
) -> np.ndarray:
    """Screen points in mm from the top-left corner (x right, y down) for parameters p (9,)
    → (n, 2), or a batch of parameter vectors (k, 9) → (k, n, 2). NaN where the corrected
    gaze ray points away from the screen plane.

    The plane: screen-right is camera −x (image right is the user's left), screen-down is
    (0, −cos tilt, −sin tilt), normal (0, −sin tilt, cos tilt); the camera, at the origin,
    sits at (camera_x_mm, camera_y_mm) in screen coordinates."""
    p = np.asarray(p, dtype=np.float64)
    P = p[..., :, None]  # (..., 9, 1): each parameter broadcasts over the frames
    yw = P[..., 0, :] + P[..., 2, :] * yaw + P[..., 4, :] * pitch
    pt = P[..., 1, :] + P[..., 3, :] * pitch + P[..., 5, :] * yaw
    v = camera_rays(yw, pt, frames)
    c, s = np.cos(P[..., 8, :]), np.sin(P[..., 8, :])
    # eye and ray in screen axes (ex, ey, n) relative to the camera
    ex_e, ey_e = -eye[:, 0], -c * eye[:, 1] - s * eye[:, 2]
    n_e = -s * eye[:, 1] + c * eye[:, 2]
    ex_v, ey_v = -v[..., 0], -c * v[..., 1] - s * v[..., 2]
    n_v = -s * v[..., 1] + c * v[..., 2]
    # the plane is n = 0 through the camera; t > 0 along the ray
    t = -n_e / np.where(n_v > 1e-9, n_v, np.nan)
    t = np.where(t > 0, t, np.nan)
    sx = ex_e + t * ex_v + P[..., 6, :]
    sy = ey_e + t * ey_v + P[..., 7, :]
    return np.stack([sx, sy], axis=-1)


def layout_prior(screen_w_mm: float, camera_above_mm: float) -> np.ndarray:
    """The parameters of a laptop with a centred built-in camera and a calibrated eye."""
    return np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, screen_w_mm / 2, -camera_above_mm, 0.0])


# --- robust Levenberg–Marquardt, one fit or every fold of a selection at once ---------------


def _spd_solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A⁻¹b for a small symmetric positive definite A (k, k) and b (k,), or stacks of them
    (F, k, k) and (F, k). By eigh, not `solve`: LAPACK's LU goes through threaded BLAS, which
    costs milliseconds per 9×9 system on a busy machine (measured 2–7 ms against 36 µs for
    eigh), and a calibration's nested selection makes thousands of them."""
    lam, V = np.linalg.eigh(A)
    lam = np.maximum(lam, 1e-12 * np.maximum(lam[..., -1:], 1e-300))
    Vt_b = np.einsum("...ji,...j->...i", V, b)
    return np.einsum("...ij,...j->...i", V, Vt_b / lam)


@dataclass(eq=False, slots=True)
class _Folds:
    """F weightings of the same frames fitted side by side by one robust Levenberg–Marquardt
    (soft-L1 loss 2(√(1+z²) − 1) on residuals in `ROBUST_MM`, the free parameters' Gaussian
    priors, iteratively reweighted squares, a forward-difference Jacobian), each fold with
    its own damping, stop and failure. One fit is one fold (`GeometricMapping._fit_folds`); a nested
    selection's leave-one-target-out is all its folds at once: tens of thousands of small
    fits, whose cost one at a time was numpy's per-call overhead on a dozen frames."""

    yaw: np.ndarray
    pitch: np.ndarray
    eye: np.ndarray
    frames: np.ndarray
    target_mm: np.ndarray
    W: np.ndarray  # (F, n) each fold's weights, normalised by the caller
    mask: np.ndarray  # (F, n) the frames a fold fits: its own, on the screen at the start
    free: np.ndarray
    prior: np.ndarray
    prior_sd: np.ndarray

    def resid(self, Q: np.ndarray) -> np.ndarray:
        """Residuals in robust units for parameters (F, 9) → (F, n, 2), or (F, k, 9) →
        (F, k, n, 2); zero on frames a fold does not fit."""
        s = screen_mm(Q, self.yaw, self.pitch, self.eye, self.frames)
        mask = self.mask if Q.ndim == 2 else self.mask[:, None]
        return np.where(mask[..., None], (s - self.target_mm) / ROBUST_MM, 0.0)

    def cost(self, R: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """Each fold's soft-L1 data term and its free parameters' priors; inf where a ray it
        fits has left the screen plane, so no step is ever accepted there."""
        z2 = (R**2).sum(axis=-1)
        data = (self.W * (2.0 * (np.sqrt(1.0 + z2) - 1.0))).sum(axis=1)
        prior = ((((Q - self.prior) / self.prior_sd)[:, self.free]) ** 2).sum(axis=1)
        return np.where(np.isfinite(z2).all(axis=1), data + prior, np.inf)

    def normal_equations(self, P: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reweighted squares at P, (A (F, k, k), g (F, k)): for this step the soft-L1
        loss is weighted least squares, the Jacobian by forward differences (one projection
        of every fold's k nudged parameters). Not finite where a fold's rays leave the
        screen plane."""
        free, step = self.free, _FD_STEPS[self.free]
        k = len(free)
        z2 = (R**2).sum(axis=-1)
        rw = np.sqrt(self.W) / (1.0 + z2) ** 0.25  # IRLS weight of soft-L1: √(w ρ'(z²))
        Q = np.repeat(P[:, None, :], k, axis=1)  # (F, k, 9)
        Q[:, np.arange(k), free] += step
        J = (self.resid(Q) - R[:, None]) / step[None, :, None, None]  # (F, k, n, 2)
        Jw = (J * rw[:, None, :, None]).reshape(len(P), k, -1)
        rv = (R * rw[..., None]).reshape(len(P), -1)
        ps = self.prior_sd[free]
        A = Jw @ Jw.transpose(0, 2, 1) + np.diag(1.0 / ps**2)
        g = (Jw @ rv[..., None])[..., 0] + (P[:, free] - self.prior[free]) / ps**2
        return A, g

    def fit(self, max_iter: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """From the prior → (parameters (F, 9), ok (F,): False where a fold's rays left the
        screen plane while fitting, iterations (F,), cost (F,))."""
        F = len(self.W)
        P = np.repeat(self.prior[None].astype(np.float64), F, axis=0)
        R = self.resid(P)
        c = self.cost(R, P)
        ok = np.isfinite(c)
        lam = np.full(F, 1e-3)
        active = ok.copy()
        iterations = np.zeros(F, dtype=np.int64)
        for _ in range(max_iter):
            if not active.any():
                break
            iterations += active
            A, g = self.normal_equations(P, R)
            bad = active & ~(np.isfinite(A).all(axis=(1, 2)) & np.isfinite(g).all(axis=1))
            ok &= ~bad
            active &= ~bad
            A = np.where(active[:, None, None], A, np.eye(len(self.free)))
            g = np.where(active[:, None], g, 0.0)
            P, R, c, lam, moved, small = self._damped_steps(A, g, P, R, c, lam, active)
            # Stopped: converged, or no try lowered the cost (as far as the fit goes).
            active &= moved & ~small
        return P, ok, iterations, c

    def _damped_steps(self, A, g, P, R, c, lam, active):
        """Up to eight tries per fold, damping harder after each that raises its cost. →
        (P, R, c, lam) with each fold's accepted step, which folds moved, and which of
        those converged (the cost no longer moves, or the step is below what matters)."""
        free, step = self.free, _FD_STEPS[self.free]
        di = np.arange(len(free))  # the diagonal LM damps
        pending, small = active.copy(), np.zeros(len(P), dtype=bool)
        for _ in range(8):
            if not pending.any():
                break
            damped = A.copy()
            damped[:, di, di] += lam[:, None] * A[:, di, di]
            delta = -_spd_solve(damped, g)
            Q = P.copy()
            Q[:, free] += delta
            RQ = self.resid(Q)
            cQ = self.cost(RQ, Q)
            acc = pending & (cQ <= c)
            tiny = (np.abs(delta) <= step * _STOP_STEPS).all(axis=1)
            small |= acc & ((c - cQ <= _STOP_COST * (1.0 + c)) | tiny)
            P = np.where(acc[:, None], Q, P)
            R = np.where(acc[:, None, None], RQ, R)
            c = np.where(acc, cQ, c)
            lam = np.where(acc, np.maximum(lam / 10.0, 1e-9), np.where(pending, lam * 10.0, lam))
            pending &= ~acc
        return P, R, c, lam, active & ~pending, small


def _on_screen(p: np.ndarray, yaw, pitch, eye, frames) -> np.ndarray:
    """(n,) whether each frame's ray meets the screen plane at the geometry p."""
    return np.isfinite(screen_mm(p, yaw, pitch, eye, frames)).all(axis=1)


def _fold_batches(n_targets: np.ndarray, frames: int) -> list[np.ndarray]:
    """The folds in batches that `_Folds` fits together: folds with as many targets free the
    same parameters (targets at one place count once, so a fold may keep one more than
    another), and a batch's arrays (folds × parameters × frames) stay near `FOLD_BATCH`
    numbers, so that a calibration pooled over many sittings' videos does not ask for
    gigabytes."""
    size = max(1, FOLD_BATCH // ((len(PARAM_NAMES) + 1) * max(frames, 1)))
    out = []
    for nt in np.unique(n_targets):
        idx = np.flatnonzero(n_targets == nt)
        out += [idx[i : i + size] for i in range(0, len(idx), size)]
    return out


# --- the mapping ---------------------------------------------------------------------------


class GeometricMapping(ScreenMapping):
    name = "geometric"
    # Kappa and gains (four numbers) from three targets' six coordinates; the cross terms
    # then lean on their prior.
    min_targets = 3
    defaults = {
        "flex": 1.0,
        "screen_w_mm": 300.0,
        "screen_h_mm": 190.0,
        "camera_above_mm": 5.0,
    }
    # Only the prior's strength is chosen by selection; the screen is a fact to pass in.
    default_grid = {"flex": [0.0, 1.0, 3.0]}
    no_spare_hyper = {"flex": 3.0}
    default_columns = (0, 1, 2, 3, 4)
    features = COLUMNS

    def __init__(self, columns=None, feature_names=None, **hyper: float) -> None:
        if columns is None and feature_names is not None and set(COLUMNS) <= set(feature_names):
            columns = COLUMNS
        super().__init__(columns=columns, feature_names=feature_names, **hyper)
        if self.columns is None or len(self.columns) != len(COLUMNS):
            raise ValueError(f"geometric reads exactly five columns {COLUMNS}, got {columns}")

    def _check_hyper(self) -> None:
        # camera_above_mm may be negative (a webcam below the screen's top edge)
        above = self.hyper["camera_above_mm"]
        if not math.isfinite(above):
            raise ValueError(f"geometric: camera_above_mm must be finite, got {above}")
        for k, v in self.hyper.items():
            if k != "camera_above_mm" and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"geometric: {k} must be finite and >= 0, got {v}")
        for k in ("screen_w_mm", "screen_h_mm"):
            if self.hyper[k] <= 0:
                raise ValueError(f"geometric: {k} must be > 0, got {self.hyper[k]}")

    # -- fitting

    def _screen(self) -> np.ndarray:
        return np.array([self.hyper["screen_w_mm"], self.hyper["screen_h_mm"]])

    def _prior(self) -> np.ndarray:
        return layout_prior(self.hyper["screen_w_mm"], self.hyper["camera_above_mm"])

    def _free(self, n_targets: int) -> tuple[int, ...]:
        if self.hyper["flex"] == 0:
            return _BASIC
        if n_targets < FULL_TARGETS:
            return _BASIC + _CROSS
        return _BASIC + _CROSS + _LAYOUT

    def _prior_sd(self) -> np.ndarray:
        sd = _PRIOR_SD.copy()
        sd[list(_FLEX)] *= max(self.hyper["flex"], 1e-9)
        return sd

    @staticmethod
    def _unpack(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        eye = X[:, 2:5]
        if not (eye[:, 2] < -_MIN_DEPTH_MM).all():
            bad = int((~(eye[:, 2] < -_MIN_DEPTH_MM)).sum())
            raise GeometryError(
                f"{bad} frame(s) have eye_z_mm >= -{_MIN_DEPTH_MM:g}: the eyes must be in "
                "front of the camera (camera axes, z toward the camera, so eye_z_mm < 0)"
            )
        return X[:, 0], X[:, 1], eye

    def _fold_spread(
        self, X: np.ndarray, Y: np.ndarray, outs: np.ndarray
    ) -> tuple[np.ndarray, str | None]:
        """For each fold (every frame but its `outs` row's): the targets it keeps, and a
        reason one of them cannot be fitted (None: every fold can; targets on a line are
        looked for in every fold first, then a gaze that does not vary). Targets are places:
        told apart as complex numbers (a 1-D unique), their frames counted and their mean
        angles summed per fold by one product with a place indicator."""
        yr = np.round(Y, 9)
        pts, inv = np.unique(yr[:, 0] + 1j * yr[:, 1], return_inverse=True)
        onehot = np.eye(len(pts))[inv.reshape(-1)]  # (frames, places)
        keep = (~outs).astype(np.float64)
        n = keep @ onehot  # (folds, places): the frames each fold keeps at each place
        here = n > 0
        k = here.sum(axis=1)
        mm = np.column_stack([pts.real, pts.imag]) * self._screen()
        mean = (here @ mm) / np.maximum(k, 1)[:, None]
        d = np.where(here[..., None], mm[None] - mean[:, None], 0.0)  # (folds, places, 2)
        cov = np.einsum("fpi,fpj->fij", d, d) / np.maximum(k - 1, 1)[:, None, None]
        ev = np.linalg.eigvalsh(cov)
        if (
            (k < 3).any()
            or (ev[:, 0] < 1e-6 * np.maximum(ev[:, 1], 1e-12)).any()
            or (ev[:, 0] < 1.0).any()
        ):
            return k, (
                "the targets lie on one line: a gain across it cannot be fitted "
                "(use targets that span both screen axes)"
            )
        ang = np.stack([(keep * X[:, j]) @ onehot for j in (0, 1)], axis=-1)
        ang = np.where(here[..., None], ang / np.maximum(n, 1.0)[..., None], 0.0)
        mu = ang.sum(axis=1) / k[:, None]
        sd = np.sqrt(
            (np.where(here[..., None], ang - mu[:, None], 0.0) ** 2).sum(axis=1) / k[:, None]
        )  # (folds, 2): population SD over the places
        still = sd < math.radians(0.05)
        if still.any():
            f = int(np.flatnonzero(still.any(axis=1))[0])
            which = "yaw" if still[f, 0] else "pitch"
            return k, (
                f"the gaze {which} does not vary across targets (sd "
                f"{math.degrees(sd[f].min()):.3f}°): its gain cannot be fitted"
            )
        return k, None

    def _fit(self, X: np.ndarray, Y: np.ndarray, w: np.ndarray) -> None:
        P, n_targets, iterations, cost = self._fit_folds(X, Y, w, np.zeros((1, len(Y)), dtype=bool))
        self.p = P[0]
        self.free = list(self._free(int(n_targets[0])))
        self.info = {"iterations": int(iterations[0]), "cost": float(cost[0])}

    def _fit_folds(
        self, X: np.ndarray, Y: np.ndarray, w: np.ndarray, outs: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Fit each fold (every frame but its `outs` row's; one fold of every frame is the
        mapping's own fit) → (parameters (F, 9), targets kept (F,), iterations (F,), cost
        (F,)); `GeometryError` saying why the first fold that cannot be fitted cannot.
        Weights are normalised to sum to a fold's targets. Frames whose ray misses the
        screen at the prior (a glance far off the screen that the outlier filter let
        through) sit out; most of a fold's missing is a wrong convention, not a glance."""
        n_targets, problem = self._fold_spread(X, Y, outs)
        if problem is not None:
            raise GeometryError(problem)
        yaw, pitch, eye = self._unpack(X)
        frames = ray_frames(eye)
        prior = self._prior()
        hits = _on_screen(prior, yaw, pitch, eye, frames)
        kept = (~outs).sum(axis=1)
        missed = (~outs & ~hits[None, :]).sum(axis=1)
        mostly_missed = kept - missed < 0.5 * kept
        if mostly_missed.any():
            f = int(np.flatnonzero(mostly_missed)[0])
            raise GeometryError(
                f"{int(missed[f])} of {int(kept[f])} gaze rays point away from the screen "
                "plane at the starting geometry; check that frames are un-mirrored and "
                "eye_z_mm < 0 (the face in front of the camera)"
            )
        W = np.where(outs, 0.0, w[None, :])
        W *= (n_targets / W.sum(axis=1))[:, None]
        mask = ~outs & hits[None, :]
        target_mm, sd = Y * self._screen(), self._prior_sd()
        P = np.empty((len(outs), len(PARAM_NAMES)))
        iterations, cost = np.empty(len(outs), dtype=int), np.empty(len(outs))
        for b in _fold_batches(n_targets, len(X)):
            free = np.asarray(self._free(int(n_targets[b[0]])))
            folds = _Folds(yaw, pitch, eye, frames, target_mm, W[b], mask[b], free, prior, sd)
            P[b], ok, iterations[b], cost[b] = folds.fit()
            if not ok.all():
                raise GeometryError("gaze rays leave the screen plane while fitting")
        low = (P[:, 2] < _MIN_GAIN) | (P[:, 3] < _MIN_GAIN)
        if low.any():
            p = P[int(np.flatnonzero(low)[0])]
            if p[2] < _MIN_GAIN:
                raise GeometryError(
                    f"the fitted yaw gain is {p[2]:.2f} (should be near 1): the frames look "
                    "mirrored (a selfie view), or the gaze yaw does not follow the targets"
                )
            raise GeometryError(
                f"the fitted pitch gain is {p[3]:.2f} (should be near 1): the gaze pitch "
                "does not follow the targets"
            )
        return P, n_targets, iterations, cost

    def _predict(self, X: np.ndarray) -> np.ndarray:
        eye = X[:, 2:5]
        # The fit's own limit: eyes nearer the camera than that come from a face size that
        # went wrong, and a ray from there lands anywhere while looking confident.
        ok = eye[:, 2] < -_MIN_DEPTH_MM
        eye = np.where(ok[:, None], eye, np.array([0.0, 0.0, -1.0]))
        s = screen_mm(self.p, X[:, 0], X[:, 1], eye, ray_frames(eye))
        s[~ok] = np.nan
        return s / self._screen()

    # -- persistence

    def _state(self) -> dict[str, Any]:
        return {
            "params": {k: float(v) for k, v in zip(PARAM_NAMES, self.p, strict=True)},
            "free": [PARAM_NAMES[j] for j in self.free],
            "iterations": int(self.info["iterations"]),
            "cost": float(self.info["cost"]),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        params = state["params"]
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise ValueError(f"geometric parameters lack {missing}")
        self.p = np.array([float(params[k]) for k in PARAM_NAMES])
        if not np.isfinite(self.p).all():
            raise ValueError("geometric parameters must be finite")
        self.free = [PARAM_NAMES.index(k) for k in state.get("free", [])]
        self.info = {
            "iterations": int(state.get("iterations", 0)),
            "cost": float(state.get("cost", 0)),
        }

    @property
    def geometry(self) -> dict[str, float]:
        """The fitted parameters by name (angles in radians, positions in mm)."""
        return {k: float(v) for k, v in zip(PARAM_NAMES, self.p, strict=True)}

    # -- selection

    def _loto_target_errors(self, X, Y, w, groups, combos, aspect):
        ids = np.unique(groups)
        scores = np.full((len(combos), len(ids)), np.nan)
        outs = groups[None, :] == ids[:, None]  # (folds, frames): each fold's held-out target
        for ci, c in enumerate(combos):
            m = type(self)(columns=[0, 1, 2, 3, 4], **{**self.hyper, **c})
            per = m._fold_errors(X, Y, w, outs, aspect)
            if per is not None and np.isfinite(per).all():  # a frame placed nowhere rules it out
                scores[ci] = per
        return scores

    def _fold_errors(self, X, Y, w, outs, aspect) -> np.ndarray | None:
        """Each fold's error on its held-out target, as `_fit` on the other targets and
        `_predict` on it would give, the folds fitted together (`_Folds`); None when a fold
        cannot be fitted (`_fit` would raise `GeometryError` for it). Every fold starts from
        the prior, not from a fit on every target: a start that has seen the held-out target
        leaves a trace of it where the iterations stop."""
        try:
            P, n_targets, *_ = self._fit_folds(X, Y, w, outs)
        except GeometryError:
            return None
        yaw, pitch, eye = X[:, 0], X[:, 1], X[:, 2:5]
        frames, screen = ray_frames(eye), self._screen()
        per = np.empty(len(outs))
        for b in _fold_batches(n_targets, len(X)):
            # Each fold's prediction of every frame, its held-out ones kept (`_predict`: the
            # eyes are all in front of the camera, or the fit said no).
            S = screen_mm(P[b], yaw, pitch, eye, frames) / screen
            err = np.where(outs[b], _dist(S - Y, aspect), 0.0)
            per[b] = (err @ w) / (outs[b] @ w)
        return per
