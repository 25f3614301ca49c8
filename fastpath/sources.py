"""Frame sources: camera, video file, recorded session, still images.

Each source is an iterable of `Frame` with `close()` and `with` support. Conventions that
every source keeps so the rest of the fast path need not care where frames come from:

- `t_ns` is the source's own time: capture time for a camera (monotonic clock read right
  after `grab()`), media time for a video, the recorded timestamp for a session; never the
  wall clock at processing time. It strictly increases, also across loops.
- Images are HxWx3 uint8 BGR and un-mirrored: a session stored as selfie views is flipped
  back here. Labels are screen positions and are never flipped.
- `index` is the position in the underlying sequence and keeps counting across loops, so
  `index % length` is the position in the file and gaps show frames that were skipped.
- `resize=(w, h)` is applied in the source, centre-cropped to that aspect ratio first (the
  benchmark runs at 640x480).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import cv2
import numpy as np

from gazeloop.calibration.store.session import (
    ImageDecodeError,
    Rejection,
    Session,
    SessionError,
    load_image,
    read_session,
)
from gazeloop.fastpath.types import Frame

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
IMAGE_PERIOD_NS = 33_000_000
DEFAULT_FPS = 30.0

Size = tuple[int, int]  # (width, height)


class SourceError(RuntimeError):
    """A source that cannot deliver frames at all (missing file, camera not available)."""


def _check_size(resize: Size | None) -> Size | None:
    if resize is None:
        return None
    w, h = int(resize[0]), int(resize[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"resize must be a positive (width, height), got {resize}")
    return (w, h)


def _resize(image: np.ndarray, size: Size | None) -> np.ndarray:
    """Scale to `size`, centre-cropping first to its aspect ratio so a face is never
    stretched (a 16:9 camera asked for 640x480 keeps the middle 4:3)."""
    if size is None or (image.shape[1], image.shape[0]) == size:
        return image
    h, w = image.shape[:2]
    tw, th = size
    if w * th > tw * h:  # too wide
        cw = max(1, round(h * tw / th))
        x0 = (w - cw) // 2
        image = image[:, x0 : x0 + cw]
    elif w * th < tw * h:  # too tall
        ch = max(1, round(w * th / tw))
        y0 = (h - ch) // 2
        image = image[y0 : y0 + ch]
    h, w = image.shape[:2]
    factor = min(w / tw, h / th)
    # INTER_AREA is needed against aliasing from 2x down, but at a fractional factor it is
    # slow (1.9 ms for 1280x720 -> 640x480 against 0.4 ms bilinear, 2-core x86 VM, 2026-11-22);
    # below 2x bilinear still reads every source pixel, so it loses nothing worth the time.
    interp = cv2.INTER_AREA if factor >= 2.0 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


class FrameSource:
    """Base: iteration, closing and counters shared by every source."""

    dropped: int = 0  # frames lost before the consumer saw them (camera only)

    def __init__(self) -> None:
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- video files ---------------------------------------------------------------------------


class VideoSource(FrameSource):
    """Frames of a video file, timed by the video's own timestamps.

    `t_ns` comes from CAP_PROP_POS_MSEC; if that is unusable (not finite, or not increasing
    after the first frame) the rest of the pass is timed by frame count / fps. Looping adds
    the previous passes' duration plus one frame period so time keeps increasing (MediaPipe's
    video mode rejects a timestamp that goes back). A truncated file just ends early;
    `frames_read` says how many frames were decoded, `expected_frames` what the container
    claimed. Like a file, a source is read once: iterate it a single time.

    Media time is what the file says, not when it was recorded: calibrate.mp4 is stamped
    20 fps (50 ms steps) although its Calibration.csv rows are ~103 ms apart.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loop: bool = False,
        max_frames: int | None = None,
        resize: Size | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.loop = loop
        self.max_frames = max_frames
        self.resize = _check_size(resize)
        self.frames_read = 0  # frames decoded, over all passes
        self.passes = 0  # completed passes through the file
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        self._cap = self._open()
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            log.warning("%s: unusable fps %r, assuming %g", self.path, fps, DEFAULT_FPS)
            fps = DEFAULT_FPS
        self.fps = float(fps)
        self.period_ms = 1000.0 / self.fps
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.expected_frames = int(count) if math.isfinite(count) and count > 0 else None
        # Decode the first frame now: a file that opens but has no decodable frame is as
        # unusable as a missing one, and the caller should learn it at open.
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"video has no decodable frame: {self.path}")
        self._pending: np.ndarray | None = first

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(
                f"cannot open video {self.path} (unsupported format, or a truncated file "
                "whose index is missing)"
            )
        return cap

    def close(self) -> None:
        super().close()
        self._pending = None
        self._cap.release()

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            return
        index = 0
        offset_ms = 0.0
        while not self._closed:
            done = yield from self._pass(index, offset_ms)
            if done is None or self._closed:
                return
            index, n_pass, last_t = done
            self._end_pass(n_pass)
            if not self.loop or n_pass == 0:
                return
            offset_ms += last_t + self.period_ms
            self._cap.release()
            self._cap = self._open()

    def _pass(
        self, index: int, offset_ms: float
    ) -> Generator[Frame, None, tuple[int, int, float] | None]:
        """One pass through the file, its frames numbered on from `index` and timed on from
        `offset_ms` so both keep increasing across loops. Returns (next index, frames in the
        pass, media time of its last frame), or None when `max_frames` ends the iteration
        mid-pass (that pass is not counted)."""
        last_t = -math.inf
        n_pass = 0
        index_timing = False
        while not self._closed:
            if self.max_frames is not None and index >= self.max_frames:
                return None
            ok, image = self._next_image()
            if not ok or image is None:
                break
            pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            usable = math.isfinite(pos) and pos >= 0 and (n_pass == 0 or pos > last_t)
            if not usable and not index_timing:
                # Some containers/backends report 0 or repeat a time; once seen, the rest
                # of the pass is timed by count so time cannot jump back.
                log.info("%s: media time unusable at frame %d; using fps", self.path, n_pass)
                index_timing = True
            t_ms = (last_t + self.period_ms if n_pass else 0.0) if index_timing else pos
            last_t = t_ms
            self.frames_read += 1
            yield Frame(
                t_ns=round((offset_ms + t_ms) * 1e6),
                image=_resize(image, self.resize),
                index=index,
                name=f"{self.path.name}#{n_pass}",
            )
            index += 1
            n_pass += 1
        return index, n_pass, last_t

    def _next_image(self) -> tuple[bool, np.ndarray | None]:
        """The frame decoded at open (to refuse a file without one) is delivered first, so
        opening costs the caller no frame."""
        if self._pending is not None:
            ok, image = True, self._pending
            self._pending = None
            return ok, image
        return self._cap.read()

    def _end_pass(self, n_pass: int) -> None:
        """Count a finished pass; one shorter than the container claims is most likely a
        truncated file, which the run should say since it then sees fewer frames."""
        self.passes += 1
        if self.expected_frames is not None and n_pass < self.expected_frames:
            log.warning(
                "%s: ended after %d of %d frames (truncated?)",
                self.path,
                n_pass,
                self.expected_frames,
            )


# --- recorded sessions ---------------------------------------------------------------------


class SessionSource(FrameSource):
    """Frames of a recorded session in timestamp order, with `label_px` set.

    `t_ns` is the record's unix-ms timestamp x 1e6 (wall-clock based, unlike a camera's
    monotonic time, but increasing, which is what consumers need). A mirrored session
    (manifest, or `unmirror=True` for folders without one, such as grid9) has its images
    flipped back so frames are un-mirrored like every other source. The labels are *not*
    flipped: they are positions on the screen, which a selfie view does not mirror.

    Images that cannot be decoded are skipped, never raised: each appears once in `skipped`
    with the reason, even when looping. Pairs rejected while reading the folder are in
    `rejected`.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | Session,
        *,
        loop: bool = False,
        unmirror: bool | None = None,
        resize: Size | None = None,
        screen_px: Size | None = None,
    ) -> None:
        super().__init__()
        if isinstance(folder, Session):
            self.session = folder
        else:
            try:
                self.session = read_session(folder, screen_px=screen_px)
            except SessionError as e:
                raise SourceError(str(e)) from e
        manifest = self.session.manifest
        if unmirror is not None and manifest is not None and unmirror != manifest.mirrored:
            log.warning(
                "%s: unmirror=%s overrides the manifest's mirrored=%s",
                self.session.folder,
                unmirror,
                manifest.mirrored,
            )
        self.unmirror = self.session.mirrored if unmirror is None else unmirror
        self.loop = loop
        self.resize = _check_size(resize)
        self.skipped: list[Rejection] = []
        self._bad: set[int] = set()

    @property
    def rejected(self) -> list[Rejection]:
        return self.session.rejected

    def __len__(self) -> int:
        return len(self.session.items)

    def _loop_step_ms(self) -> int:
        # One pass later = the session's span plus its typical gap between frames, so the
        # first frame of the next pass follows the last one like any other frame.
        t = [it.t_ms for it in self.session.items]
        if len(t) < 2:
            return IMAGE_PERIOD_NS // 1_000_000
        gap = max(1, round(float(np.median(np.diff(t)))))
        return t[-1] - t[0] + gap

    def __iter__(self) -> Iterator[Frame]:
        items = self.session.items
        step_ms = self._loop_step_ms()
        offset_ms = 0
        n_pass = 0
        while not self._closed:
            yielded = 0
            for pos, item in enumerate(items):
                if self._closed:
                    return
                if pos in self._bad:
                    continue
                try:
                    image = load_image(item.image)
                except ImageDecodeError as e:
                    self._bad.add(pos)
                    self.skipped.append(Rejection(item.image.name, str(e)))
                    log.warning("%s: skipped %s: %s", self.session.folder, item.image.name, e)
                    continue
                if self.unmirror:
                    image = cv2.flip(image, 1)
                yield Frame(
                    t_ns=(item.t_ms + offset_ms) * 1_000_000,
                    image=_resize(image, self.resize),
                    index=n_pass * len(items) + pos,
                    label_px=item.label_px,
                    name=item.image.name,
                )
                yielded += 1
            if not self.loop or yielded == 0:
                return
            n_pass += 1
            offset_ms += step_ms


# --- still images --------------------------------------------------------------------------


class ImageSource(FrameSource):
    """Still images as frames `IMAGE_PERIOD_NS` (33 ms) apart, e.g. `no_face.jpg`.

    A missing file is a SourceError at open; an undecodable one is skipped (see `skipped`)."""

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        resize: Size | None = None,
    ) -> None:
        super().__init__()
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise SourceError("ImageSource needs at least one image path")
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise SourceError(f"image file not found: {missing[0]}{more}")
        self.resize = _check_size(resize)
        self.skipped: list[Rejection] = []

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            if self._closed:
                return
            try:
                image = load_image(path)
            except ImageDecodeError as e:
                self.skipped.append(Rejection(str(path), str(e)))
                log.warning("skipped image %s: %s", path, e)
                continue
            yield Frame(
                t_ns=i * IMAGE_PERIOD_NS, image=_resize(image, self.resize), index=i, name=path.name
            )


# --- camera --------------------------------------------------------------------------------

T = TypeVar("T")


class SlotClosed(Exception):
    """The slot was closed and holds nothing more."""


class LatestFrameSlot(Generic[T]):
    """A one-item mailbox between a producer thread and one consumer.

    `put` replaces whatever the consumer has not taken yet, so a slow consumer always gets
    the newest item and never works through a backlog of stale frames. Accounting holds at
    every moment: puts == taken + dropped + (1 if an item is waiting else 0).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.puts = 0
        self.taken = 0
        self.dropped = 0  # items overwritten before anyone took them

    def put(self, item: T) -> bool:
        """Hand `item` over (replacing one not yet taken); False once closed."""
        with self._cond:
            if self._closed:
                return False
            if self._full:
                self.dropped += 1
            self._item = item
            self._full = True
            self.puts += 1
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The newest item; None after `timeout` seconds without one. An item put before
        `close()` is still delivered; after that, raises SlotClosed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if self._full:
                item = self._item
                self._item = None
                self._full = False
                self.taken += 1
                return item
            raise SlotClosed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class CaptureLike(Protocol):
    """The part of cv2.VideoCapture that CameraSource uses (fakes implement this)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def grab(self) -> bool: ...
    def retrieve(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...
    def isOpened(self) -> bool: ...  # noqa: N802 - cv2's name


@dataclass(frozen=True, slots=True)
class CameraMode:
    """A camera mode: asked for (None: left to the driver) or granted (None: not reported;
    some backends answer 0 for what they do not know)."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None

    def __str__(self) -> str:
        size = f"{self.width}x{self.height}" if self.width and self.height else "size unknown"
        return f"{size} at {f'{self.fps:g}' if self.fps else 'unknown'} fps"


def _granted(cap: CaptureLike) -> CameraMode:
    """What the driver says it delivers. Test doubles need not have `get`."""
    get = getattr(cap, "get", None)
    if get is None:
        return CameraMode()

    def prop(which: int) -> float | None:
        try:
            v = float(get(which))
        except Exception:  # a driver that cannot say is a mode not reported, not a failure
            return None
        return v if math.isfinite(v) and v > 0 else None

    w, h, fps = (
        prop(p) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS)
    )
    return CameraMode(None if w is None else round(w), None if h is None else round(h), fps)


def _shortfall(asked: CameraMode, got: CameraMode) -> list[str]:
    """What the driver granted below the request; unreported values are not held against
    it. 2 % slack: NTSC-style 59.94 and 29.97 are what 60 and 30 mean to a driver."""
    out = []
    if asked.fps and got.fps and got.fps < asked.fps * 0.98:
        out.append(f"{got.fps:g} fps instead of {asked.fps:g}")
    small_w = asked.width and got.width and got.width < asked.width
    small_h = asked.height and got.height and got.height < asked.height
    if small_w or small_h:
        out.append(f"{got.width}x{got.height} instead of {asked.width}x{asked.height}")
    return out


def _wants_mjpg(cap: CaptureLike, asked: CameraMode) -> bool:
    """Whether to ask a camera for Motion-JPEG before its mode. Linux's V4L2 opens a USB
    webcam in raw YUYV, which USB 2 carries at 30 fps only up to about 640x480 (1280x720
    YUYV is typically 10 fps), so a 60 fps or HD request is granted far below what the
    camera can do; nearly every webcam offers those modes in MJPG. Asked first: the mode's
    size and rate are looked up in the format in force. A camera without MJPG keeps its
    format (the driver refuses the request). macOS's AVFoundation picks its own format and
    ignores the request, so it is not sent."""
    if not (asked.fps or asked.width):
        return False
    name = getattr(cap, "getBackendName", None)
    try:
        return callable(name) and name() == "V4L2"
    except cv2.error:
        return False


def _release(cap: CaptureLike | None) -> None:
    if cap is None:
        return
    try:
        cap.release()
    except Exception:  # releasing a broken device must not hide the original problem
        log.debug("release failed", exc_info=True)


class CameraSource(FrameSource):
    """A live camera read in its own daemon thread with latest-frame semantics.

    `t_ns` is `time.monotonic_ns()` right after `grab()` returns, i.e. when the frame was
    captured, not when it is processed. Frames the consumer was too slow to take are
    counted in `dropped`; `index` is the capture sequence number, so its gaps show them too.
    When the camera stops delivering, the thread reopens it up to `retries` times with
    exponential backoff, then gives up: iteration ends and `error` says why (also logged).
    Iteration also ends if no frame arrives for `stall_timeout_s` (a driver stuck in grab).

    `open_capture` makes the capture object (default: cv2.VideoCapture(index) with the
    requested size and fps); tests pass a fake with the same methods.

    `width`, `height` and `fps` are requests the driver may round down to a mode it has (a
    60 fps request often comes back as 30); `granted` is what it says it gave, read at every
    open, logged at INFO, and a mode below the request is warned about once.

    `on_wait(seconds)`, when set, is called about every `WAIT_TICK_S` while no frame comes
    (a reopen's back-off, a hung driver) with the seconds waited so far: a window must keep
    drawing and reading keys meanwhile, or it freezes (macOS: the spinning wheel) and cannot
    be closed. False from it ends the iteration as a stop, not an error.
    """

    WAIT_TICK_S = 0.1

    def __init__(
        self,
        index: int = 0,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        resize: Size | None = None,
        open_capture: Callable[[], CaptureLike] | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
        stall_timeout_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.index = index
        self.width, self.height, self.fps = width, height, fps
        self.resize = _check_size(resize)
        self.retries = retries
        self.backoff_s = backoff_s
        self.stall_timeout_s = stall_timeout_s
        self.asked = CameraMode(width, height, fps)
        self.granted: CameraMode | None = None
        self._warned = False
        self.error: str | None = None
        self.reopens = 0
        self.frames_captured = 0
        self._open_capture = open_capture or self._open_cv2
        self._slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_wait: Callable[[float], bool] | None = None
        try:
            cap: CaptureLike | None = self._open_capture()
        except Exception as e:
            raise SourceError(self._cannot_open(f": {e}")) from e
        if cap is None or not cap.isOpened():
            _release(cap)
            raise SourceError(self._cannot_open(""))
        self._cap: CaptureLike | None = cap
        self._note_mode(cap)

    def _note_mode(self, cap: CaptureLike) -> None:
        self.granted = _granted(cap)
        log.info("camera %s: %s", self.index, self.mode_text())
        short = _shortfall(self.asked, self.granted)
        if short and not self._warned:
            self._warned = True
            log.warning(
                "camera %s: the driver granted %s; gaze cannot update faster than the camera",
                self.index,
                " and ".join(short),
            )

    def mode_text(self) -> str:
        """The granted mode, and the request where there was one: '1280x720 at 30 fps,
        asked 60 fps'."""
        asked = []
        if self.asked.width and self.asked.height:
            asked.append(f"{self.asked.width}x{self.asked.height}")
        if self.asked.fps:
            asked.append(f"{self.asked.fps:g} fps")
        granted = "mode not reported" if self.granted is None else str(self.granted)
        return granted + (f", asked {' at '.join(asked)}" if asked else "")

    def _cannot_open(self, detail: str) -> str:
        return (
            f"cannot open camera {self.index}{detail}. Check that it is connected and not in "
            "use by another program, try another index (1, 2, ...), and on macOS allow camera "
            "access for this terminal in System Settings > Privacy & Security > Camera."
        )

    def _open_cv2(self) -> CaptureLike:
        cap = cv2.VideoCapture(self.index)
        if cap.isOpened():
            # Requests only: the driver may pick the nearest mode it supports.
            if _wants_mjpg(cap, self.asked):
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
        return cap

    @property
    def dropped(self) -> int:  # type: ignore[override]
        return self._slot.dropped

    def _try_open(self) -> CaptureLike | None:
        try:
            cap = self._open_capture()
        except Exception as e:
            log.warning("camera %s: reopen failed: %s", self.index, e)
            return None
        if cap is None or not cap.isOpened():
            _release(cap)
            return None
        self._note_mode(cap)  # a replugged camera may come back in another mode
        return cap

    def _capture_loop(self) -> None:
        cap = self._cap
        failures = 0  # consecutive: reset by every delivered frame
        try:
            while not self._stop.is_set():
                ok = cap is not None and bool(cap.grab())
                t_ns = time.monotonic_ns()  # capture time: before the decode in retrieve()
                image = None
                if ok and cap is not None:
                    ok, image = cap.retrieve()
                if ok and image is not None:
                    failures = 0
                    # A frame grabbed as the source closes is not one captured: the counts
                    # (captured = delivered + dropped + at most one pending) stay exact.
                    if self._slot.put(Frame(t_ns=t_ns, image=image, index=self.frames_captured)):
                        self.frames_captured += 1
                    continue
                if self._stop.is_set():
                    break
                failures += 1
                if failures > self.retries:
                    self.error = (
                        f"camera {self.index} stopped delivering frames; gave up after "
                        f"{self.retries} reopen attempts"
                    )
                    log.error(self.error)
                    break
                delay = self.backoff_s * 2 ** (failures - 1)
                log.warning(
                    "camera %s delivered no frame; reopening in %.2f s (attempt %d of %d)",
                    self.index,
                    delay,
                    failures,
                    self.retries,
                )
                _release(cap)
                cap = None
                if self._stop.wait(delay):
                    break
                cap = self._try_open()
                self.reopens += 1
        except Exception as e:  # a capture thread must not die silently
            self.error = f"camera {self.index} capture thread failed: {e!r}"
            log.exception(self.error)
        finally:
            _release(cap)
            self._cap = None
            self._slot.close()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._capture_loop, name=f"camera-{self.index}", daemon=True
            )
            self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            return
        self._start()
        while not self._closed:
            frame = self._next_frame()
            if frame is None:
                return
            frame.image = _resize(frame.image, self.resize)
            yield frame

    def _next_frame(self) -> Frame | None:
        """The next frame; None when iteration ends: the thread gave up (its error logged
        there), close() was called, `on_wait` said stop, or no frame came for
        `stall_timeout_s` (said in `error`)."""
        tick = self.stall_timeout_s
        if self.on_wait is not None:
            tick = min(self.WAIT_TICK_S, tick)
        start = time.monotonic()
        while True:
            try:
                frame = self._slot.get(timeout=tick)
            except SlotClosed:
                return None
            if frame is not None:
                return frame
            waited = time.monotonic() - start
            if waited >= self.stall_timeout_s:
                self.error = (
                    f"camera {self.index} delivered no frame for {self.stall_timeout_s:g} s"
                )
                log.error(self.error)
                self._stop.set()
                return None
            if self.on_wait is not None and not self.on_wait(waited):
                return None

    def close(self) -> None:
        super().close()
        self._stop.set()
        self._slot.close()
        if self._thread is None:
            _release(self._cap)
            self._cap = None
            return
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():
            # Stuck in a driver call; the daemon thread releases the device when it returns.
            log.warning("camera %s: capture thread did not stop within 2 s", self.index)


# --- choosing a source ---------------------------------------------------------------------


def is_camera(spec: str | os.PathLike[str]) -> bool:
    """A camera index ("0", "1", ...), as `open_source` reads its argument."""
    return isinstance(spec, str) and spec.strip().isdigit()


def open_source(spec: str | os.PathLike[str], **kw: Any) -> FrameSource:
    """ "0", "1", ... -> camera; a folder -> session; a video file -> video; an image ->
    ImageSource. Keyword arguments go to the chosen source. A folder literally named "0"
    needs "./0"."""
    text = os.fspath(spec)
    if is_camera(spec):
        return CameraSource(int(text), **kw)
    path = Path(text).expanduser()
    if path.is_dir():
        return SessionSource(path, **kw)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return VideoSource(path, **kw)
    if suffix in IMAGE_SUFFIXES:
        return ImageSource([path], **kw)
    if not path.exists():
        raise SourceError(f"no such file or folder, and not a camera index: {text!r}")
    raise SourceError(
        f"cannot tell what {text!r} is: expected a camera index, a session folder, a video "
        f"({', '.join(sorted(VIDEO_SUFFIXES))}) or an image ({', '.join(sorted(IMAGE_SUFFIXES))})"
    )


__all__ = [
    "CameraMode",
    "CameraSource",
    "CaptureLike",
    "FrameSource",
    "ImageSource",
    "LatestFrameSlot",
    "SessionSource",
    "SlotClosed",
    "SourceError",
    "VideoSource",
    "is_camera",
    "open_source",
]
