"""The validation glance in `gazeloop run`: one dot, the fixation on it a point label.

The verify key (7) starts one; so does the run itself, rarely, when the loop has had no label
for `auto_after_s` (0: never), and never while a calibration is running. A thin shell around
`oracle.clicks.fixation_on_dot`, which holds every rule: the window shows the dot (the
calibration grid's own, `tools.ui.calibration_grid.render_dot`) while `Live.process` feeds
the History and calls `poll` every frame; the first fixation on the dot ends the glance and
goes to `on_label` as an `OracleLabel` of source "glance", timed at the fixation's last
sample, so the loop compares it with the fast estimate at that very frame.

Times are the frames' own (`t_ns`), so a replay decides as the live run did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gazeloop.calibration.drift.history import History
from gazeloop.calibration.drift.loop import LoopDecision
from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.oracle.clicks import Fixation, GlanceRules, fixation_on_dot

VERSION = "glance-1"
SOURCE = "glance"
_MS = 1_000_000
# Where the dots go, in turn: the centre, then round a 3x3 grid inside 12 % margins.
POINTS = (
    (0.5, 0.5),
    (0.12, 0.12),
    (0.88, 0.88),
    (0.88, 0.12),
    (0.12, 0.88),
    (0.5, 0.12),
    (0.5, 0.88),
    (0.12, 0.5),
    (0.88, 0.5),
)


@dataclass(slots=True)
class Glance:
    """One dot on the screen."""

    xy: tuple[float, float]  # normalised
    shown_t_ns: int  # the frame time from which it is on the screen
    trigger: str  # "key" or "auto"
    verdict: str = "waiting"
    fixation: Fixation | None = None
    decision: LoopDecision | None = None  # what `on_label` said of its label


class GlanceLabeller:
    def __init__(
        self,
        history: History,
        screen_px: tuple[int, int],
        on_label: Callable[[OracleLabel], LoopDecision | None],
        *,
        rules: GlanceRules | None = None,
        auto_after_s: float = 600.0,
        points: tuple[tuple[float, float], ...] = POINTS,
    ) -> None:
        if auto_after_s < 0:
            raise ValueError(f"auto_after_s must be ≥ 0 (0: never), got {auto_after_s}")
        self.history = history
        self.size = np.asarray(screen_px, dtype=np.float64)
        self.on_label = on_label
        self.rules = rules or GlanceRules()
        self.auto_after_s = auto_after_s
        self.points = points
        self.active: Glance | None = None
        self.last: Glance | None = None  # the last one finished
        self.calibrating = False  # set by the window around the calibration grid
        self.verdicts: dict[str, int] = {}
        self._count = 0
        self._quiet_since: int | None = None  # frame time of the last label (or start)

    # --- when ------------------------------------------------------------------------------

    def saw_label(self, t_ns: int) -> None:
        """A label arrived (of any source): the loop is being fed, no glance is due."""
        if self._quiet_since is None or t_ns > self._quiet_since:
            self._quiet_since = t_ns

    def frame(self, t_ns: int) -> None:
        """Every frame (`Live.process`): the quiet time counts from the first one."""
        if self._quiet_since is None:
            self._quiet_since = t_ns

    def due(self, t_ns: int) -> bool:
        """An unasked glance is due at frame time `t_ns`: `auto_after_s` without a label (or
        since the first frame, or since the last glance), none showing, no calibration
        running."""
        if self._quiet_since is None:
            return False
        if self.auto_after_s <= 0 or self.active is not None or self.calibrating:
            return False
        return t_ns - self._quiet_since >= self.auto_after_s * 1e9

    # --- one glance ----------------------------------------------------------------------

    def start(
        self, t_ns: int, trigger: str = "key", xy: tuple[float, float] | None = None
    ) -> Glance | None:
        """Show the next dot from frame time `t_ns` (None while calibrating)."""
        if self.calibrating:
            return None
        if xy is None:
            xy = self.points[self._count % len(self.points)]
        self._count += 1
        self.active = Glance((float(xy[0]), float(xy[1])), int(t_ns), trigger)
        self._quiet_since = int(t_ns)  # an unanswered glance does not repeat at once
        return self.active

    def cancel(self) -> None:
        if self.active is not None:
            self._finish("cancelled")

    def poll(self, t_ns: int) -> str | None:
        """After each frame while a dot shows: its verdict once decided (a label went to
        `on_label` when it is "ok"), None while still waiting or with no dot."""
        g = self.active
        if g is None:
            return None
        t, xy = self.history.window_px(g.shown_t_ns, t_ns, self.size)
        dot = tuple(np.asarray(g.xy) * self.size)
        fix, why = fixation_on_dot(t, xy, g.shown_t_ns, dot, t_ns, self.rules)
        if why == "waiting":
            return None
        g.fixation = fix
        self._finish(why)
        if fix is not None:
            g.decision = self.on_label(self.label_of(g))
        return why

    def _finish(self, why: str) -> None:
        g = self.active
        g.verdict = why
        self.verdicts[why] = self.verdicts.get(why, 0) + 1
        self.last, self.active = g, None

    def label_of(self, g: Glance) -> OracleLabel:
        f = g.fixation
        return OracleLabel(
            t_ns=f.t1_ns,
            snapshot_id=f"glance-{g.shown_t_ns}",
            oracle=SOURCE,
            oracle_version=VERSION,
            observation=PointObservation(xy=g.xy),
            confidence=1.0,
            latency_s=(f.t1_ns - g.shown_t_ns) / 1e9,
            details={
                "target_px": [float(v) for v in np.asarray(g.xy) * self.size],
                "fixation_px": [float(v) for v in f.centre_px],
                "fixation_ms": (f.t1_ns - f.t0_ns) / _MS,
                "onset_ms": (f.t0_ns - g.shown_t_ns) / _MS,
                "trigger": g.trigger,
            },
        )
