"""Frame sources on real files (calibrate.mp4, grid9, no_face.jpg), on small videos made
here, and the camera's threading on a fake capture object (no camera in CI)."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.calibration.store.session import Rejection, SessionManifest, load_image
from gazeloop.calibration.store.writer import write_manifest
from gazeloop.fastpath import sources
from gazeloop.fastpath.sources import (
    CameraSource,
    ImageSource,
    LatestFrameSlot,
    SessionSource,
    SlotClosed,
    SourceError,
    VideoSource,
    open_source,
)
from gazeloop.fastpath.types import Frame
from tests.paths import SHARED

GRID9 = SHARED / "data" / "sessions" / "grid9"
VIDEO_DIR = SHARED / "data" / "video-corners4"
CALIBRATE = VIDEO_DIR / "calibrate.mp4"
NO_FACE = VIDEO_DIR / "no_face.jpg"

needs_shared = pytest.mark.skipif(
    not (GRID9.is_dir() and CALIBRATE.is_file()),
    reason=f"shared data not found under {SHARED} (see DESIGN.md)",
)

GRID9_T = [
    1766068421832,
    1766068428071,
    1766068433975,
    1766068437076,
    1766068439840,
    1766068442984,
    1766068446352,
    1766068448724,
    1766068452322,
]
MS = 1_000_000  # ns


def digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


def make_avi(path: Path, n: int = 40, fps: float = 25.0) -> Path:
    """A small MJPG video whose frame k has brightness 5k (so frames are identifiable)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for k in range(n):
        writer.write(np.full((48, 64, 3), 5 * k, np.uint8))
    writer.release()
    return path


# --- video ---------------------------------------------------------------------------------


@pytest.mark.slow
@needs_shared
def test_calibrate_mp4_times_come_from_the_video_and_are_reproducible() -> None:
    runs = []
    for _ in range(2):
        with VideoSource(CALIBRATE) as v:
            seen = [(f.index, f.t_ns, f.image.shape, digest(f.image)) for f in v]
            assert v.fps == 20.0
            assert v.frames_read == 74
            assert v.expected_frames == 74
        runs.append(seen)
    first, second = runs
    assert first == second
    assert [i for i, *_ in first] == list(range(74))
    # 20 fps media time, starting at 0: exactly 50 ms apart.
    assert [t for _, t, *_ in first] == [50 * MS * k for k in range(74)]
    assert {s for *_, s, _ in first} == {(720, 1280, 3)}
    assert len({d for *_, d in first}) > 60  # real, changing frames


@needs_shared
def test_calibrate_mp4_loop_keeps_time_increasing() -> None:
    with VideoSource(CALIBRATE, loop=True, max_frames=150, resize=(160, 90)) as v:
        frames = [(f.index, f.t_ns, digest(f.image)) for f in v]
        assert v.passes == 2
    assert [i for i, _, _ in frames] == list(range(150))
    t = np.array([t for _, t, _ in frames])
    assert np.all(np.diff(t) > 0)
    # Next pass starts one frame period after the last frame: 74 frames x 50 ms.
    assert t[73] == 3650 * MS
    assert t[74] == 3700 * MS
    assert t[148] == 7400 * MS
    assert frames[74][2] == frames[0][2]  # the same picture again
    assert frames[149][2] == frames[1][2]


@needs_shared
def test_video_resize_and_max_frames() -> None:
    with VideoSource(CALIBRATE, max_frames=3, resize=(640, 480)) as v:
        frames = list(v)
    assert [f.image.shape for f in frames] == [(480, 640, 3)] * 3
    assert [f.t_ns for f in frames] == [0, 50 * MS, 100 * MS]


def test_resize_centre_crops_to_the_target_aspect_instead_of_stretching() -> None:
    from gazeloop.fastpath.sources import _resize

    wide = np.zeros((720, 1280, 3), np.uint8)
    wide[:, 640 - 5 : 640 + 5] = 255  # a 10-px bar in the middle
    wide[:, :100] = 128  # a band that a 4:3 centre crop removes
    out = _resize(wide, (640, 480))
    assert out.shape == (480, 640, 3)
    cols = np.flatnonzero(out[240, :, 0] > 200)
    # 960 px kept of 1280, scaled by 2/3: the bar stays 10 * 2/3 px wide, in the middle.
    assert 5 <= cols.size <= 8 and abs(cols.mean() - 319.5) < 1.5
    assert out[:, :5].max() == 0
    tall = np.zeros((800, 400, 3), np.uint8)
    tall[:200] = 255  # the top quarter is cropped away by a 1:1 target
    assert _resize(tall, (200, 200)).max() == 0
    assert _resize(wide, (1280, 720)) is wide


def test_missing_or_unreadable_video_fails_at_open_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found") as e:
        VideoSource(tmp_path / "missing.mp4")
    assert "missing.mp4" in str(e.value)
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(SourceError, match="cannot open video") as e:
        VideoSource(junk)
    assert str(junk) in str(e.value)


@needs_shared
def test_mp4_cut_before_its_index_fails_at_open(tmp_path: Path) -> None:
    # calibrate.mp4 keeps its index (moov) at the end, so half a file is unreadable.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(CALIBRATE.read_bytes()[: CALIBRATE.stat().st_size // 2])
    with pytest.raises(SourceError, match="cut.mp4"):
        VideoSource(cut)


def test_truncated_video_just_ends_and_counts_frames(tmp_path: Path) -> None:
    full = make_avi(tmp_path / "full.avi")
    with VideoSource(full) as v:
        assert len(list(v)) == 40
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with VideoSource(cut) as v:
        frames = list(v)
        assert 0 < len(frames) < 40
        assert v.frames_read == len(frames)
        assert v.expected_frames == 40  # what the header claimed
    assert [f.t_ns for f in frames] == [40 * MS * k for k in range(len(frames))]
    # The frames that did arrive are the right ones (brightness 5k, JPEG-rounded).
    assert [round(float(f.image.mean()) / 5) for f in frames] == list(range(len(frames)))


class _ZeroTimeCapture:
    """A real capture whose media time is always 0, like some backends/containers."""

    def __init__(self, real: type, path: str) -> None:
        self._cap = real(path)

    def get(self, prop: int) -> float:
        return 0.0 if prop == cv2.CAP_PROP_POS_MSEC else self._cap.get(prop)

    def __getattr__(self, name: str) -> object:
        return getattr(self._cap, name)


def test_unusable_media_time_falls_back_to_fps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    avi = make_avi(tmp_path / "v.avi", n=10, fps=25.0)
    real = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda p: _ZeroTimeCapture(real, p))
    with VideoSource(avi, loop=True, max_frames=15) as v:
        t = [f.t_ns for f in v]
    assert t == [40 * MS * k for k in range(15)]


def test_closing_a_video_ends_iteration(tmp_path: Path) -> None:
    v = VideoSource(make_avi(tmp_path / "v.avi", n=10))
    it = iter(v)
    assert next(it).index == 0
    v.close()
    assert list(it) == []
    assert v.frames_read == 1


# --- sessions ------------------------------------------------------------------------------


@needs_shared
def test_grid9_frames_in_time_order_with_labels() -> None:
    with SessionSource(GRID9) as s:
        frames = list(s)
        assert s.skipped == [] and s.rejected == []
        assert s.unmirror is False  # grid9 has no manifest; the caller must say
    assert [f.t_ns for f in frames] == [t * MS for t in GRID9_T]
    assert [f.index for f in frames] == list(range(9))
    assert [f.name for f in frames] == [f"img_{t}.jpg" for t in GRID9_T]
    assert frames[0].label_px == pytest.approx((1675.2773, 20.574219))
    assert frames[8].label_px == pytest.approx((1688.4141, 539.03906))
    assert {f.image.shape for f in frames} == {(1080, 1920, 3)}


@needs_shared
def test_grid9_unmirrored_flips_the_image_not_the_label() -> None:
    raw = load_image(GRID9 / f"img_{GRID9_T[0]}.jpg")
    with SessionSource(GRID9, unmirror=True) as s:
        frame = next(iter(s))
    assert np.array_equal(frame.image, raw[:, ::-1])
    assert not np.array_equal(frame.image, raw)
    assert frame.label_px == pytest.approx((1675.2773, 20.574219))


@needs_shared
def test_manifest_mirrored_flips_unless_overridden(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    for ext in (".jpg", ".json"):
        shutil.copyfile(GRID9 / f"img_{GRID9_T[0]}{ext}", d / f"img_{GRID9_T[0]}{ext}")
    write_manifest(d, SessionManifest(screen_px=(1920, 1080), mirrored=True))
    raw = load_image(d / f"img_{GRID9_T[0]}.jpg")
    with SessionSource(d, resize=None) as s:
        assert s.unmirror is True
        assert np.array_equal(next(iter(s)).image, raw[:, ::-1])
    with SessionSource(d, unmirror=False) as s:
        assert np.array_equal(next(iter(s)).image, raw)


@needs_shared
def test_session_skips_undecodable_images_once_and_loops_monotonic(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    stamps = GRID9_T[:3]
    for t in stamps:
        for ext in (".jpg", ".json"):
            shutil.copyfile(GRID9 / f"img_{t}{ext}", d / f"img_{t}{ext}")
    bad = d / f"img_{stamps[1]}.jpg"
    bad.write_bytes(bad.read_bytes()[:5000])
    with SessionSource(d, loop=True, resize=(64, 36)) as s:
        it = iter(s)
        frames = [next(it) for _ in range(5)]
        assert s.skipped == [Rejection(bad.name, "truncated JPEG (no end-of-image marker)")]
    assert [f.index for f in frames] == [0, 2, 3, 5, 6]  # gaps where the bad image was
    assert {f.image.shape for f in frames} == {(36, 64, 3)}
    t = [f.t_ns // MS for f in frames]
    # One pass later = span + the typical gap (the median of 6239 and 5904 ms).
    step = stamps[2] - stamps[0] + round((6239 + 5904) / 2)
    assert t == [stamps[0], stamps[2], stamps[0] + step, stamps[2] + step, stamps[0] + 2 * step]


def test_session_source_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as e:
        SessionSource(tmp_path / "gone")
    assert "gone" in str(e.value)


# --- images --------------------------------------------------------------------------------


@needs_shared
def test_image_source_spaces_frames_33ms(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg")
    with ImageSource([NO_FACE, junk, GRID9 / f"img_{GRID9_T[0]}.jpg"]) as src:
        frames = list(src)
        assert [r.file for r in src.skipped] == [str(junk)]
    assert [(f.index, f.t_ns, f.name) for f in frames] == [
        (0, 0, "no_face.jpg"),
        (2, 66 * MS, f"img_{GRID9_T[0]}.jpg"),
    ]
    assert frames[0].image.shape == (720, 1280, 3)
    assert frames[0].label_px is None


def test_image_source_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nothing.png"):
        ImageSource(tmp_path / "nothing.png")
    with pytest.raises(SourceError, match="at least one"):
        ImageSource([])


# --- open_source ---------------------------------------------------------------------------


@needs_shared
def test_open_source_picks_the_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[int, dict[str, object]]] = []

    def fake_camera(index: int, **kw: object) -> str:
        opened.append((index, kw))
        return "camera"

    # Never touch a real camera from a test (a developer's laptop has one).
    monkeypatch.setattr(sources, "CameraSource", fake_camera)
    assert open_source("1", width=640) == "camera"
    assert opened == [(1, {"width": 640})]
    with open_source(str(GRID9)) as s:
        assert isinstance(s, SessionSource) and len(s) == 9
    with open_source(CALIBRATE, max_frames=2) as v:
        assert isinstance(v, VideoSource) and len(list(v)) == 2
    with open_source(str(NO_FACE)) as im:
        assert isinstance(im, ImageSource)
    with pytest.raises(SourceError, match="cannot tell"):
        open_source(str(VIDEO_DIR / "Calibration.csv"))
    with pytest.raises(SourceError, match="no such file"):
        open_source("/nonexistent/thing")


# --- latest-frame slot ---------------------------------------------------------------------


def test_slot_keeps_only_the_newest() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.get(timeout=0.01) is None
    for k in (1, 2, 3):
        slot.put(k)
    assert slot.get() == 3
    assert (slot.puts, slot.taken, slot.dropped) == (3, 1, 2)
    assert slot.get(timeout=0.01) is None  # taken items are not delivered twice
    slot.put(4)
    slot.close()
    slot.put(5)  # after close: ignored
    assert slot.get() == 4  # what was put before close still arrives
    with pytest.raises(SlotClosed):
        slot.get(timeout=0.01)
    assert (slot.puts, slot.taken, slot.dropped) == (4, 2, 2)


def test_slot_consumer_that_falls_behind_skips_to_the_newest() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    first_taken = threading.Event()

    def produce() -> None:
        slot.put(0)
        first_taken.wait(5)
        for k in range(1, 1000):
            slot.put(k)
        slot.close()

    producer = threading.Thread(target=produce)
    producer.start()
    assert slot.get(timeout=5) == 0
    first_taken.set()
    producer.join(5)
    # The consumer was busy while 999 items arrived: it sees only the last one.
    assert slot.get(timeout=5) == 999
    with pytest.raises(SlotClosed):
        slot.get(timeout=5)
    assert (slot.puts, slot.taken, slot.dropped) == (1000, 2, 998)


def test_slot_under_a_racing_producer_stays_ordered_and_accounted() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    n = 3000

    def produce() -> None:
        for k in range(n):
            slot.put(k)
            if k % 100 == 0:
                time.sleep(0.0005)
        slot.close()

    producer = threading.Thread(target=produce)
    producer.start()
    got = []
    while True:
        try:
            item = slot.get(timeout=5)
        except SlotClosed:
            break
        assert item is not None
        got.append(item)
    producer.join(5)
    assert all(a < b for a, b in zip(got, got[1:], strict=False))
    assert got[-1] == n - 1
    assert len(got) + slot.dropped == n


# --- camera on a fake capture --------------------------------------------------------------


class FakeCapture:
    """cv2.VideoCapture-shaped: `frames` grabs succeed, then the device is 'unplugged'."""

    def __init__(
        self,
        frames: int | None = None,
        *,
        opened: bool = True,
        grab_s: float = 0.0,
        retrieve_s: float = 0.0,
        block: threading.Event | None = None,
    ) -> None:
        self.frames, self.opened = frames, opened
        self.grab_s, self.retrieve_s, self.block = grab_s, retrieve_s, block
        self.grabbed = 0
        self.released = False
        self.grab_done_ns: list[int] = []
        self.retrieve_start_ns: list[int] = []

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.opened and not self.released

    def grab(self) -> bool:
        if self.block is not None:
            self.block.wait(10)
            return False
        if not self.isOpened() or (self.frames is not None and self.grabbed >= self.frames):
            return False
        time.sleep(self.grab_s)
        self.grabbed += 1
        self.grab_done_ns.append(time.monotonic_ns())
        return True

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        self.retrieve_start_ns.append(time.monotonic_ns())
        time.sleep(self.retrieve_s)  # decoding: must not count as capture time
        return True, np.full((48, 64, 3), self.grabbed % 256, np.uint8)

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self.retrieve() if self.grab() else (False, None)

    def release(self) -> None:
        self.released = True


class Opener:
    """Hands out the given captures in turn, then captures that fail to open."""

    def __init__(self, *caps: FakeCapture) -> None:
        self.caps = list(caps)
        self.calls = 0

    def __call__(self) -> FakeCapture:
        self.calls += 1
        return self.caps.pop(0) if self.caps else FakeCapture(opened=False)


def test_camera_that_cannot_open_is_a_helpful_source_error() -> None:
    with pytest.raises(SourceError, match="cannot open camera 3.*another index"):
        CameraSource(3, open_capture=Opener(FakeCapture(opened=False)))

    def boom() -> FakeCapture:
        raise RuntimeError("no such device")

    with pytest.raises(SourceError, match="no such device"):
        CameraSource(0, open_capture=boom)


def test_camera_time_is_taken_right_after_grab() -> None:
    fake = FakeCapture(6, grab_s=0.002, retrieve_s=0.01)
    with CameraSource(0, open_capture=Opener(fake), retries=0, resize=(32, 24)) as cam:
        frames = list(cam)
    assert frames, "no frame delivered"
    for f in frames:
        # Between the end of grab and the start of decode for that very frame.
        assert fake.grab_done_ns[f.index] <= f.t_ns <= fake.retrieve_start_ns[f.index]
        assert f.image.shape == (24, 32, 3)
        assert int(f.image[0, 0, 0]) == f.index + 1  # the fake paints its grab count
    assert [f.t_ns for f in frames] == sorted({f.t_ns for f in frames})
    assert frames[-1].index == 5  # the newest frame always arrives
    assert len(frames) + cam.dropped == 6


def test_slow_consumer_gets_fresh_frames_and_drops_are_counted() -> None:
    fake = FakeCapture(grab_s=0.001)
    cam = CameraSource(0, open_capture=Opener(fake))
    indices = []
    for f in cam:
        indices.append(f.index)
        if len(indices) == 5:
            break
        time.sleep(0.03)  # a slow consumer: ~30 frames arrive meanwhile
    cam.close()
    assert fake.released
    assert all(a < b for a, b in zip(indices, indices[1:], strict=False))
    assert cam.dropped > 0
    pending = cam.frames_captured - 5 - cam.dropped
    assert pending in (0, 1)


def test_a_frame_grabbed_as_the_source_closes_is_not_counted_as_captured() -> None:
    """The consumer closes while the capture thread is decoding frame 3: that frame goes
    nowhere, so it is not captured (it was counted, and `pending` came out 2 once)."""

    class ClosesDuringRetrieve(FakeCapture):
        cam: CameraSource

        def retrieve(self):
            if self.grabbed == 3:
                self.cam._slot.close()  # what close() does first, at the worst moment
            return super().retrieve()

    fake = ClosesDuringRetrieve(3, grab_s=0.001)
    fake.cam = cam = CameraSource(0, open_capture=Opener(fake), retries=0)
    frames = list(cam)
    cam.close()
    assert fake.grabbed == 3 and cam.frames_captured == 2
    assert len(frames) + cam.dropped == 2


def test_camera_that_stops_is_reopened_then_given_up(caplog: pytest.LogCaptureFixture) -> None:
    opener = Opener(FakeCapture(3), FakeCapture(4))  # unplugged, replugged, then gone
    with CameraSource(0, open_capture=opener, retries=2, backoff_s=0.001) as cam:
        frames = list(cam)
        assert cam.frames_captured == 7
        assert len(frames) + cam.dropped == 7
        assert frames[-1].index == 6
        # One reopen that worked, then two that did not.
        assert cam.reopens == 3 and opener.calls == 4
        assert cam.error is not None and "gave up after 2 reopen attempts" in cam.error
    assert all(a.t_ns < b.t_ns for a, b in zip(frames, frames[1:], strict=False))
    assert "stopped delivering frames" in caplog.text


def test_camera_that_hangs_ends_after_the_stall_timeout() -> None:
    release = threading.Event()
    fake = FakeCapture(block=release)
    cam = CameraSource(0, open_capture=Opener(fake), stall_timeout_s=0.1, retries=0)
    try:
        assert list(cam) == []
        assert cam.error is not None and "no frame for 0.1 s" in cam.error
    finally:
        release.set()
        cam.close()
    assert fake.released


def test_a_window_waiting_for_a_hung_camera_is_called_and_can_stop_it() -> None:
    """While no frame comes, `on_wait` is called (the window draws and reads keys; it froze
    on its last frame); False from it (q pressed) ends the run as a stop, not an error."""
    release = threading.Event()

    class HangsAfterOneFrame(FakeCapture):
        def grab(self) -> bool:
            if self.grabbed >= 1:
                release.wait(10)
                return False
            return super().grab()

    fake = HangsAfterOneFrame()
    cam = CameraSource(0, open_capture=Opener(fake), stall_timeout_s=30.0, retries=0)
    waits: list[float] = []

    def waiting(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) < 3  # q on the third call

    cam.on_wait = waiting
    try:
        assert [f.index for f in cam] == [0]
        assert len(waits) == 3 and waits == sorted(waits) and waits[0] > 0
        assert cam.error is None  # stopped, not failed
    finally:
        release.set()
        cam.close()


def test_unused_camera_is_released_on_close() -> None:
    fake = FakeCapture()
    CameraSource(0, open_capture=Opener(fake)).close()
    assert fake.released and fake.grabbed == 0


def test_frame_type_is_the_shared_one(tmp_path: Path) -> None:
    with VideoSource(make_avi(tmp_path / "v.avi", n=2)) as v:
        assert all(isinstance(f, Frame) for f in v)
