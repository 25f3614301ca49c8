"""Moondream2 as an oracle: one snapshot in, one `LineObservation` (or an honest None) out.

What the real API is, verified against the remote code rather than assumed
----------------------------------------------------------------------------
Sources (read through the code index; no weights or network here):
- The HF remote code at revision `2025-04-14`, as copied verbatim by
  github.com/Abhinay1997/SuperWeight-Moondream (README: "Code and weights are from the
  official revision 2025-04-14"), files `hf_moondream.py`, `moondream.py`, `config.py` at
  commit fa9aa41e6a9224c3538e4629f499d80c71f1c94d.
- github.com/vikhyat/moondream `moondream/torch/moondream.py` (later, bf16 code) and
  `moondream/eval/gazefollow.py` (the authors' own use of forced gaze).
- github.com/m87-labs/moondream issue #217 (vikhyat, 2025-01-28): detect_gaze "only returns
  gaze if it thinks the gaze point is within the image"; a setting changes that.

At `2025-04-14`:
- `HfMoondream` exposes `encode_image`, `query`, `caption`, `detect`, `point`, `detect_gaze`
  as properties returning the inner `MoondreamModel` methods (after setting up KV caches).
- `encode_image(image)` takes a PIL image or an `EncodedImage` (returned unchanged) and
  raises ValueError for anything else, numpy included: we must hand it PIL.
- `point(image, object, settings=None)` → `{"points": [{"x", "y"}, ...]}`;
  `detect(image, object, settings=None)` → `{"objects": [{"x_min", "y_min", "x_max",
  "y_max"}, ...]}`, boxes built as centre ± size/2 (so they can overshoot [0,1] a little).
  Both call `encode_image` first, so passing the `EncodedImage` reuses the encoding.
- `detect_gaze(image, eye=None, face=None, unstable_settings={})` → `{"gaze": {"x", "y"}}`
  or `{"gaze": None}`. There is NO `force_detect=` keyword: forcing is
  `unstable_settings={"force_detect": True}`, which replaces the first generated token with
  token 0 so that it is not `eos_id` (50256 at this revision) and a point is always decoded.
  (DESIGN.md: later revisions changed the end token, so forcing returns None there; the
  parser treats that as "no observation".) `prioritize_accuracy` needs `face` and a PIL image
  and runs 20 gaze calls: not used.
- Coordinates are normalised to the image, 0..1, x right, y down.
- dtype: `MoondreamModel.__init__(config, dtype=torch.float16, ...)`, and `HfMoondream` does
  not pass a dtype; `_detect_gaze` builds its coordinate tensors as `torch.float16`. The later
  GitHub code uses `torch.bfloat16` in both places. So the dtype is fixed by the revision:
  float16 up to 2025-04-14, bfloat16 after (DESIGN.md gives the boundary).
- The model's constructor loads its tokenizer with
  `tokenizers.Tokenizer.from_pretrained("vikhyatk/moondream2", revision="2025-01-09")`,
  through the tokenizers library's own Hub client: `local_files_only` does not cover it, so
  an offline machine needs that `tokenizer.json` cached too (see `missing_weights_message`).
- transformers: `torch_dtype=` was renamed `dtype=` in 4.56 (transformers PR #39782), so the
  keyword is chosen by version. We pass `code_revision=` as well as `revision=`, both the
  resolved commit, so the code is pinned explicitly rather than by the weights' revision.

Not verified here (taken from DESIGN.md): that the remote code breaks on transformers ≥ 5;
where after 2025-04-14 the end token changed; the commit hash the `2025-04-14` tag points to
(set `code_commit` from `refs/2025-04-14` of a reviewed download). Where the tokenizers
library caches `tokenizer.json` depends on its version (older ones: ~/.cache/huggingface/
tokenizers; newer: the Hub cache).

Why the commit check comes before `from_pretrained`: `trust_remote_code=True` executes the
repository's Python. The snapshot's commit is resolved from the cache first
(`hf_hub_download("config.json")` lands in `.../snapshots/<commit>/`), compared with
`MoondreamConfig.code_commit`, and only then is the code imported, pinned to that commit.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import OracleLabel, Snapshot
from gazeloop.oracle.base import OracleCancelled, OracleError
from gazeloop.oracle.moondream_parse import observation_from_answers, parse_gaze, query_eye

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "vikhyatk/moondream2"
DEFAULT_REVISION = "2025-04-14"
# The last revision whose remote code is float16 and honours force_detect (DESIGN.md).
LAST_FP16_REVISION = "2025-04-14"
# The remote code at 2025-04-14 loads its tokenizer from this revision, outside
# transformers' local_files_only.
TOKENIZER_REVISION = "2025-01-09"
# The reviewed commit of the remote code at DEFAULT_REVISION, which `code_commit` defaults to.
# Unset: nobody with Hub access has recorded the commit `refs/2025-04-14` resolves to (the
# development machines are offline, and a hash copied from elsewhere would be a pin on
# nothing). Until it is set, the default refuses to run the remote code: set `code_commit`
# to the commit you reviewed, or run unpinned on purpose (`allow_unpinned`, said loudly).
REVIEWED_CODE_COMMIT: str | None = None
INSTALL_HINT = "pip install 'gazeloop[oracle]'"

_DATE_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

DtypeName = Literal["float16", "bfloat16"]


class MoondreamConfig(BaseModel):
    """Which Moondream, from where, on what. `local_files_only` is True at run time (no
    network while tracking); only an explicit fetch command should set it False."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model_id: str = DEFAULT_MODEL_ID
    revision: str = DEFAULT_REVISION
    # The exact commit the remote code must come from; None refuses to load unless
    # `allow_unpinned`, which runs whatever the revision resolves to (a loud warning).
    code_commit: str | None = REVIEWED_CODE_COMMIT
    allow_unpinned: bool = False
    device: str = "auto"  # auto = mps → cuda → cpu
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"  # auto = what the revision uses
    local_files_only: bool = True

    @field_validator("code_commit")
    @classmethod
    def _full_commit(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().lower()
        if not _COMMIT.match(v):
            raise ValueError(f"code_commit must be a full 40-hex commit hash, got {v!r}")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got {v!r}")
        return v

    @model_validator(mode="after")
    def _dtype_fits_revision(self) -> MoondreamConfig:
        fixed = revision_dtype(self.revision)
        if self.dtype == "auto" and fixed is None:
            raise ValueError(
                f"revision {self.revision!r} is not a dated release, so its dtype is unknown: "
                "set dtype to float16 (remote code up to 2025-04-14) or bfloat16 (later)"
            )
        if self.dtype != "auto" and fixed is not None and self.dtype != fixed:
            # The remote code hard-codes its coordinate dtype; another one fails mid-call.
            raise ValueError(
                f"revision {self.revision} runs in {fixed}; dtype={self.dtype} would not work"
            )
        return self

    @property
    def dtype_name(self) -> DtypeName:
        return revision_dtype(self.revision) or self.dtype  # type: ignore[return-value]


def revision_dtype(revision: str) -> DtypeName | None:
    """The dtype a dated revision's remote code is written for; None for other revisions
    (branches, commit hashes), whose dtype the caller must state."""
    if not _DATE_REVISION.match(revision):
        return None
    # ISO dates compare correctly as strings.
    return "float16" if revision <= LAST_FP16_REVISION else "bfloat16"


# --- loading ----------------------------------------------------------------------------


def _version_tuple(v: str) -> tuple[int, int]:
    m = re.match(r"(\d+)(?:\.(\d+))?", str(v))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


def import_transformers() -> Any:
    """transformers, if it is installed and older than 5 (the remote code's requirement)."""
    try:
        import transformers
    except ImportError as e:
        raise OracleError(_import_failed("transformers", "transformers<5", e)) from None
    version = getattr(transformers, "__version__", "0")
    if _version_tuple(version) >= (5, 0):
        raise OracleError(
            f"Moondream's remote code needs transformers<5, found {version}: "
            f"pip install 'transformers>=4.40,<5' (or {INSTALL_HINT})"
        )
    return transformers


def _not_installed(name: str) -> str:
    return f"the Moondream oracle needs {name} (not installed): {INSTALL_HINT}"


def _import_failed(module: str, name: str, e: ImportError) -> str:
    """Not installed, or installed and failing to import (a dependency of the wrong version):
    the second said with its own reason, where reinstalling the extra is not the cure."""
    if isinstance(e, ModuleNotFoundError) and (e.name or "").partition(".")[0] == module:
        return _not_installed(name)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return f"the Moondream oracle needs {name}, which is installed but does not import: {reason}"


def _import_or_explain(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as e:
        raise OracleError(_import_failed(name, name, e)) from None


def resolve_device(requested: str, torch: Any) -> str:
    """auto → mps, then cuda, then cpu; an explicit device that is not there is an error
    (silently running a 2B model on CPU instead of the GPU asked for is not what anyone wants)."""
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    has_cuda = bool(torch.cuda.is_available())
    if requested == "auto":
        return "mps" if has_mps else "cuda" if has_cuda else "cpu"
    if requested == "mps" and not has_mps:
        raise OracleError("device mps requested, but torch reports no MPS backend")
    if requested.startswith("cuda") and not has_cuda:
        raise OracleError(f"device {requested} requested, but torch reports no CUDA device")
    return requested


def hf_cache_dir() -> str:
    """Where huggingface_hub looks for models (for messages; it resolves it the same way)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def missing_weights_message(cfg: MoondreamConfig, exc: BaseException) -> str:
    cause = (str(exc).strip().splitlines() or [""])[0][:200]
    return (
        f"Moondream {cfg.model_id}@{cfg.revision} is not in the local Hugging Face cache "
        f"({hf_cache_dir()}), and gazeloop does not download at run time.\n"
        "On a machine with internet:\n"
        f"    huggingface-cli download {cfg.model_id} --revision {cfg.revision}\n"
        f"    huggingface-cli download {cfg.model_id} tokenizer.json "
        f"--revision {TOKENIZER_REVISION}   # the remote code loads this tokenizer\n"
        "then copy that machine's cache folder (~/.cache/huggingface, or $HF_HOME) here, or "
        "set HF_HOME to a copy.\n"
        f"(cause: {type(exc).__name__}: {cause})"
    )


def commit_from_snapshot_path(path: str | os.PathLike[str]) -> str | None:
    """The commit in a Hub cache path `.../snapshots/<40-hex commit>/<file>`, else None."""
    parts = PurePath(os.fspath(path)).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and _COMMIT.match(parts[i + 1]):
            return parts[i + 1]
    return None


def resolve_snapshot_commit(cfg: MoondreamConfig) -> str | None:
    """The commit `cfg.revision` points to, from the local cache (or the Hub when
    `local_files_only` is False); None for a model folder on disk, which has no commit."""
    if Path(cfg.model_id).is_dir():
        return None
    hub = _import_or_explain("huggingface_hub")
    try:
        path = hub.hf_hub_download(
            cfg.model_id,
            "config.json",
            revision=cfg.revision,
            local_files_only=cfg.local_files_only,
        )
    except OSError as exc:  # LocalEntryNotFoundError is a FileNotFoundError
        raise OracleError(missing_weights_message(cfg, exc)) from None
    return commit_from_snapshot_path(path)


def check_code_commit(cfg: MoondreamConfig, resolved: str | None) -> None:
    """Refuse remote code from any commit but `cfg.code_commit` (trust_remote_code runs it)."""
    if cfg.code_commit is None:
        if not cfg.allow_unpinned:
            raise OracleError(
                f"refusing to run Moondream's remote code unpinned: no reviewed commit is "
                f"recorded for {cfg.model_id}@{cfg.revision} (it resolves to {resolved}); "
                "set code_commit to the commit you reviewed, or allow unpinned code explicitly"
            )
        log.warning(
            "UNPINNED: running Moondream remote code (trust_remote_code) from whatever "
            "%s@%s resolves to (%s), reviewed by nobody here",
            cfg.model_id,
            cfg.revision,
            resolved,
        )
        return
    if resolved is None:
        raise OracleError(
            f"refusing to run Moondream's remote code: cannot tell which commit "
            f"{cfg.model_id}@{cfg.revision} is, and code_commit pins {cfg.code_commit}"
        )
    if resolved.lower() != cfg.code_commit:
        raise OracleError(
            f"refusing to run Moondream's remote code: {cfg.model_id}@{cfg.revision} is commit "
            f"{resolved}, but code_commit pins {cfg.code_commit}. Fetch that commit, or update "
            "code_commit after reviewing the new code."
        )


def load_moondream(cfg: MoondreamConfig) -> Any:
    """The real model, on `cfg.device`, in the revision's dtype, from the pinned commit.

    Every expected failure is one `OracleError` with what to do: packages missing or
    transformers ≥ 5, weights not cached (how to get them), code from another commit.
    """
    transformers = import_transformers()
    torch = _import_or_explain("torch")
    _import_or_explain("accelerate")  # device_map needs it; say so before transformers does
    device = resolve_device(cfg.device, torch)
    dtype = getattr(torch, cfg.dtype_name)

    commit = resolve_snapshot_commit(cfg)
    check_code_commit(cfg, commit)
    pin = commit or cfg.revision
    dtype_kw = "dtype" if _version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            cfg.model_id,
            revision=pin,
            code_revision=pin,
            trust_remote_code=True,
            local_files_only=cfg.local_files_only,
            device_map={"": device},
            **{dtype_kw: dtype},
        )
    except OSError as exc:  # transformers' "can't find/connect" errors are OSErrors
        raise OracleError(missing_weights_message(cfg, exc)) from None
    except Exception as exc:
        hint = ""
        if "tokenizer" in str(exc).lower():
            hint = (
                f" (the remote code loads tokenizer.json of {cfg.model_id}@{TOKENIZER_REVISION}"
                " itself; it must be cached too)"
            )
        raise OracleError(f"loading Moondream failed: {type(exc).__name__}: {exc}{hint}") from exc

    loaded = getattr(getattr(model, "config", None), "_commit_hash", None)
    if cfg.code_commit is not None and loaded and loaded.lower() != cfg.code_commit:
        raise OracleError(
            f"refusing Moondream: loaded commit {loaded}, but code_commit pins {cfg.code_commit}"
        )
    if hasattr(model, "eval"):
        model.eval()
    log.info("Moondream %s@%s (%s) on %s, %s", cfg.model_id, cfg.revision, pin, device, dtype)
    return model


# --- images -----------------------------------------------------------------------------


def bgr_to_rgb(image: Any) -> np.ndarray:
    """A snapshot's HxWx3 uint8 BGR frame as a contiguous RGB array (no pillow needed)."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
        raise OracleError(
            f"snapshot image must be HxWx3 uint8 BGR, got {a.dtype} with shape {a.shape}"
        )
    return np.ascontiguousarray(a[:, :, ::-1])


def to_model_image(image: Any) -> Any:
    """A BGR frame as the PIL RGB image `encode_image` insists on (pillow imported here)."""
    rgb = bgr_to_rgb(image)
    try:
        from PIL import Image
    except ImportError:
        raise OracleError(_not_installed("pillow")) from None
    # An HxWx3 uint8 array is RGB to Pillow; its `mode` argument is deprecated (11.3).
    return Image.fromarray(rgb)


# --- the oracle -------------------------------------------------------------------------


def _model_commit(model: Any) -> str | None:
    c = getattr(getattr(model, "config", None), "_commit_hash", None)
    return c if isinstance(c, str) and c else None


class MoondreamOracle:
    """The `oracle.base.Oracle` for Moondream2.

    Per snapshot: one `encode_image`, then on that encoding `point("pupil")`,
    `detect("face")`, `detect_gaze` plain and (only when the plain answer is "not in the
    frame") forced; `cancel` is checked before each call, since each takes seconds.
    `camera_norm` overrides `screen.camera_norm` (the camera's in-plane position in
    normalised screen units); without either, labels carry no observation.
    """

    name = "moondream"

    def __init__(
        self,
        model: Any,
        cfg: MoondreamConfig,
        screen: ScreenGeometry,
        *,
        camera_norm: tuple[float, float] | None = None,
    ) -> None:
        self._model = model
        self.cfg = cfg
        self.screen = screen
        cam = camera_norm if camera_norm is not None else screen.camera_norm
        self.camera_norm = None if cam is None else (float(cam[0]), float(cam[1]))
        if self.camera_norm is not None and not all(map(math.isfinite, self.camera_norm)):
            raise ValueError(f"camera_norm must be finite, got {self.camera_norm}")
        commit = cfg.code_commit or _model_commit(model)
        self.version = f"{cfg.model_id}@{cfg.revision}" + (f"#{commit[:12]}" if commit else "")
        # The model is not thread-safe; the worker uses one thread, this makes it a rule.
        self._lock = threading.Lock()

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel:
        t0 = time.monotonic()
        with self._lock:
            answers = self._ask(snap, cancel)
        obs, in_frame, confidence, details = observation_from_answers(
            answers, snap, self.screen, self.camera_norm
        )
        return OracleLabel(
            t_ns=snap.t_ns,
            snapshot_id=snap.snapshot_id,
            oracle=self.name,
            oracle_version=self.version,
            observation=obs,
            confidence=confidence,
            in_frame=in_frame,
            latency_s=time.monotonic() - t0,
            details=details,
        )

    def _ask(self, snap: Snapshot, cancel: threading.Event) -> dict[str, Any]:
        model = self._model
        if model is None:
            raise OracleError("the Moondream oracle is closed")
        image = to_model_image(snap.image)

        def call(step: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
            if cancel.is_set():
                raise OracleCancelled(f"cancelled before {step}")
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                raise OracleError(f"moondream {step} failed: {type(exc).__name__}: {exc}") from exc

        enc = call("encode_image", model.encode_image, image)
        answers: dict[str, Any] = {}
        answers["pupils"] = call("point", model.point, enc, "pupil")
        answers["faces"] = call("detect", model.detect, enc, "face")
        eye = query_eye(snap, answers["pupils"], answers["faces"])
        answers["eye"] = eye
        if eye is None:
            return answers  # the parser says why there is no observation
        answers["gaze"] = call("detect_gaze", model.detect_gaze, enc, eye=eye)
        plain, _ = parse_gaze(answers["gaze"])
        # A plain answer that is a point is what forcing would give too (forcing only
        # skips the end token); don't spend seconds on it.
        if plain is None:
            answers["gaze_forced"] = call(
                "detect_gaze(force_detect)",
                model.detect_gaze,
                enc,
                eye=eye,
                unstable_settings={"force_detect": True},
            )
        if cancel.is_set():
            raise OracleCancelled("cancelled after the last call")
        return answers

    def close(self) -> None:
        self._model = None
        torch = sys.modules.get("torch")  # only if it was ever loaded
        if torch is not None:
            try:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception as exc:  # freeing a cache must not fail a shutdown
                log.debug("torch cache not emptied: %s", exc)


__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_REVISION",
    "REVIEWED_CODE_COMMIT",
    "MoondreamConfig",
    "MoondreamOracle",
    "bgr_to_rgb",
    "check_code_commit",
    "commit_from_snapshot_path",
    "import_transformers",
    "load_moondream",
    "missing_weights_message",
    "resolve_device",
    "resolve_snapshot_commit",
    "revision_dtype",
    "to_model_image",
]


def build_oracle(
    config: dict[str, Any], screen: dict[str, Any], camera_norm: list[float] | None = None
) -> MoondreamOracle:
    """Load Moondream and wrap it, from JSON values only: the factory that
    `oracle.process.ProcessOracle` calls inside its child process."""
    cfg = MoondreamConfig.model_validate(config)
    geometry = ScreenGeometry.model_validate(screen)
    cam = None if camera_norm is None else (float(camera_norm[0]), float(camera_norm[1]))
    return MoondreamOracle(load_moondream(cfg), cfg, geometry, camera_norm=cam)
