"""A frame source together with the screen targets its frames were recorded under.

`gazeloop calibrate --headless`, `gazeloop record` and `gazeloop run --oracle targets` replay
recordings whose frames say where the person looked: a session folder (its labels), or the
4-corner study recording (calibrate.mp4 + Calibration.csv), imported on the fly into a
temporary session so both go through the same reader. Any other source (camera, plain
video, image) opens as itself, without targets.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gazeloop.calibration.store.session import Session, read_session
from gazeloop.fastpath.collect import target_ids
from gazeloop.fastpath.sources import (
    CameraSource,
    FrameSource,
    SessionSource,
    SourceError,
    VideoSource,
    is_camera,
    open_source,
)
from gazeloop.fastpath.types import Frame
from gazeloop.tools.runtime.importers import (
    CSV_NAME,
    VIDEO_NAME,
    SessionImportError,
    import_corners4,
)


@dataclass(frozen=True, slots=True)
class FrameTarget:
    """What the recording says about one frame."""

    target: int  # frames of one target share this id
    label_px: tuple[float, float]  # screen pixels of the recording's screen
    settling: bool  # the eyes were still moving to this target


@dataclass
class LabelledSource:
    source: FrameSource
    spec: str  # as the user gave it, for messages
    kind: str  # "session", "corners4", "camera", "video", "image"
    session: Session | None = None  # the recording, when its frames carry targets
    targets_px: list[tuple[float, float]] = field(default_factory=list)  # by target id
    _by_name: dict[str, FrameTarget] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def labelled(self) -> bool:
        return self.session is not None

    @property
    def screen_px(self) -> tuple[int, int] | None:
        return None if self.session is None else self.session.screen_px

    def target_of(self, frame: Frame) -> FrameTarget | None:
        return self._by_name.get(frame.name or "")

    def describe(self) -> str:
        if self.kind == "corners4":
            return f"4-corner recording {self.spec} ({len(self.targets_px)} targets)"
        if self.kind == "session":
            return f"session {self.spec} ({len(self.targets_px)} targets)"
        if isinstance(self.source, CameraSource):  # the mode it runs at, not the one asked
            return f"camera {self.spec} ({self.source.mode_text()})"
        return f"{self.kind} {self.spec}"

    def close(self) -> None:
        self.source.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LabelledSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def corners4_folder(path: Path) -> Path | None:
    """The recording folder when `path` is a 4-corner recording or its video, else None."""
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name != VIDEO_NAME:
        return None
    if (folder / VIDEO_NAME).is_file() and (folder / CSV_NAME).is_file():
        return folder
    return None


def refuse_mirrored(spec: str | os.PathLike[str], mirrored: bool | None) -> None:
    """--mirrored says how a session folder's images were stored: given with a camera, a
    video or the 4-corner recording (read by its importer) it would be ignored, so it is
    refused (SourceError), naming the source."""
    if mirrored is None:
        return
    path = Path(os.fspath(spec)).expanduser()
    if is_camera(spec) or not path.is_dir() or corners4_folder(path):
        raise SourceError(f"{os.fspath(spec)}: --mirrored is for a session folder's images")


def read_as_fitted(stated: bool, profile) -> bool | None:
    """Whether a session folder's images are to be flipped back, when neither its manifest
    nor --mirrored says (`stated` False): as the profile's own frames were read
    (`fit.chosen.mirrored`). None: leave them as they are (stated, or the profile does not
    say). A mapping fitted on flipped-back selfie views puts an unflipped face's gaze on the
    other side of the screen: `track`, `eval --profile` and `run` all read a folder so."""
    chosen = profile.fit.chosen if profile is not None else None
    if stated or chosen is None:
        return None
    return chosen.mirrored


def open_labelled(
    spec: str | os.PathLike[str],
    *,
    screen_px: tuple[int, int] | None = None,
    mirrored: bool | None = None,
    with_targets: bool = True,
    camera_fps: float | None = None,
    camera_size: tuple[int, int] | None = None,
) -> LabelledSource:
    """Open `spec` (camera index, session folder, 4-corner recording or its calibrate.mp4,
    video, image); its targets come along when the recording has them. `screen_px` and
    `mirrored` state what a session without a manifest cannot (see `read_session`).
    `with_targets=False`: a 4-corner recording's video plays as the video it is (its own
    frames and media time; no import). `camera_fps` and `camera_size` (w, h) are what a
    camera is asked for; with any other source they are refused."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    refuse_mirrored(spec, mirrored)
    if is_camera(spec):
        w, h = camera_size or (None, None)
        return LabelledSource(open_source(text, fps=camera_fps, width=w, height=h), text, "camera")
    if camera_fps is not None or camera_size is not None:
        raise SourceError(f"a camera's fps and size apply to a camera index, not to {text!r}")
    c4 = corners4_folder(path) if with_targets and path.exists() else None
    if c4 is not None:
        # The importer is the one reader of that study's files (labels in mm → px, settling
        # frames marked); a temporary session keeps one code path for every recording.
        tmp = tempfile.TemporaryDirectory(prefix="gazeloop-corners4-")
        try:
            import_corners4(c4, Path(tmp.name) / "session")
            session = read_session(Path(tmp.name) / "session")
        except SessionImportError as e:
            tmp.cleanup()
            raise SourceError(f"{c4}: cannot read the 4-corner recording: {e}") from e
        except BaseException:
            tmp.cleanup()
            raise
        return _with_session(session, text, "corners4", tmp)
    if path.is_dir():
        session = read_session(path, screen_px=screen_px, mirrored=mirrored)
        return _with_session(session, text, "session", None)
    src = open_source(text)
    kind = "video" if isinstance(src, VideoSource) else "image"
    if isinstance(src, CameraSource):
        kind = "camera"
    return LabelledSource(src, text, kind)


def _with_session(
    session: Session, spec: str, kind: str, tmp: tempfile.TemporaryDirectory | None
) -> LabelledSource:
    ids = target_ids(session)
    by_name: dict[str, FrameTarget] = {}
    targets: dict[int, tuple[float, float]] = {}
    for item, tid in zip(session.items, ids, strict=True):
        extra = item.record.model_extra or {}
        targets.setdefault(tid, item.label_px)
        by_name[item.name] = FrameTarget(tid, item.label_px, bool(extra.get("settling", False)))
    return LabelledSource(
        source=SessionSource(session),
        spec=spec,
        kind=kind,
        session=session,
        targets_px=[targets[i] for i in range(len(targets))],
        _by_name=by_name,
        _tmp=tmp,
    )
