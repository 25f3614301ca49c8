"""A session's labelled frames as one validated set of parallel arrays.

Evaluation, profile fitting, the calibration grid, the loop's benchmarks and the promotion
gate all start from the same thing: N frames, each with the features the fast path gave, the
screen point the person looked at, the target it belongs to (frames of one target are one
leave-one-target-out fold), its file name and time. Each used to rebuild those arrays from
per-frame objects in its own way, so a column could be filtered in one place and not in
another. `LabelledFrames` holds them once, checked when made, filtered by a boolean mask or
an index array as a whole (supervision's `Detections` is the model), and made by `from_*`
adapters. It lives here, in `calibration`, because calibration owns the types that
`fastpath` feeds and tools read; the adapters take anything shaped like the fast path's
`LabelledSample`, so this module imports no fast path.

Features are named columns, each (N,) float64: only the features every frame has, since a
mapping fitted on a column must be able to read it from every frame. `matrix(names)` picks
columns in a mapping's order; `embedding` stands for all of the network's `emb_<i>`.

`Reads`: one session's frames per read of them ("as read", and "other", the frames mirrored
back, while nobody has said whether they are selfie views): the same rows in the same order,
each read with the features it gave. Nested selection compares its candidates on them, so a
candidate of either read is scored on the same frames and targets (`rows_of` checks that).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class FrameRow(Protocol):
    """One labelled frame as the fast path's collection gives it (`LabelledSample`)."""

    name: str
    t_ns: int
    label_px: tuple[float, float]
    target: int
    settling: bool

    @property
    def sample(self) -> Any: ...  # has feature_dict() -> dict[str, float]


@dataclass(frozen=True, slots=True)
class LabelledFrames:
    """N labelled frames: named feature columns and, row for row, where the person looked."""

    features: Mapping[str, np.ndarray]  # name → (N,) float64, the features every frame has
    labels_px: np.ndarray  # (N, 2) float64: the target on the screen, pixels
    groups: np.ndarray  # (N,) int64: target ids, the leave-one-target-out folds
    names: np.ndarray  # (N,) str: the frames' file names, for reports
    t_ns: np.ndarray = field(default=None)  # type: ignore[assignment]  # (N,) int64
    settling: np.ndarray = field(default=None)  # type: ignore[assignment]  # (N,) bool

    def __post_init__(self) -> None:
        labels = np.array(self.labels_px, dtype=np.float64)
        if labels.shape == (0,):  # no frames, given as an empty list
            labels = labels.reshape(0, 2)
        n = len(labels)
        if labels.shape != (n, 2):
            raise ValueError(f"labels_px: shape {labels.shape}, expected ({n}, 2)")
        if not np.isfinite(labels).all():
            raise ValueError("labels_px: not every label is a finite point")
        cols = {str(k): _column(k, v, n, np.float64) for k, v in self.features.items()}
        _set(self, "features", dict(sorted(cols.items())))
        _set(self, "labels_px", labels)
        _set(self, "groups", _column("groups", self.groups, n, np.int64))
        _set(self, "names", _column("names", self.names, n, str))
        t = np.zeros(n, np.int64) if self.t_ns is None else self.t_ns
        _set(self, "t_ns", _column("t_ns", t, n, np.int64))
        s = np.zeros(n, bool) if self.settling is None else self.settling
        _set(self, "settling", _column("settling", s, n, bool))

    def __len__(self) -> int:
        return len(self.labels_px)

    def __getitem__(self, which: np.ndarray | slice | Sequence[int]) -> LabelledFrames:
        """The frames a boolean mask or an index array picks, every column alike."""
        idx = which if isinstance(which, slice) else np.asarray(which)
        if isinstance(idx, np.ndarray):
            if idx.ndim != 1:
                raise IndexError("pick frames with a boolean mask, an index array or a slice")
            if idx.dtype == bool and idx.shape != (len(self),):
                raise IndexError(f"mask of shape {idx.shape} for {len(self)} frames")
            if idx.size == 0:
                idx = idx.astype(np.int64)
        return LabelledFrames(
            features={k: v[idx] for k, v in self.features.items()},
            labels_px=self.labels_px[idx],
            groups=self.groups[idx],
            names=self.names[idx],
            t_ns=self.t_ns[idx],
            settling=self.settling[idx],
        )

    @property
    def n_targets(self) -> int:
        return len(np.unique(self.groups))

    def expand(self, names: Sequence[str]) -> list[str]:
        """`embedding` stands for all of the network's embedding columns (emb_0, emb_1, ...)."""
        dim = sum(1 for k in self.features if _is_embedding(k))
        out: list[str] = []
        for n in names:
            out.extend([f"emb_{i}" for i in range(dim)] if n == "embedding" else [n])
        return out

    def lacks(self, names: Sequence[str]) -> list[str]:
        """The named columns (`embedding` expanded) these frames do not have, in order."""
        return [n for n in self.expand(names) if n not in self.features]

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """(N, d) of the named columns in that order; a name no frame has, or not every
        frame has, is a KeyError naming it and what there is (no frames: every name is had
        by all of them, and the matrix is (0, d))."""
        names = self.expand(names)
        if not len(self):
            return np.zeros((0, len(names)))
        missing = [n for n in names if n not in self.features]
        if missing:
            named = [k for k in self.features if not _is_embedding(k)]
            emb = len(self.features) - len(named)
            raise KeyError(
                f"feature {missing[0]!r} is not produced by this fast path (available: "
                f"{', '.join(named)}" + (f", emb_0..emb_{emb - 1})" if emb else ")")
            )
        if not names:
            return np.zeros((len(self), 0))
        return np.column_stack([self.features[n] for n in names])

    @classmethod
    def from_samples(cls, rows: Iterable[FrameRow], having: Sequence[str] = ()) -> LabelledFrames:
        """The fast path's collected frames (`Collected.samples`), in their order; with
        `having`, only those whose features include all of these. Pick the rows first: the
        columns are the features every row given has, and a mask applied afterwards cannot
        bring back a feature that only a left-out frame lacked."""
        need = set(having)
        pairs = [(r, r.sample.feature_dict()) for r in rows]
        pairs = [(r, d) for r, d in pairs if need <= d.keys()]
        rows = [r for r, _ in pairs]
        return cls.from_dicts(
            (d for _, d in pairs),
            labels_px=np.array([r.label_px for r in rows], dtype=np.float64).reshape(-1, 2),
            groups=np.array([r.target for r in rows], dtype=np.int64),
            names=[r.name for r in rows],
            t_ns=np.array([r.t_ns for r in rows], dtype=np.int64),
            settling=np.array([r.settling for r in rows], dtype=bool),
        )

    @classmethod
    def from_dicts(cls, features: Iterable[Mapping[str, float]], **columns: Any) -> LabelledFrames:
        """Per-frame feature dicts (`GazeSample.feature_dict`) and the other columns."""
        return cls(features=feature_columns(features), **columns)

    @classmethod
    def concat(cls, parts: Sequence[LabelledFrames]) -> LabelledFrames:
        """Frames of several batches, in order; the features all of their frames have (a
        batch of no frames constrains none)."""
        if not parts:
            return cls(features={}, labels_px=np.zeros((0, 2)), groups=[], names=[])
        parts = [p for p in parts if len(p)] or list(parts[:1])
        keys = set(parts[0].features).intersection(*(p.features for p in parts[1:]))
        return cls(
            features={k: np.concatenate([p.features[k] for p in parts]) for k in keys},
            **{
                c: np.concatenate([getattr(p, c) for p in parts])
                for c in ("labels_px", "groups", "names", "t_ns", "settling")
            },
        )


# One session's frames per read of them, row for row the same frames (module doc).
Reads = Mapping[str, LabelledFrames]


def rows_of(reads: Reads) -> LabelledFrames:
    """The frames every read shares (targets, labels, names): the first read, once the others
    are checked to hold the same rows. A read with other rows would score its candidates on
    other frames than the rest, and no comparison between them would mean anything."""
    if not reads:
        raise ValueError("no read of the frames")
    (name0, first), *others = reads.items()
    for name, f in others:
        same = len(f) == len(first) and np.array_equal(f.groups, first.groups)
        if not (same and np.array_equal(f.labels_px, first.labels_px)):
            raise ValueError(f"read {name!r}: not the same frames as {name0!r}")
    return first


def pick(reads: Reads, which: np.ndarray | slice | Sequence[int]) -> dict[str, LabelledFrames]:
    """The same frames of every read (a boolean mask, an index array or a slice)."""
    return {k: f[which] for k, f in reads.items()}


def feature_columns(dicts: Iterable[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Per-frame feature dicts → one float column per feature every frame has (sorted by
    name): the "view" a selection's candidates take their columns from."""
    dicts = list(dicts)
    keys = set(dicts[0]).intersection(*dicts[1:]) if dicts else set()
    return {k: np.array([d[k] for d in dicts], dtype=np.float64) for k in sorted(keys)}


def _column(name: str, values: Any, n: int, dtype: Any) -> np.ndarray:
    a = np.asarray(values)
    if a.shape != (n,):
        raise ValueError(f"{name}: shape {a.shape}, expected ({n},)")
    if dtype is str:
        return a.astype(str)
    if a.size and dtype is np.int64 and a.dtype.kind not in "iu":
        raise ValueError(f"{name}: {a.dtype} values, expected integers")
    if a.size and dtype is bool and a.dtype.kind != "b":
        raise ValueError(f"{name}: {a.dtype} values, expected True/False")
    return a.astype(dtype)  # a copy: the caller's arrays stay theirs


def _is_embedding(name: str) -> bool:
    return name.startswith("emb_") and name[4:].isdigit()


def _set(obj: LabelledFrames, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)
