"""Fixtures for the runtime's pictures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved during the test, in order, the file still written: what is drawn
    (titles, points, axis limits) is the behaviour, and a PNG's pixels hide it."""
    saved = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return saved
