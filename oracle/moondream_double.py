"""A stand-in for Moondream2 with the real API's shape and canned answers: no weights.

Its methods, arguments and return shapes are those of `HfMoondream` at revision 2025-04-14
(see `oracle.moondream`): `encode_image` (returns an encoding that the skills accept in
place of the image), `point`, `detect`, `detect_gaze(image, eye=None, face=None,
unstable_settings={})`. Every answer is the same for every image: two pupils and a face
in the middle of the frame, "no gaze point in the image", and, forced, a gaze point to the
image's right. So whatever is measured through it is the adapter and the parser (one
snapshot in, a line or nothing out, how fast), never Moondream: `gazeloop oracle eval
--oracle moondream` uses it when the weights are not there, and says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

NOTE = (
    "API-shaped double of Moondream2 (revision 2025-04-14 method names and return shapes, "
    "canned answers, no weights): these numbers measure gazeloop's adapter and parser, not "
    "Moondream"
)

ANSWERS: dict[str, Any] = {
    "point": {"points": [{"x": 0.45, "y": 0.42}, {"x": 0.55, "y": 0.42}]},
    "detect": {"objects": [{"x_min": 0.38, "y_min": 0.25, "x_max": 0.62, "y_max": 0.7}]},
    "detect_gaze": {"gaze": None},
    "detect_gaze_forced": {"gaze": {"x": 0.9, "y": 0.42}},
}


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """Like moondream's EncodedImage: what `encode_image` returns and the skills accept."""

    pos: int


class MoondreamDouble:
    name = "moondream-double"

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers = copy.deepcopy(answers or ANSWERS)
        self.encodes = 0

    def encode_image(self, image: Any) -> EncodedImage:
        if isinstance(image, EncodedImage):
            return image
        self.encodes += 1
        return EncodedImage(pos=730)

    def _answer(self, skill: str, image: Any) -> dict[str, Any]:
        self.encode_image(image)  # the real skills encode their argument first
        return copy.deepcopy(self.answers[skill])

    def point(self, image: Any, object: str, settings: dict | None = None) -> dict:
        return self._answer("point", image)

    def detect(self, image: Any, object: str, settings: dict | None = None) -> dict:
        return self._answer("detect", image)

    def detect_gaze(
        self,
        image: Any,
        eye: tuple[float, float] | None = None,
        face: dict[str, float] | None = None,
        unstable_settings: dict[str, Any] = {},  # noqa: B006 - upstream's exact signature
    ) -> dict:
        if eye is None:
            raise ValueError("eye must be provided when prioritize_accuracy=False")
        forced = bool(unstable_settings.get("force_detect", False))
        return self._answer("detect_gaze_forced" if forced else "detect_gaze", image)
