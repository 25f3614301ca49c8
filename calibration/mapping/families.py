"""Calibration mappings: a feature matrix X (n×d) → normalised screen points Y (n×2).

Four mappings, one interface (`fit`, `predict`, `params`, `from_params`):

- `ridge` (default): standardised features, ridge with an unpenalised intercept.
- `poly2`: second-order polynomial (squares and cross terms) of the standardised features,
  re-standardised, then ridge.
- `rbf`: RBF kernel ridge on the standardised features, unpenalised intercept.
- `affine`: least squares affine map from two gaze angles (columns 0, 1 by convention).

Objective of the ridge family: Σ wᵢ‖yᵢ − f(xᵢ)‖² / Σ wᵢ + α‖β‖², i.e. the penalty is relative
to the *mean* loss so one alpha grid means the same on 50 frames and on 5,000; with
standardised features the Gram matrix then has a unit diagonal and α = 1e3 is "predict the
mean" while α = 1e-3 is near least squares. The RBF penalty is scaled the same way
(λ = α Σ wᵢ) and its kernel is exp(−γ‖Δu‖²/d), d the number of non-constant features, so
the γ grid does not depend on how many features there are.

Hyper-parameters are chosen in `selection.py`, by leave-one-TARGET-out, never
leave-one-frame-out, and `loto_predict` is the nested outer loop whose held-out target never
reaches any fit. Errors in selection are Euclidean in normalised units with x scaled by the
screen's aspect ratio (w/h), so a unit is one screen height in both axes; each target counts
once (mean over its frames, then mean over targets).

Speed: the linear mappings never refit per fold. Each target's moment matrices of the
monomials (1, u, uᵢuⱼ) are summed once; a fold's moments are total − held-out, and the fold's
own standardisation is an exact linear transform of them, so every fold and every alpha costs
one small eigendecomposition. RBF folds use the exact group-deletion identity for penalised
least squares (y_g − f₋g(x_g) = (I − H_gg)⁻¹(y_g − ŷ_g)) from one eigendecomposition of the
kernel per gamma.

Parameters are JSON (lists and floats): profiles must be safe to load from others.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

PARAMS_FORMAT = "gazeloop.mapping"
PARAMS_VERSION = 1
DEFAULT_MAPPING = "ridge"
# poly2 grows as d²/2: 32 features are already 561 terms.
MAX_POLY2_FEATURES = 32

# Fold variance below this (features are pre-standardised, so variances are O(1)) means the
# feature is constant in that fold and carries nothing but rounding noise.
_VAR_TOL = 1e-12
# Relative eigenvalue floor for the unregularised (alpha = 0) pseudo-inverse.
_EIG_RTOL = 1e-10


class NotEnoughTargets(ValueError):
    """Too few distinct calibration targets for a mapping (or for measuring it)."""

    def __init__(self, name: str, needed: int, given: int, what: str = "fit") -> None:
        self.name, self.needed, self.given = name, needed, given
        self.what = what
        super().__init__(
            f"mapping '{name}' needs at least {needed} distinct targets to {what}, got {given}"
        )

    def __reduce__(self):
        # rebuilt from its fields: the default passes only the message to __init__, which
        # fails where it is unpickled (a worker's error sent back to the main process)
        return type(self), (self.name, self.needed, self.given, self.what)


class NotFitted(RuntimeError):
    pass


# --- input checks --------------------------------------------------------------------------


def _as_x(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be (n, d), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X has NaN or infinite values (drop those frames before fitting)")
    return X


def _prepare(
    X: Any, Y: Any, sample_weight: Any = None, groups: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Validated float arrays; frames of zero weight dropped (they cannot change any fit)."""
    X = _as_x(X)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] != 2:
        raise ValueError(f"Y must be (n, 2) normalised screen points, got shape {Y.shape}")
    if len(X) != len(Y) or len(X) == 0:
        raise ValueError(f"X and Y need the same non-zero number of rows: {len(X)}, {len(Y)}")
    if not np.isfinite(Y).all():
        raise ValueError("Y has NaN or infinite values")
    if sample_weight is None:
        w = np.ones(len(X))
    else:
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if len(w) != len(X) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("sample_weight must be n finite non-negative numbers")
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if len(groups) != len(X):
            raise ValueError(f"groups has {len(groups)} entries for {len(X)} frames")
    keep = w > 0
    if not keep.any():
        raise ValueError("every sample weight is zero")
    if not keep.all():
        X, Y, w = X[keep], Y[keep], w[keep]
        groups = None if groups is None else groups[keep]
    return X, Y, w, groups


def _count_targets(Y: np.ndarray, groups: np.ndarray | None) -> int:
    if groups is not None:
        return len(np.unique(groups))
    # Without ids, a target is a distinct screen point (labels repeat exactly per target).
    return len(np.unique(np.round(Y, 9), axis=0))


def _check_aspect(aspect: float) -> float:
    aspect = float(aspect)
    if not (math.isfinite(aspect) and aspect > 0):
        raise ValueError(f"aspect must be a positive number (w/h), got {aspect}")
    return aspect


def _dist(diff: np.ndarray, aspect: float) -> np.ndarray:
    return np.hypot(diff[..., 0] * aspect, diff[..., 1])


def _logspace(lo: float, hi: float, n: int) -> list[float]:
    # 12 digits: 0.001 rather than 0.0010000000000000002 in profiles and reports
    return [float(f"{v:.12g}") for v in np.logspace(lo, hi, n)]


def _floats(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


# --- standardisation and the monomial algebra ----------------------------------------------


def _check_scale(scale: np.ndarray) -> None:
    """A stored standardisation: `_standardise_stats` never gives a scale of 0, and a
    damaged file with one would divide by zero on every frame. (NaN and infinity anywhere
    in the parameters are named by `profile show`.)"""
    if (scale == 0).any():
        raise ValueError(f"scale {np.flatnonzero(scale == 0).tolist()} is 0 (a fit never stores 0)")


def _standardise_stats(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and std; constant columns get scale 1 (they stay ~0 after centring)."""
    sw = w.sum()
    mean = w @ X / sw
    std = np.sqrt(np.maximum(w @ (X - mean) ** 2 / sw, 0.0))
    const = std <= 1e-12 * np.abs(mean)
    return mean, np.where(const, 1.0, std)


@functools.lru_cache(maxsize=16)
def _pairs(d: int) -> tuple[np.ndarray, np.ndarray]:
    # cached: poly2 predicts per frame and must not rebuild its index arrays each time
    i, j = np.triu_indices(d)
    i.flags.writeable = j.flags.writeable = False
    return i, j


def _monomials(U: np.ndarray, degree: int) -> np.ndarray:
    """[1, u, uᵢuⱼ (i ≤ j)] per row."""
    one = np.ones((len(U), 1))
    if degree == 1:
        return np.hstack([one, U])
    i, j = _pairs(U.shape[1])
    return np.hstack([one, U, U[:, i] * U[:, j]])


def _transform(a: np.ndarray, b: np.ndarray, degree: int) -> np.ndarray:
    """T with monomials(a·u + b) = T @ monomials(u): a fold's own standardisation applied to
    moments taken once, so no fold ever re-reads the data."""
    d = len(a)
    r = np.arange(d)
    if degree == 1:
        T = np.zeros((d + 1, d + 1))
    else:
        i, j = _pairs(d)
        q = len(i)
        T = np.zeros((1 + d + q, 1 + d + q))
        rows = 1 + d + np.arange(q)
        # (aᵢuᵢ + bᵢ)(aⱼuⱼ + bⱼ) = aᵢaⱼuᵢuⱼ + aᵢbⱼuᵢ + aⱼbᵢuⱼ + bᵢbⱼ
        T[rows, rows] = a[i] * a[j]
        T[rows, 0] = b[i] * b[j]
        np.add.at(T, (rows, 1 + i), a[i] * b[j])
        np.add.at(T, (rows, 1 + j), a[j] * b[i])
    T[0, 0] = 1.0
    T[1 + r, 0] = b
    T[1 + r, 1 + r] = a
    return T


def _solve_moments(
    M: np.ndarray, Q: np.ndarray, d: int, degree: int, alphas: np.ndarray
) -> np.ndarray:
    """Ridge weights on monomials(u) for every alpha, from the weighted moments
    M = Σ w m mᵀ and Q = Σ w m yᵀ of one training set: standardise u (this set's stats),
    expand, standardise the expansion, ridge with an unpenalised intercept. → (A, p, 2)."""
    sw = M[0, 0]
    mean_u = M[0, 1 : 1 + d] / sw
    var_u = np.diag(M)[1 : 1 + d] / sw - mean_u**2
    ok = var_u > _VAR_TOL
    a = np.where(ok, 1.0 / np.sqrt(np.where(ok, var_u, 1.0)), 0.0)  # a = 0 drops a feature
    T = _transform(a, -a * mean_u, degree)
    Mz = T @ M @ T.T
    Qz = T @ Q
    mean_f = Mz[0, 1:] / sw
    C = Mz[1:, 1:] / sw - np.outer(mean_f, mean_f)
    var_f = np.diag(C)
    okf = var_f > _VAR_TOL
    inv_s = np.where(okf, 1.0 / np.sqrt(np.where(okf, var_f, 1.0)), 0.0)
    R = C * np.outer(inv_s, inv_s)
    ybar = Q[0] / sw
    r = (Qz[1:] / sw - np.outer(mean_f, ybar)) * inv_s[:, None]
    lam, V = np.linalg.eigh(R)
    lam = np.maximum(lam, 0.0)
    Vr = V.T @ r
    alphas = np.asarray(alphas, dtype=np.float64)
    floor = _EIG_RTOL * max(float(lam.max(initial=0.0)), 1e-300)
    ridge_inv = 1.0 / (lam[None, :] + np.where(alphas > 0, alphas, 1.0)[:, None])
    pinv = np.where(lam > floor, 1.0 / np.maximum(lam, floor), 0.0)  # alpha = 0: least squares
    inv = np.where(alphas[:, None] > 0, ridge_inv, pinv[None, :])
    B = V @ (inv[:, :, None] * Vr[None])  # (A, q, 2) on the standardised expansion
    coef = B * inv_s[None, :, None]
    intercept = ybar[None, :] - mean_f @ coef
    Wz = np.concatenate([intercept[:, None, :], coef], axis=1)
    return T.T @ Wz


# --- the interface -------------------------------------------------------------------------


class ScreenMapping:
    """Features → normalised screen points. Subclasses set the class attributes and the
    `_fit`/`_predict`/state methods; everything users call lives here."""

    name: ClassVar[str]
    min_targets: ClassVar[int]
    defaults: ClassVar[dict[str, float]] = {}
    default_grid: ClassVar[dict[str, list[float]]] = {}
    # What a fold with no target to spare uses, where nested selection cannot run (see
    # `selection.fit_select`); None: the defaults.
    no_spare_hyper: ClassVar[dict[str, float] | None] = None
    default_columns: ClassVar[tuple[int, ...] | None] = None
    # The named features a mapping needs to read (it models them, not any matrix); None: it
    # takes whatever feature columns it is given.
    features: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        columns: Sequence[int | str] | None = None,
        feature_names: Sequence[str] | None = None,
        **hyper: float,
    ) -> None:
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"mapping '{self.name}' has no hyper-parameter(s) {sorted(unknown)}; "
                f"it takes {sorted(self.defaults) or 'none'}"
            )
        self.hyper: dict[str, float] = {k: float(v) for k, v in {**self.defaults, **hyper}.items()}
        self._check_hyper()
        self.feature_names = None if feature_names is None else [str(n) for n in feature_names]
        self.columns = self._resolve_columns(columns)
        self.n_features: int | None = None  # of the X given to fit (before column choice)

    # -- configuration

    def _check_hyper(self) -> None:
        for k, v in self.hyper.items():
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{self.name}: {k} must be finite and >= 0, got {v}")

    def _resolve_columns(self, columns: Sequence[int | str] | None) -> list[int] | None:
        if columns is None:
            columns = self.default_columns
        if columns is None:
            return None
        out = []
        for c in columns:
            if isinstance(c, str):
                if self.feature_names is None or c not in self.feature_names:
                    raise ValueError(
                        f"{self.name}: column '{c}' is not among feature_names {self.feature_names}"
                    )
                out.append(self.feature_names.index(c))
            else:
                if int(c) < 0:
                    raise ValueError(f"{self.name}: column indices must be >= 0, got {c}")
                out.append(int(c))
        if len(set(out)) != len(out):
            raise ValueError(f"{self.name}: repeated columns {out}")
        return out

    def _select(self, X: np.ndarray) -> np.ndarray:
        if self.columns is None:
            return X
        if max(self.columns) >= X.shape[1]:
            raise ValueError(
                f"{self.name}: reads columns {self.columns} but X has {X.shape[1]} features"
            )
        return X[:, self.columns]

    # -- fitting and predicting

    def fit(self, X: Any, Y: Any, sample_weight: Any = None, groups: Any = None) -> ScreenMapping:
        """Fit on frames X (n×d) → Y (n×2). `groups` (target ids) only count the targets;
        without them a target is a distinct Y point."""
        X, Y, w, groups = _prepare(X, Y, sample_weight, groups)
        given = _count_targets(Y, groups)
        if given < self.min_targets:
            raise NotEnoughTargets(self.name, self.min_targets, given)
        self.n_features = X.shape[1]
        self._fit(self._select(X), Y, w)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """(n, d) → (n, 2); a single (d,) feature vector → (2,)."""
        if not self.fitted:
            raise NotFitted(f"mapping '{self.name}' is not fitted")
        X = np.asarray(X, dtype=np.float64)
        single = X.ndim == 1
        X2 = X[None, :] if single else X
        if X2.ndim != 2 or X2.shape[1] != self.n_features:
            raise ValueError(
                f"{self.name}: expected features of width {self.n_features}, got shape {X.shape}"
            )
        out = self._predict(self._select(X2))
        return out[0] if single else out

    @property
    def fitted(self) -> bool:
        return self.n_features is not None

    # -- persistence

    def params(self) -> dict[str, Any]:
        """Everything `from_params` needs, as JSON-safe lists, floats, ints and strings."""
        if not self.fitted:
            raise NotFitted(f"mapping '{self.name}' is not fitted")
        return {
            "format": PARAMS_FORMAT,
            "version": PARAMS_VERSION,
            "name": self.name,
            "hyper": dict(self.hyper),
            "columns": self.columns,
            "feature_names": self.feature_names,
            "n_features": self.n_features,
            "state": self._state(),
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ScreenMapping:
        """The identical predictor back. Called on the base class it dispatches on the name."""
        if not isinstance(params, dict) or params.get("format") != PARAMS_FORMAT:
            raise ValueError(f"not gazeloop mapping parameters (format {PARAMS_FORMAT!r})")
        if params.get("version") != PARAMS_VERSION:
            raise ValueError(
                f"unsupported mapping parameters version {params.get('version')} "
                f"(this gazeloop reads version {PARAMS_VERSION})"
            )
        name = params.get("name")
        target = mapping_class(name)
        if cls is not ScreenMapping and target is not cls:
            raise ValueError(f"parameters are for mapping '{name}', not '{cls.name}'")
        try:
            m = target(
                columns=params.get("columns"),
                feature_names=params.get("feature_names"),
                **params["hyper"],
            )
            m.n_features = int(params["n_features"])
            m._load_state(params["state"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad parameters for mapping '{name}': {e}") from e
        return m

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v:g}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({hyper}{'' if self.fitted else ', unfitted'})"

    # -- family hooks

    def _fit(self, X: np.ndarray, Y: np.ndarray, w: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _loto_scores(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        w: np.ndarray,
        groups: np.ndarray,
        combos: list[dict[str, float]],
        aspect: float,
    ) -> np.ndarray:
        """Mean per-target LOTO error of each hyper-parameter combination on (X, Y)."""
        per = self._loto_target_errors(X, Y, w, groups, combos, aspect)
        return per.mean(axis=1)  # NaN where a combination could not run

    def _loto_target_errors(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        w: np.ndarray,
        groups: np.ndarray,
        combos: list[dict[str, float]],
        aspect: float,
    ) -> np.ndarray:
        """Each combination's LOTO error per target (sorted ids): (combinations, targets).
        Comparing candidates target by target (paired) needs these, not only the mean."""
        raise NotImplementedError


def _target_means(err: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the last axis (a target's frames)."""
    return err @ w / w.sum()


# --- ridge, poly2, affine ------------------------------------------------------------------


class _LinearMapping(ScreenMapping):
    degree: ClassVar[int] = 1

    def _alpha(self) -> float:
        return self.hyper["alpha"]

    def _check_width(self, d: int) -> None:
        if self.degree == 2 and d > MAX_POLY2_FEATURES:
            raise ValueError(
                f"poly2 on {d} features makes {d * (d + 3) // 2} terms; use at most "
                f"{MAX_POLY2_FEATURES} features (or ridge/rbf)"
            )

    def _fit(self, X: np.ndarray, Y: np.ndarray, w: np.ndarray) -> None:
        self._check_width(X.shape[1])
        self.center, self.scale = _standardise_stats(X, w)
        m = _monomials((X - self.center) / self.scale, self.degree)
        M = m.T @ (w[:, None] * m)
        Q = m.T @ (w[:, None] * Y)
        self.W = _solve_moments(M, Q, X.shape[1], self.degree, np.array([self._alpha()]))[0]

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return _monomials((X - self.center) / self.scale, self.degree) @ self.W

    def _state(self) -> dict[str, Any]:
        return {
            "degree": self.degree,
            "center": _floats(self.center),
            "scale": _floats(self.scale),
            "W": _floats(self.W),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if int(state["degree"]) != self.degree:
            raise ValueError(f"degree {state['degree']} in parameters, {self.degree} expected")
        self.center = np.array(state["center"], dtype=np.float64)
        self.scale = np.array(state["scale"], dtype=np.float64)
        self.W = np.array(state["W"], dtype=np.float64)
        d = len(self.center)
        p = 1 + d + (d * (d + 1) // 2 if self.degree == 2 else 0)
        if self.scale.shape != (d,) or self.W.shape != (p, 2):
            raise ValueError(f"inconsistent shapes: {d} features need W of shape ({p}, 2)")
        _check_scale(self.scale)

    def _loto_target_errors(self, X, Y, w, groups, combos, aspect):
        self._check_width(X.shape[1])
        d = X.shape[1]
        alphas = np.array([c.get("alpha", 0.0) for c in combos])
        # Preconditioning only: each fold re-standardises on its own frames (exactly, in
        # `_solve_moments`), so the held-out frames' feature statistics never enter a fold.
        center, scale = _standardise_stats(X, w)
        m = _monomials((X - center) / scale, self.degree)
        ids = np.unique(groups)
        idx = [np.flatnonzero(groups == g) for g in ids]
        wm = w[:, None] * m
        Mg = [m[i].T @ wm[i] for i in idx]
        Qg = [wm[i].T @ Y[i] for i in idx]
        M, Q = sum(Mg), sum(Qg)
        per_target = np.empty((len(alphas), len(ids)))
        for t, i in enumerate(idx):
            W = _solve_moments(M - Mg[t], Q - Qg[t], d, self.degree, alphas)
            pred = m[i] @ W  # (A, n_g, 2)
            per_target[:, t] = _target_means(_dist(pred - Y[i], aspect), w[i])
        return per_target


class RidgeMapping(_LinearMapping):
    name = "ridge"
    # Three non-collinear targets are the fewest that span both screen axes.
    min_targets = 3
    defaults = {"alpha": 0.1}
    default_grid = {"alpha": _logspace(-3, 3, 13)}
    # The median alpha that nested selection chose where it could: every outer fold of grid9
    # and the 28 evit sittings on gaze angles (452 folds, 2026-12). The default, 0.1, pulled
    # the held-out corner of a 4-target calibration towards the centre (issue 12, cause 1).
    no_spare_hyper = {"alpha": 0.01}


class Poly2Mapping(_LinearMapping):
    name = "poly2"
    # Curvature in x and y on top of the affine part needs targets beyond a 2×2 corner
    # grid (which fixes only a bilinear map); the ridge penalty carries the rest.
    min_targets = 5
    degree = 2
    defaults = {"alpha": 1.0}
    default_grid = {"alpha": _logspace(-3, 3, 13)}


class AffineMapping(_LinearMapping):
    """Plain least squares from two gaze angles (yaw, pitch: columns 0 and 1 unless told
    otherwise) to the screen. No hyper-parameters: three targets fix it exactly."""

    name = "affine"
    min_targets = 3
    default_columns = (0, 1)

    def __init__(self, columns=None, feature_names=None, **hyper: float) -> None:
        super().__init__(columns=columns, feature_names=feature_names, **hyper)
        if self.columns is None or len(self.columns) != 2:
            raise ValueError(f"affine reads exactly two columns (yaw, pitch), got {columns}")

    def _alpha(self) -> float:
        return 0.0


# --- RBF kernel ridge ----------------------------------------------------------------------


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d2 = (A**2).sum(1)[:, None] + (B**2).sum(1)[None, :] - 2.0 * A @ B.T
    return np.maximum(d2, 0.0)


def _krr_fit(
    K: np.ndarray, Y: np.ndarray, w: np.ndarray, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """min Σ wᵢ(yᵢ − b − (Kc)ᵢ)² + λ cᵀKc → (c, b). With A = (K + λW⁻¹)⁻¹:
    c = A(y − 1b), b = 1ᵀAy / 1ᵀA1 (the unpenalised intercept)."""
    s = np.sqrt(w)
    Kt = s[:, None] * K * s[None, :] + lam * np.eye(len(K))
    rhs = s[:, None] * np.hstack([Y, np.ones((len(Y), 1))])
    sol = s[:, None] * np.linalg.solve(Kt, rhs)
    Ay, A1 = sol[:, :2], sol[:, 2]
    b = Ay.sum(0) / A1.sum()
    return Ay - np.outer(A1, b), b


class RBFMapping(ScreenMapping):
    name = "rbf"
    # The intercept plus a smooth bump per target: below four the screen is at best a
    # triangle and the kernel falls back to the mean everywhere outside it.
    min_targets = 4
    defaults = {"gamma": 0.1, "alpha": 1e-2}
    default_grid = {
        "gamma": _logspace(-3, 1, 9),
        "alpha": _logspace(-4, 1, 6),
    }

    def _check_hyper(self) -> None:
        super()._check_hyper()
        if self.hyper["alpha"] <= 0:
            raise ValueError("rbf: alpha must be > 0 (interpolating kernels are ill-posed)")

    def _embed(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.center) / self.scale)[:, self.keep]

    def _gamma_eff(self) -> float:
        return self.hyper["gamma"] / max(len(self.keep), 1)

    def _fit(self, X: np.ndarray, Y: np.ndarray, w: np.ndarray) -> None:
        self.center, self.scale = _standardise_stats(X, w)
        self.keep = np.flatnonzero(np.var((X - self.center) / self.scale, axis=0) > _VAR_TOL)
        self.U = self._embed(X)
        K = np.exp(-self._gamma_eff() * _sqdist(self.U, self.U))
        self.coef, self.intercept = _krr_fit(K, Y, w, self.hyper["alpha"] * w.sum())

    def _predict(self, X: np.ndarray) -> np.ndarray:
        K = np.exp(-self._gamma_eff() * _sqdist(self._embed(X), self.U))
        return K @ self.coef + self.intercept

    def _state(self) -> dict[str, Any]:
        return {
            "center": _floats(self.center),
            "scale": _floats(self.scale),
            "keep": [int(k) for k in self.keep],
            "U": _floats(self.U),
            "coef": _floats(self.coef),
            "intercept": _floats(self.intercept),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.center = np.array(state["center"], dtype=np.float64)
        self.scale = np.array(state["scale"], dtype=np.float64)
        self.keep = np.array(state["keep"], dtype=np.int64)
        self.U = np.array(state["U"], dtype=np.float64).reshape(-1, len(self.keep))
        self.coef = np.array(state["coef"], dtype=np.float64).reshape(-1, 2)
        self.intercept = np.array(state["intercept"], dtype=np.float64)
        if len(self.U) != len(self.coef) or self.intercept.shape != (2,):
            raise ValueError("inconsistent shapes of U, coef and intercept")
        _check_scale(self.scale)

    def _loto_target_errors(self, X, Y, w, groups, combos, aspect):
        # One kernel serves every fold, so the folds share this set's standardisation and
        # penalty λ = α Σw (features and weights only, never a held-out label); the identity
        # below then gives each fold's refit exactly.
        center, scale = _standardise_stats(X, w)
        U = (X - center) / scale
        keep = np.flatnonzero(np.var(U, axis=0) > _VAR_TOL)
        D2 = _sqdist(U[:, keep], U[:, keep]) / max(len(keep), 1)
        s = np.sqrt(w)
        sw = w.sum()
        ids = np.unique(groups)
        idx = [np.flatnonzero(groups == g) for g in ids]
        Y1 = np.hstack([Y, np.ones((len(Y), 1))])
        scores = np.full((len(combos), len(ids)), np.nan)
        for gamma in sorted({c["gamma"] for c in combos}):
            lam_k, V = np.linalg.eigh(s[:, None] * np.exp(-gamma * D2) * s[None, :])
            lam_k = np.maximum(lam_k, 0.0)
            Vs = V.T @ (s[:, None] * Y1)
            for ci, c in enumerate(combos):
                if c["gamma"] != gamma:
                    continue
                e = 1.0 / (lam_k + c["alpha"] * sw)
                dd = lam_k * e
                A_ = s[:, None] * (V @ (e[:, None] * Vs))  # A[y 1]
                KA_ = (V @ (dd[:, None] * Vs)) / s[:, None]  # KA[y 1]
                A1, sA1 = A_[:, 2], A_[:, 2].sum()
                b = A_[:, :2].sum(0) / sA1
                u = 1.0 - KA_[:, 2]
                yhat = KA_[:, :2] + np.outer(u, b)
                per_target = np.empty(len(ids))
                for t, i in enumerate(idx):
                    # H = KA + (1 − KA1)(A1)ᵀ / 1ᵀA1, KA = W^-½ V diag(dd) Vᵀ W^½
                    Vi = V[i]
                    H = (Vi * dd) @ Vi.T * np.outer(1.0 / s[i], s[i])
                    H += np.outer(u[i], A1[i]) / sA1
                    resid = np.linalg.solve(np.eye(len(i)) - H, Y[i] - yhat[i])
                    per_target[t] = _target_means(_dist(resid, aspect), w[i])
                scores[ci] = per_target
        return scores


# --- registry ------------------------------------------------------------------------------

from gazeloop.calibration.mapping.geometric import GeometricMapping  # noqa: E402 (subclass)

MAPPINGS: dict[str, type[ScreenMapping]] = {
    m.name: m for m in (RidgeMapping, Poly2Mapping, RBFMapping, AffineMapping, GeometricMapping)
}


def mapping_class(name: Any) -> type[ScreenMapping]:
    try:
        return MAPPINGS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown mapping {name!r}; known mappings: {', '.join(sorted(MAPPINGS))}"
        ) from None


def make_mapping(name: str = DEFAULT_MAPPING, **hyper: Any) -> ScreenMapping:
    """An unfitted mapping. Besides its hyper-parameters it takes `columns` and
    `feature_names` (which feature columns it reads; affine defaults to (0, 1))."""
    return mapping_class(name)(**hyper)


def min_targets(name: str) -> int:
    return mapping_class(name).min_targets


def mapping_from_params(
    name_or_params: str | dict[str, Any], params: dict[str, Any] | None = None
) -> ScreenMapping:
    """`mapping_from_params(params)` or `mapping_from_params(name, params)`; the second form
    (a profile storing the name beside the numbers) checks that the two agree."""
    if params is None:
        if not isinstance(name_or_params, dict):
            raise ValueError("mapping_from_params needs the parameters dict")
        return ScreenMapping.from_params(name_or_params)
    if params.get("name") != name_or_params:
        raise ValueError(
            f"parameters are for mapping {params.get('name')!r}, not {name_or_params!r}"
        )
    return mapping_class(name_or_params).from_params(params)
