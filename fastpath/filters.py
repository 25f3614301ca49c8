"""Smoothing filters for the fast path's output stream.

Every filter has the same small interface (`Filter`): call it with a timestamp in
nanoseconds and a float array of any shape (yaw/pitch in radians, or screen xy), and it
returns the smoothed array of the same shape. Each element is filtered independently.

Shared behaviour, so the caller never has to special-case a filter:

- The first sample (and the first after `reset()`) passes through unchanged.
- `reset()` forgets everything; call it when the face is lost.
- `hold()` is for blinks: the state is kept and the next sample continues from it as if it
  came one frame period after the last one (the last measured period), so a blink gap is
  never seen as motion or as a reason to trust the new sample more.
- A sample with the same timestamp as the last one returns the last output and changes
  nothing; a timestamp earlier than the last one means a new stream (a rewound video, a
  reopened camera), so the filter resets and starts again from that sample.
- A sample with any NaN or infinity returns the last output and changes nothing (before any
  valid sample it returns NaNs). The whole sample is rejected, not just the bad element,
  because a gaze estimate with one broken axis is not trustworthy in the other.
- The returned array is always a fresh copy: callers may keep or modify it.
"""

from __future__ import annotations

import inspect
import math
import operator
from typing import Protocol, runtime_checkable

import numpy as np

# Frame period assumed when a blink hold follows the very first sample, before any period
# has been measured; the fast path runs at 60 Hz or more.
_DEFAULT_DT_S = 1.0 / 60.0
_TWO_PI = 2.0 * math.pi


@runtime_checkable
class Filter(Protocol):
    def __call__(self, t_ns: int, x: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...

    def hold(self) -> None: ...


class _TimedFilter:
    """Time, hold, NaN and shape bookkeeping shared by all filters.

    Subclasses implement `_first(x)` (start from one sample and set `self._out`) and
    `_step(x, dt_s)` (update `self._out` in place), and `_reset_state()`.
    """

    def __init__(self) -> None:
        self._t_ns: int | None = None
        self._dt_s: float | None = None  # last measured sample period
        self._held = False
        self._out: np.ndarray | None = None

    @property
    def last(self) -> np.ndarray | None:
        """The last output (a copy), or None before the first valid sample."""
        return None if self._out is None else self._out.copy()

    def reset(self) -> None:
        self._t_ns = None
        self._dt_s = None
        self._held = False
        self._out = None
        self._reset_state()

    def hold(self) -> None:
        if self._out is not None:
            self._held = True

    def __call__(self, t_ns: int, x: np.ndarray) -> np.ndarray:
        t_ns = operator.index(t_ns)  # a float time is a unit bug (seconds?): refuse it
        x = np.asarray(x, dtype=np.float64)
        out = self._out
        if out is not None and x.shape != out.shape:
            raise ValueError(f"sample shape {x.shape} differs from the stream's {out.shape}")
        if not np.isfinite(x).all():
            return np.full(x.shape, np.nan) if out is None else out.copy()
        last_t = self._t_ns
        if last_t is not None:
            if t_ns == last_t:
                return out.copy()  # type: ignore[union-attr]
            if t_ns < last_t:
                self.reset()
                last_t = None
        if last_t is None:
            self._first(x)
        else:
            if self._held:
                # The blink gap is cut out of the time base: continue one period later.
                dt_s = self._dt_s if self._dt_s is not None else _DEFAULT_DT_S
            else:
                dt_s = (t_ns - last_t) * 1e-9
                self._dt_s = dt_s
            self._step(x, dt_s)
        self._held = False
        self._t_ns = t_ns
        return self._out.copy()  # type: ignore[union-attr]

    def _first(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _step(self, x: np.ndarray, dt_s: float) -> None:
        raise NotImplementedError

    def _reset_state(self) -> None:
        pass


class NoFilter(_TimedFilter):
    """Passthrough with the same time/NaN/hold semantics as the real filters."""

    def _first(self, x: np.ndarray) -> None:
        self._out = x.copy()

    def _step(self, x: np.ndarray, dt_s: float) -> None:
        self._out[...] = x  # type: ignore[index]

    def __repr__(self) -> str:
        return "NoFilter()"


class OneEuroFilter(_TimedFilter):
    """The 1€ filter (Casiez, Roussel, Vogel, CHI 2012), per element.

    min_cutoff (Hz): cutoff at rest; lower removes more jitter and adds more lag.
    beta (s/unit): how fast the cutoff rises with speed; higher reduces lag in motion.
    Its unit is the inverse of the signal's, so a value tuned for radians is not the
    value for normalised screen coordinates.
    d_cutoff (Hz): cutoff of the low-pass on the derivative.

    The sample period comes from the timestamps, as in the authors' reference code.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if not (math.isfinite(min_cutoff) and min_cutoff > 0):
            raise ValueError(f"min_cutoff must be > 0 Hz, got {min_cutoff}")
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not (math.isfinite(d_cutoff) and d_cutoff > 0):
            raise ValueError(f"d_cutoff must be > 0 Hz, got {d_cutoff}")
        super().__init__()
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self._reset_state()

    def _reset_state(self) -> None:
        self._dx_hat: np.ndarray | None = None
        # Scratch buffers so a step allocates nothing.
        self._diff: np.ndarray | None = None
        self._tmp: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff_hz: float, te_s: float) -> float:
        tau = 1.0 / (_TWO_PI * cutoff_hz)
        return 1.0 / (1.0 + tau / te_s)

    def _first(self, x: np.ndarray) -> None:
        self._out = x.copy()  # the filtered value x̂
        # The reference filters a derivative of 0 on the first sample, so its low-pass
        # starts at 0 rather than passing the first derivative through.
        self._dx_hat = np.zeros_like(x)
        self._diff = np.empty_like(x)
        self._tmp = np.empty_like(x)

    def _step(self, x: np.ndarray, dt_s: float) -> None:
        x_hat, dx_hat, diff, tmp = self._out, self._dx_hat, self._diff, self._tmp
        # The derivative uses the previous *filtered* value (the 2023 fix in the reference).
        np.subtract(x, x_hat, out=diff)
        # dx̂ ← dx̂ + a_d·(diff/Te − dx̂)
        np.multiply(diff, 1.0 / dt_s, out=tmp)
        tmp -= dx_hat
        tmp *= self._alpha(self.d_cutoff, dt_s)
        dx_hat += tmp
        # fc = min_cutoff + β·|dx̂|;  a = 1 / (1 + τ/Te) with τ = 1/(2π fc)
        np.abs(dx_hat, out=tmp)
        tmp *= self.beta
        tmp += self.min_cutoff
        tmp *= _TWO_PI * dt_s  # Te/τ
        np.reciprocal(tmp, out=tmp)  # τ/Te
        tmp += 1.0
        np.reciprocal(tmp, out=tmp)  # a
        # x̂ ← x̂ + a·(x − x̂)
        diff *= tmp
        x_hat += diff

    def __repr__(self) -> str:
        return (
            f"OneEuroFilter(min_cutoff={self.min_cutoff}, beta={self.beta}, "
            f"d_cutoff={self.d_cutoff})"
        )


class KalmanFilter(_TimedFilter):
    """Constant-velocity Kalman filter, per element (state: position, velocity).

    Units are those of the signal ("u": radians for gaze angles, the default tuning;
    screen fractions for normalised xy) and seconds:

    process_noise: spectral density q of the white-noise acceleration, u²/s³. Larger
        follows changes faster and smooths less.
    measurement_noise: standard deviation of one measurement, u. The default 0.02 rad
        (about 1.1°) is typical sample-to-sample noise of webcam gaze.
    initial_velocity_std: standard deviation of the unknown velocity at the first sample,
        u/s.

    With the defaults on 60 Hz gaze (measured): the noise at rest falls to about half, a
    steady movement is followed without a lasting lag (a constant-velocity model has no
    steady-state error on a ramp), and a saccade-like step is 90 % reached in about 50 ms
    with about 15 % overshoot, since a saccade is not constant-velocity motion. A smaller
    process_noise smooths more and settles more slowly.
    """

    def __init__(
        self,
        process_noise: float = 1.0,
        measurement_noise: float = 0.02,
        initial_velocity_std: float = 1.0,
    ) -> None:
        if not (math.isfinite(process_noise) and process_noise > 0):
            raise ValueError(f"process_noise must be > 0, got {process_noise}")
        if not (math.isfinite(measurement_noise) and measurement_noise > 0):
            raise ValueError(f"measurement_noise must be > 0, got {measurement_noise}")
        if not (math.isfinite(initial_velocity_std) and initial_velocity_std >= 0):
            raise ValueError(f"initial_velocity_std must be >= 0, got {initial_velocity_std}")
        super().__init__()
        self.process_noise = float(process_noise)
        self.measurement_noise = float(measurement_noise)
        self.initial_velocity_std = float(initial_velocity_std)
        self._reset_state()

    def _reset_state(self) -> None:
        self._v: np.ndarray | None = None
        self._innov: np.ndarray | None = None
        # The covariance depends only on the noise settings and the time steps, never on
        # the measurements, so every element shares one 2×2 matrix (kept as three floats).
        self._p00 = self._p01 = self._p11 = 0.0

    def _first(self, x: np.ndarray) -> None:
        self._out = x.copy()  # position estimate
        self._v = np.zeros_like(x)
        self._innov = np.empty_like(x)
        self._p00 = self.measurement_noise**2
        self._p01 = 0.0
        self._p11 = self.initial_velocity_std**2

    def _step(self, x: np.ndarray, dt_s: float) -> None:
        pos, vel, innov = self._out, self._v, self._innov
        q, dt = self.process_noise, dt_s
        # Predict: x ← F x, P ← F P Fᵀ + Q, with F = [[1, dt], [0, 1]] and the
        # continuous white-noise-acceleration Q = q·[[dt³/3, dt²/2], [dt²/2, dt]].
        pos += vel * dt
        p00 = self._p00 + 2.0 * dt * self._p01 + dt * dt * self._p11 + q * dt**3 / 3.0
        p01 = self._p01 + dt * self._p11 + q * dt * dt / 2.0
        p11 = self._p11 + q * dt
        # Update with H = [1, 0].
        s = p00 + self.measurement_noise**2
        k0, k1 = p00 / s, p01 / s
        np.subtract(x, pos, out=innov)
        pos += k0 * innov
        vel += k1 * innov
        self._p00 = (1.0 - k0) * p00
        self._p01 = (1.0 - k0) * p01
        self._p11 = p11 - k1 * p01

    def __repr__(self) -> str:
        return (
            f"KalmanFilter(process_noise={self.process_noise}, "
            f"measurement_noise={self.measurement_noise}, "
            f"initial_velocity_std={self.initial_velocity_std})"
        )


_FILTERS: dict[str, type[_TimedFilter]] = {
    "one_euro": OneEuroFilter,
    "kalman": KalmanFilter,
    "none": NoFilter,
}
FILTER_NAMES: tuple[str, ...] = tuple(_FILTERS)


def make_filter(name: str = "one_euro", **params: float) -> Filter:
    """Build a filter by its config name ("one_euro", "kalman" or "none")."""
    cls = _FILTERS.get(name)
    if cls is None:
        raise ValueError(f"unknown filter {name!r}; valid names: {', '.join(FILTER_NAMES)}")
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no parameters"
        raise ValueError(f"filter {name!r} does not take {', '.join(unknown)}; it takes: {takes}")
    return cls(**params)
