"""A cv2.VideoCapture-shaped camera for the tests (there is none in CI)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

PROPS = {"width": cv2.CAP_PROP_FRAME_WIDTH, "height": cv2.CAP_PROP_FRAME_HEIGHT}
PROPS["fps"] = cv2.CAP_PROP_FPS
W, H, FPS = PROPS["width"], PROPS["height"], PROPS["fps"]


class FakeCamera:
    """Every set() is recorded; get() reports `grant` (width, height, fps; one it lacks
    reads 0, as cv2 answers a property it cannot read); `frames` blank frames are delivered
    (None: without end), then none. `install` answers cv2.VideoCapture(index), as
    `fastpath.sources` calls it, with this camera; after its first open it is unplugged
    (a reopen finds nothing)."""

    def __init__(
        self, grant: dict[str, float] | None = None, frames: int | None = None, backend="FAKE"
    ):
        self.grant = {PROPS[k]: v for k, v in (grant or {}).items()}
        self.backend = backend  # what getBackendName() answers ("V4L2" on Linux)
        self.frames, self.grabbed, self.sets = frames, 0, []
        self.opens = 0  # through `install`
        self.indices: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from gazeloop.fastpath import sources

        camera = self

        class Cv2:
            def __getattr__(self, name):
                return getattr(cv2, name)

            def VideoCapture(self, index):  # noqa: N802 - cv2's name
                camera.opens += 1
                camera.indices.append(index)
                return camera

        monkeypatch.setattr(sources, "cv2", Cv2())

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.opens <= 1

    def getBackendName(self) -> str:  # noqa: N802 - cv2's name
        return self.backend

    def set(self, prop: int, value: float) -> bool:
        self.sets.append((prop, value))
        return True

    def get(self, prop: int) -> float:
        return self.grant.get(prop, 0.0)

    def grab(self) -> bool:
        if self.frames is not None and self.grabbed >= self.frames:
            return False
        self.grabbed += 1
        return True

    def retrieve(self):
        return True, np.zeros((480, 640, 3), np.uint8)

    def read(self):
        return self.retrieve() if self.grab() else (False, None)

    def release(self) -> None:
        pass
