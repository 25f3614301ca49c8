"""`gazeloop run` tells the drift loop whether its profile is from an earlier sitting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from gazeloop.tools.runtime.live import SITTING_GAP_S, from_earlier_sitting

NOW = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("created", "earlier"),
    [
        ((NOW - timedelta(minutes=5)).isoformat(timespec="seconds"), False),
        ((NOW - timedelta(seconds=SITTING_GAP_S + 60)).isoformat(timespec="seconds"), True),
        ((NOW - timedelta(days=3)).isoformat(), True),
        ("2026-12-04T17:55:00", False),  # no zone: read as UTC
        ("yesterday", True),
        (None, True),
    ],
)
def test_a_profile_older_than_a_sitting_gap_is_from_an_earlier_sitting(created, earlier):
    assert from_earlier_sitting(SimpleNamespace(created=created), now=NOW) is earlier


def test_a_profile_pooled_from_sittings_is_never_this_sitting_however_new():
    new = (NOW - timedelta(minutes=1)).isoformat(timespec="seconds")
    pooled = SimpleNamespace(created=new, calibration_sessions=["/a", "/b"])
    assert from_earlier_sitting(pooled, now=NOW) is True
    own = SimpleNamespace(created=new, calibration_sessions=[])
    assert from_earlier_sitting(own, now=NOW) is False


def test_a_calibration_that_pooled_its_own_sitting_is_of_that_sitting():
    """A calibration may save its sitting pooled with earlier ones (`fit.history`): that
    profile is the sitting's own calibration while the sitting lasts, then an earlier one."""
    fit = SimpleNamespace(history=SimpleNamespace(chosen="pooled"))
    new = (NOW - timedelta(minutes=1)).isoformat(timespec="seconds")
    prof = SimpleNamespace(created=new, calibration_sessions=["/a", "/b"], fit=fit)
    assert from_earlier_sitting(prof, now=NOW) is False
    old = (NOW - timedelta(seconds=SITTING_GAP_S + 60)).isoformat(timespec="seconds")
    assert from_earlier_sitting(SimpleNamespace(**{**vars(prof), "created": old}), now=NOW)


def test_a_profile_fit_pool_made_a_minute_ago_is_this_sitting_for_run():
    """`profile fit S1 S2` saves a pooled profile as the device's own; run took it for an
    earlier sitting's at once and replaced it by the pool of the calibration sessions."""
    from gazeloop.tools.runtime.live import made_this_sitting

    fresh = (NOW - timedelta(seconds=60)).isoformat()
    pooled = SimpleNamespace(created=fresh, calibration_sessions=["a", "b"], fit=None)
    assert made_this_sitting(pooled, now=NOW)
    assert not made_this_sitting(SimpleNamespace(created="garbage"), now=NOW)
    assert not made_this_sitting(
        SimpleNamespace(created=(NOW - timedelta(seconds=SITTING_GAP_S + 1)).isoformat()),
        now=NOW,
    )
