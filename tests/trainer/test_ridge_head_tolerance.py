"""A nearly constant embedding feature (variance 1e-7 beside O(1) ones) is dropped from a
person's ridge like a constant one: kept, it was scaled ~3000×, and validation frames where
the unit woke up were predicted tens of thousands of px away."""

from __future__ import annotations

import pytest
import torch

from gazeloop.trainer.ridge_head import ridge_fit_predict


def _person(dead_var: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    n = 24
    live = torch.randn(n, 5, generator=g, dtype=torch.float64)
    Y = live[:, :2] * 0.1 + 0.5 + 0.01 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    calib = torch.arange(n) < 12
    dead = torch.randn(n, 1, generator=g, dtype=torch.float64) * dead_var**0.5
    dead[~calib] = 0.05  # the unit wakes up on the frames the map is asked about
    return torch.cat([live, dead], 1), Y, torch.zeros(n, dtype=torch.long), calib


@pytest.mark.parametrize("dead_var", [1e-7, 1e-9, 0.0])
def test_a_nearly_constant_feature_is_dropped_like_a_constant_one(dead_var):
    E, Y, person, calib = _person(dead_var)
    with_it, _ = ridge_fit_predict(E, Y, person, calib, lam=0.1)
    without, _ = ridge_fit_predict(E[:, :5], Y, person, calib, lam=0.1)
    torch.testing.assert_close(with_it, without, rtol=0, atol=1e-12)


def test_a_feature_with_ordinary_variance_is_kept():
    E, Y, person, calib = _person(1.0)
    with_it, _ = ridge_fit_predict(E, Y, person, calib, lam=0.1)
    without, _ = ridge_fit_predict(E[:, :5], Y, person, calib, lam=0.1)
    assert (with_it - without).abs().max() > 1e-3
