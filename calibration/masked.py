"""Statistics of each row's kept entries, on plain arrays.

`np.nanmedian` over a (rows × entries) array with the others set to NaN gives the same, but
through a masked-array detour that was a tenth of the drift loop's time; the loop's change
scan and the click rules' fixation test each take the median of many overlapping runs of a
few dozen values at once, on every label or click."""

from __future__ import annotations

import numpy as np


def row_medians(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The median of each row's kept entries (NaN for a row that keeps none): `values`
    (r, n), or (n,) shared by every row, and `keep` (r, n) → (r,). What `np.median` gives
    for each row's kept entries when they hold no NaN."""
    v = np.where(keep, values, np.inf)
    v.sort(axis=1)
    n = keep.sum(axis=1)
    rows = np.arange(len(v))
    lo, hi = np.maximum(n - 1, 0) // 2, np.maximum(n, 1) // 2
    out = 0.5 * (v[rows, lo] + v[rows, np.minimum(hi, v.shape[1] - 1)])
    return np.where(n > 0, out, np.nan)
