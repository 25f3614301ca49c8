"""Is this frame a blink? Judged against the person's own open eyes, not one number for all.

The upper lid follows the eye down (lid-gaze coupling), so a person looking at the bottom of
a laptop screen, with the camera above it, narrows both eyes to about half their open
aperture: on the evit sittings the bottom row's stills measure 0.11-0.16 of the eye's width,
0.46-0.65 of the same sitting's median, and a fixed threshold of 0.15 (the fast path's rule
until 2026-12) rejected 12 of its 112 stills as blinks. In a live run that is a cursor frozen
wherever it was whenever the user looks at the Dock or the taskbar. A closed eye measures
0.006-0.01 (corners4's closed-eye frame); the frames an absolute threshold cannot tell from a
downward look are half-blinks and squints, which narrow the eyes to 0.21-0.41 of the
*person's* usual aperture (six evit stills and corners4's mid-blink frame; one of them, kept,
is read 815 px off and takes its sitting's mean error from 83 to 263 px).

So a frame is a blink when either eye is shut (aperture under `floor`: a wink spoils the read
as much as a blink, the network takes both crops), or when the two eyes' mean aperture is
under `relative` times this person's usual one: the median over the last `window` frames
with no eye shut. Half-blinks are too few to move a median, and a person whose eyes are
narrow or who looks down for minutes moves the reference with them, so nobody is locked out.
Until `warmup` frames have been seen only the floor applies. `relative` = 0.45 sits in the
gap between 0.41 and 0.46, and was chosen by looking at these frames: the shared data's 448
stills are all there is to choose from, so a held-out person may land nearer either edge.

The reference survives the fast path's own resets on a jump in time (a still seconds after
the last is still the same person); `reset()` is for a new source.
"""

from __future__ import annotations

from collections import deque

import numpy as np

# An eye narrower than this (lid gap / eye width) is shut: closed eyes measure about 0.01 on
# MediaPipe's mesh, open ones 0.25-0.35 looking ahead.
BLINK_APERTURE = 0.05
# A frame whose mean aperture is under this share of the person's usual one is a blink or a
# squint: half-blinks measure 0.21-0.41 of it, a look at the bottom of a laptop screen 0.46+.
BLINK_RELATIVE = 0.45
REFERENCE_FRAMES = 300  # ten seconds at 30 Hz
WARMUP_FRAMES = 5


class BlinkDetector:
    """Per-stream blink rule (module doc). `closed(left, right)` judges one frame's two
    apertures and learns from it."""

    def __init__(
        self,
        floor: float = BLINK_APERTURE,
        relative: float = BLINK_RELATIVE,
        window: int = REFERENCE_FRAMES,
        warmup: int = WARMUP_FRAMES,
    ) -> None:
        if not (floor >= 0 and 0 <= relative < 1 and window >= 1 and warmup >= 1):
            raise ValueError(
                f"blink rule: floor {floor} ≥ 0, relative {relative} in [0, 1), window "
                f"{window} ≥ 1 and warmup {warmup} ≥ 1 expected"
            )
        self.floor = float(floor)
        self.relative = float(relative)
        self.warmup = int(warmup)
        self._recent: deque[float] = deque(maxlen=int(window))

    def reset(self) -> None:
        """A new source: forget the person's usual aperture."""
        self._recent.clear()

    @property
    def reference(self) -> float | None:
        """The person's usual mean aperture (None during warm-up)."""
        if len(self._recent) < self.warmup:
            return None
        return float(np.median(self._recent))

    def closed(self, left: float, right: float) -> bool:
        """Whether this frame is a blink. A frame with no eye shut is judged against the
        reference and then joins it."""
        if self._shut(left, right):
            return True
        mean = 0.5 * (left + right)
        ref = self.reference
        self._recent.append(mean)
        return ref is not None and mean < self.relative * ref

    def warmup_blinks(self, apertures: list[tuple[float, float] | None]) -> list[int]:
        """Of a stream's frames, in the order `closed` saw them since `reset` (None: a frame
        it never judged), those it judged before it had a reference, that the reference it
        has now calls blinks: a stream read whole judges its first frames as its later ones."""
        ref = self.reference
        if ref is None:
            return []
        out, seen = [], 0
        for i, ap in enumerate(apertures):
            if ap is None or self._shut(*ap):
                continue  # judged by the floor, and never part of the reference
            seen += 1
            if seen > self.warmup:
                break
            if 0.5 * (ap[0] + ap[1]) < self.relative * ref:
                out.append(i)
        return out

    def _shut(self, left: float, right: float) -> bool:
        """An eye without an aperture, or under the floor: a blink whatever the reference."""
        finite = np.isfinite(left) and np.isfinite(right)
        return not finite or min(left, right) < self.floor
