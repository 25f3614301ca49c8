"""One resolver for every model file.

Order: explicit path → `$GAZELOOP_MODELS` → the user cache → (online only) a download from
the publisher's official location, SHA-256 checked before the file is moved into the cache.
A wrong hash is always an error: a model that silently differs from the one we measured
would make every number in the README a lie.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gazeloop.calibration.store.atomic import atomic_writer

log = logging.getLogger(__name__)

ENV_MODELS = "GAZELOOP_MODELS"
ENV_CACHE = "GAZELOOP_CACHE"
ENV_OFFLINE = "GAZELOOP_OFFLINE"


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable or not the file we expect."""


class ModelFileCorrupt(ModelFileError):
    """A model file is there but its bytes are not the release's (SHA-256 differs)."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    name: str  # relative path inside a models directory
    sha256: str | None  # None only for files we build ourselves
    url: str | None = None
    note: str = ""


_OMZ = (
    "https://storage.openvinotoolkit.org/repositories/open_model_zoo/2022.1/"
    "models_bin/3/gaze-estimation-adas-0002/FP16/"
)

FACE_LANDMARKER = ModelFile(
    "face_landmarker.task",
    "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
    "float16/1/face_landmarker.task",
    "MediaPipe Face Landmarker bundle (Apache-2.0)",
)
GAZE_IR_XML = ModelFile(
    "gaze-estimation-adas-0002/gaze-estimation-adas-0002.xml",
    "7323bc1a755439c525c15230fcd40e99bb17a154f17835db30aa4a95feb22cb4",
    _OMZ + "gaze-estimation-adas-0002.xml",
    "Intel Open Model Zoo gaze estimator, OpenVINO IR graph (Apache-2.0)",
)
GAZE_IR_BIN = ModelFile(
    "gaze-estimation-adas-0002/gaze-estimation-adas-0002.bin",
    "0aed599f452258243b07154fadc09b56ef90418b94210bd33f47bbba90cbb98c",
    _OMZ + "gaze-estimation-adas-0002.bin",
    "Intel Open Model Zoo gaze estimator, OpenVINO IR weights (Apache-2.0)",
)
# Built from the IR by `gazeloop models build`; not downloadable, not hash-pinned (its
# metadata records the hashes of the IR files it was built from).
GAZE_ONNX = ModelFile("gaze-estimation-adas-0002.onnx", None, None, "ONNX rebuild of the IR")

# Built from face_landmarker.task's own TFLite networks by `gazeloop models build` (or on
# first use of the `onnx` landmark backend); metadata records the bundle's hash.
FACE_DETECTOR_ONNX = ModelFile(
    "face_landmarker.face_detector.onnx", None, None, "ONNX rebuild of the bundle's detector"
)
FACE_LANDMARKS_ONNX = ModelFile(
    "face_landmarker.face_landmarks_detector.onnx",
    None,
    None,
    "ONNX rebuild of the bundle's 478-point mesh with iris",
)

KNOWN = {
    m.name: m
    for m in (
        FACE_LANDMARKER,
        GAZE_IR_XML,
        GAZE_IR_BIN,
        GAZE_ONNX,
        FACE_DETECTOR_ONNX,
        FACE_LANDMARKS_ONNX,
    )
}


def user_cache() -> Path:
    """gazeloop's folder in the platform's user cache: `~/Library/Caches/gazeloop` on macOS,
    else `$XDG_CACHE_HOME/gazeloop` (`~/.cache/gazeloop`). Models and features share it."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gazeloop"


def cache_dir() -> Path:
    """The user's model cache (created on demand): `$GAZELOOP_CACHE` itself, else
    `user_cache()/models`."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    return user_cache() / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, spec: ModelFile) -> Path:
    if spec.sha256 is None:
        return path
    got = sha256_file(path)
    if got != spec.sha256:
        raise ModelFileCorrupt(
            f"{path}: SHA-256 {got} does not match the expected {spec.sha256} for "
            f"{spec.name}. The file is corrupt or a different release; delete it and point "
            f"{ENV_MODELS} at a folder holding the right file."
        )
    return path


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(ENV_MODELS):
        dirs += [Path(p).expanduser() for p in os.environ[ENV_MODELS].split(os.pathsep) if p]
    dirs.append(cache_dir())
    return dirs


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").lower() not in ("", "0", "false", "no")


def resolve(spec: ModelFile | str, explicit: str | os.PathLike | None = None) -> Path:
    """Find `spec` and return a checked path, or raise ModelFileError saying how to get it."""
    if isinstance(spec, str):
        spec = KNOWN.get(spec) or ModelFile(spec, None)
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ModelFileError(f"{p}: model file not found (given explicitly for {spec.name})")
        return _check(p, spec)
    for d in search_dirs():
        p = d / spec.name
        if p.is_file():
            return _check(p, spec)
    if spec.url and not offline():
        try:
            return download(spec, cache_dir())
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            log.warning("download of %s failed: %s", spec.url, e)
    raise ModelFileError(_missing_message(spec))


def _missing_message(spec: ModelFile) -> str:
    where = ", ".join(str(d) for d in search_dirs())
    lines = [f"model file {spec.name!r} not found (looked in: {where})."]
    if spec.sha256:
        lines.append(f"Expected SHA-256: {spec.sha256}.")
    if spec.url:
        lines.append(f"Publisher's location: {spec.url}")
    lines.append(
        f"Set {ENV_MODELS} to a folder that holds it (in this repository's CI: ../shared/models)"
        + (", or run `gazeloop models build` to make it." if spec.sha256 is None else ".")
    )
    return " ".join(lines)


def download(spec: ModelFile, dest_dir: Path, *, timeout: float = 30.0) -> Path:
    """Fetch `spec.url` into `dest_dir/spec.name`, hash-checked, atomically."""
    assert spec.url
    out = dest_dir / spec.name
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", spec.url, out)
    h = hashlib.sha256()
    # A wrong hash raises inside the block: the temp file is removed, `out` never appears.
    with atomic_writer(out) as f, urllib.request.urlopen(spec.url, timeout=timeout) as r:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            h.update(chunk)
            f.write(chunk)
        if spec.sha256 and h.hexdigest() != spec.sha256:
            raise ModelFileError(
                f"{spec.url}: downloaded file has SHA-256 {h.hexdigest()}, expected "
                f"{spec.sha256}; not used."
            )
    return out


def resolve_gaze_onnx(explicit: str | os.PathLike | None = None, *, build: bool = True) -> Path:
    """The ONNX gaze model; built from the IR into the cache when nothing else has it."""
    try:
        path = resolve(GAZE_ONNX, explicit)
    except ModelFileError:
        if explicit is not None or not build:
            raise
        return build_gaze_onnx(cache_dir())
    if explicit is None and build and not onnx_is_current(path) and path.parent == cache_dir():
        log.info("%s is stale (other IR or builder version): rebuilding", path)
        return build_gaze_onnx(cache_dir())
    return path


def _build_folder(out_dir: Path) -> None:
    """The folder built models go to (the cache unless told), or one line on why not: the
    OS's own "File exists" for a cache path that is a file reads like success."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        part = next((p for p in (out_dir, *out_dir.parents) if p.is_file()), None)
        why = f"{part} is a file, not a folder" if part else (e.strerror or str(e))
        raise ModelFileError(
            f"cannot build the ONNX models into {out_dir}: {why} (set {ENV_CACHE} to a "
            "writable folder)"
        ) from None


def build_gaze_onnx(out_dir: Path) -> Path:
    from gazeloop.fastpath.ir_onnx import build_onnx

    xml = resolve(GAZE_IR_XML)
    binf = resolve(GAZE_IR_BIN)
    _build_folder(out_dir)
    out = out_dir / GAZE_ONNX.name
    log.info("building %s from %s", out, xml)
    return build_onnx(xml, binf, out)


def onnx_is_current(path: Path) -> bool:
    """Whether a built ONNX file came from the pinned IR with this builder version."""
    import onnx

    from gazeloop.fastpath.ir_onnx import BUILDER_VERSION

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    meta = {p.key: p.value for p in m.metadata_props}
    return (
        meta.get("gazeloop.builder") == BUILDER_VERSION
        and meta.get("gazeloop.source.xml_sha256") == GAZE_IR_XML.sha256
        and meta.get("gazeloop.source.bin_sha256") == GAZE_IR_BIN.sha256
    )


# -- the face landmarker's networks as ONNX (landmark backend `onnx`) ----------------------

_FACE_MEMBERS = {
    FACE_DETECTOR_ONNX.name: "face_detector.tflite",
    FACE_LANDMARKS_ONNX.name: "face_landmarks_detector.tflite",
}


def face_onnx_is_current(path: Path, bundle_sha256: str) -> bool:
    """Whether a built face ONNX file came from this bundle with this builder version."""
    import onnx

    from gazeloop.fastpath.tflite_onnx import BUILDER_VERSION

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    meta = {p.key: p.value for p in m.metadata_props}
    return (
        meta.get("gazeloop.builder") == BUILDER_VERSION
        and meta.get("gazeloop.source.bundle_sha256") == bundle_sha256
    )


def resolve_face_onnx(
    task: str | os.PathLike | None = None, *, build: bool = True
) -> tuple[Path, Path]:
    """(detector, landmarks) ONNX rebuilt from the face landmarker bundle `task` (resolved
    when None): the first current pair in the search folders, else built into the cache."""
    task_path = Path(task) if task is not None else resolve(FACE_LANDMARKER)
    digest = sha256_file(task_path)
    for d in search_dirs():
        paths = tuple(d / name for name in _FACE_MEMBERS)
        if all(p.is_file() for p in paths):
            if all(face_onnx_is_current(p, digest) for p in paths):
                return paths  # type: ignore[return-value]
            log.info("%s: face ONNX files are stale (other bundle or builder version)", d)
    if not build:
        raise ModelFileError(
            f"face landmarker ONNX files ({', '.join(_FACE_MEMBERS)}) built from {task_path} "
            "not found; run `gazeloop models build`"
        )
    return build_face_onnx(cache_dir(), task_path, digest)


def build_face_onnx(
    out_dir: Path, task: str | os.PathLike | None = None, digest: str | None = None
) -> tuple[Path, Path]:
    """Rebuild the bundle's detector and landmark networks as ONNX in `out_dir`."""
    from gazeloop.fastpath.tflite_onnx import build_from_bundle

    task_path = Path(task) if task is not None else resolve(FACE_LANDMARKER)
    digest = digest or sha256_file(task_path)
    _build_folder(out_dir)
    log.info("building face landmarker ONNX files in %s from %s", out_dir, task_path)
    members = {member: out_dir / name for name, member in _FACE_MEMBERS.items()}
    # The landmark network runs on every frame: it takes BGR pixels (normalisation folded
    # in); the detector, run only when tracking is lost, keeps the TFLite interface.
    built = build_from_bundle(
        task_path,
        members,
        metadata={"gazeloop.source.bundle_sha256": digest},
        image_input_members={"face_landmarks_detector.tflite"},
    )
    return built["face_detector.tflite"], built["face_landmarks_detector.tflite"]
