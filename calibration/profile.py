"""Calibration profiles: one JSON file per user × device, safe to load from anyone.

A profile holds the fitted mapping (plain numbers, never pickle), what it was fitted on
(screen, feature names, the gaze model's id and hash) and the drift offset the closed loop
maintains. Loading a profile made for another gaze model or feature set is an error: its
numbers would silently mean something else.

A profile belongs to a gaze model. The user's profile file (`profile_path`) holds what the
last calibration made; fits of the same calibration for other models (hot reload, or a
start on a newly promoted model) are kept beside it, one per model, in
`<name>.models/<sha256[:16]>[.<read>].json` (`model_profile_path`), and never overwrite it or each
other. `find_for_model` picks the one made for the model in use.

The same network can be read several ways: once, or averaged with its run on the mirrored
face (`FastPathConfig.mirror_average`), told the head pose in camera axes or in the eyes'
ray frame (`gaze_frame`). The reads differ by the network's asymmetry and by what it is
told, biases of a few degrees, so a profile also records its read (`gaze_read`) and counts as
made for another model when the fast path reads otherwise. Profiles written before the
other reads existed say nothing and were fitted on the camera frame's single read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import mapping_from_params
from gazeloop.calibration.problems import first_problem
from gazeloop.calibration.store.atomic import atomic_write_bytes

# How the gaze network was read (`read_name`): once or averaged with the mirrored face, told
# the head pose in camera axes or in the eyes' ray frame, on eye squares of the network's own
# framing or of another size (`@crop<scale>`).
GazeRead = Annotated[
    str, StringConstraints(pattern=r"^(ray:)?(single|mirror_average)(@crop[0-9]+(\.[0-9]+)?)?$")
]
# The network's own framing (`fastpath.features.CROP_SCALE`, held equal by a test): a read
# on it names no crop, as every read before the framing could change.
DEFAULT_CROP_SCALE = 1.8


def read_name(
    mirror_average: bool, head_frame: str = "camera", crop_scale: float = DEFAULT_CROP_SCALE
) -> str:
    """The name of one way of reading the gaze network (`fastpath.gaze_model.GazeModel.read`),
    which a profile records: a mapping fitted on one read is biased on another, since reads
    differ by the network's asymmetry (`mirror_averaged`), by the head pose it is told
    (`FastPathConfig.gaze_frame`) and by the eye squares it is shown (`crop_scale`: on the
    next evit sitting 173 px with the profile's own 1.5, 193 px read at 1.8). "single" is the
    camera frame read once: what every profile made before the other reads existed was
    fitted on."""
    name = "mirror_average" if mirror_average else "single"
    name = name if head_frame == "camera" else f"{head_frame}:{name}"
    if crop_scale == DEFAULT_CROP_SCALE:
        return name
    # Positional digits, never an exponent (`:g` wrote 5e-05, which no profile validates).
    return f"{name}@crop{np.format_float_positional(float(crop_scale), trim='-')}"


def read_config(name: str) -> dict:
    """The fast-path settings (`FastPathConfig` fields) that make the read `name`."""
    name, _, crop = name.partition("@crop")
    frame, _, how = name.rpartition(":")
    return {
        "gaze_frame": frame or "camera",
        "mirror_average": how == "mirror_average",
        "crop_scale": float(crop) if crop else DEFAULT_CROP_SCALE,
    }


SCHEMA_VERSION = 1
# Gaze angles alone: on the 9-point grid session they beat every richer set under
# leave-one-target-out (head pose added: about 45 % more error when this was chosen; the
# gaze-only figure is docs/baselines/grid9_mirrored.json); with few targets every extra
# feature is one more way to overfit.
DEFAULT_FEATURES = ["gaze_yaw", "gaze_pitch"]
# The features a profile may name: what the fast path's samples offer by name
# (`GazeSample.feature_dict`, held to this list by a test), besides `emb_<i>`, the gaze
# network's embedding. A profile naming another could never be applied: every frame would
# fail, and a live run would show no cursor.
FEATURE_NAMES = (
    "gaze_yaw",
    "gaze_pitch",
    "gaze_ray_yaw",
    "gaze_ray_pitch",
    "head_yaw",
    "head_pitch",
    "head_roll",
    "iris_lx",
    "iris_ly",
    "iris_rx",
    "iris_ry",
    "aperture_l",
    "aperture_r",
    "eye_x_mm",
    "eye_y_mm",
    "eye_z_mm",
)


def is_feature_name(name: str) -> bool:
    return name in FEATURE_NAMES or (name.startswith("emb_") and name[4:].isdigit())


class ProfileError(ValueError):
    """A profile file that is unreadable, invalid, or made for something else."""


class ChosenCandidate(BaseModel):
    """The candidate nested selection chose (`calibration.mapping.candidates`)."""

    label: str  # e.g. "ridge:gaze", "geometric:geometric", "ridge:gaze:other"
    mapping: str  # the mapping family
    feature_set: str  # a FEATURE_SETS name, or the mapping's own name for its own features
    features: list[str]
    read: str = "as read"  # or "other": the frames read flipped the other way won
    mirrored: bool | None = None  # whether the frames it was fitted on were selfie views
    hyper: dict[str, float] = Field(default_factory=dict)  # e.g. ridge's alpha
    # Mean error on the frames it was fitted on (in-sample, optimistic; the honest figure is
    # FitReport.mean_px): what `gazeloop eval SESSION --profile P` says on the same session.
    in_sample_mean_px: float | None = None


class HistoryReport(BaseModel):
    """At calibration, with earlier sittings of the user on the device and screen: this
    sitting's own profile against one pooled with them, each scored on this sitting's
    points left out (`calibration.sittings.choose_with_history`)."""

    earlier_sittings: int
    chosen: Literal["alone", "pooled"]
    alone_px: float  # this sitting alone: mean over its points, each left out
    pooled_px: float  # pooled with the earlier sittings, the same points
    pooled_candidate: str  # the candidate the pool chose


class FitReport(BaseModel):
    model_config = ConfigDict(extra="allow")

    targets: int
    frames: int
    mean_px: float | None = None  # leave-one-target-out, on the screen it was fitted on
    median_px: float | None = None
    baseline_mean_px: float | None = None
    hyper: dict[str, Any] = Field(default_factory=dict)
    # Set when the mapping was chosen by nested selection (None: a fixed mapping was asked).
    chosen: ChosenCandidate | None = None
    # Set by a calibration that had earlier sittings to pool with (None: it had none).
    history: HistoryReport | None = None


class MappingSpec(BaseModel):
    name: str
    params: dict[str, Any]


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    user: str
    device: str
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    screen: ScreenGeometry
    features: list[str]
    gaze_model_id: str
    gaze_model_sha256: str
    gaze_read: GazeRead = "single"
    # The fast-path settings its frames were read with (`FastPathConfig.feature_settings`):
    # the read above names the network's, these the rest (landmark backend, focal length,
    # blink thresholds, ...). None: a profile from before they were recorded.
    read_with: dict[str, Any] | None = None
    mapping: MappingSpec
    fit: FitReport
    # Drift offset C in normalised screen units, maintained by the closed loop.
    offset: tuple[float, float] = (0.0, 0.0)
    calibration_session: str | None = None  # where the calibration frames are kept
    # A profile of several sittings pooled (`calibration.sittings`): every one of them,
    # oldest first (`calibration_session` is the newest). Empty: that one session alone.
    calibration_sessions: list[str] = Field(default_factory=list)
    # Sessions offered to that pool and left out (no usable frame): offered again, they
    # would be left out again, so they do not make the pool out of date.
    unusable_sessions: list[str] = Field(default_factory=list)

    @field_validator("features")
    @classmethod
    def _known_features(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not is_feature_name(n)]
        if bad:
            raise ValueError(
                f"unknown feature(s) {bad}; known: {', '.join(FEATURE_NAMES)}, emb_<i>"
            )
        return v

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.model_dump_json(indent=2).encode())
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        gaze_model_sha256: str | None = None,
        features: list[str] | None = None,
        gaze_read: str | None = None,
    ) -> Profile:
        path = Path(path)
        data = _read_profile_json(path)
        try:
            prof = cls.model_validate(data)
        except ValidationError as e:
            raise ProfileError(f"{path}: invalid profile: {first_problem(e)}") from e
        _check_mapping(path, prof)
        _check_offset(path, prof)
        _check_made_for(
            path,
            prof,
            gaze_model_sha256=gaze_model_sha256,
            features=features,
            gaze_read=gaze_read,
        )
        return prof


def _read_profile_json(path: Path) -> Any:
    """The file's JSON, refused before validation when it is of a schema version we do not
    read: its fields could share names with ours and mean something else."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path}: not a readable JSON profile: {e}") from e
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ProfileError(
            f"{path}: schema_version {data.get('schema_version')!r} is not supported "
            f"(this gazeloop reads {SCHEMA_VERSION})"
        )
    return data


def _check_mapping(path: Path, prof: Profile) -> None:
    """The stored mapping must rebuild, hold finite numbers and take as many features as the
    profile lists; caught here, at load, it names the file instead of failing frame by frame
    (a NaN weight put every point nowhere, without a word)."""
    bad = [f"mapping {w} is not a finite number" for w in non_finite(prof.mapping.params, "")]
    if bad:
        raise ProfileError(f"{path}: not a usable profile: {'; '.join(bad)}")
    try:
        mapping = mapping_from_params(prof.mapping.name, prof.mapping.params)
    except (KeyError, ValueError, TypeError) as e:
        raise ProfileError(f"{path}: mapping {prof.mapping.name!r} is invalid: {e}") from e
    if mapping.n_features != len(prof.features):
        raise ProfileError(
            f"{path}: mapping {prof.mapping.name!r} takes {mapping.n_features} features "
            f"but the profile lists {len(prof.features)} ({prof.features})"
        )


# The drift loop keeps |C| far below this (LoopConfig.max_total); beyond a whole screen an
# offset is not a drift but a broken file.
MAX_OFFSET = 1.0


def _check_offset(path: Path, prof: Profile) -> None:
    """The stored drift offset must be a drift: `run` and `track` added a NaN or a
    screen-sized offset to every point, where only `profile show` refused it."""
    ox, oy = prof.offset
    if not (math.isfinite(ox) and math.isfinite(oy)):
        why = f"drift offset ({ox}, {oy}) is not finite"
    elif math.hypot(ox, oy) > MAX_OFFSET:
        why = f"drift offset ({ox:+g}, {oy:+g}) is more than a screen (|offset| <= 1)"
    else:
        return
    raise ProfileError(f"{path}: not a usable profile: {why}")


def non_finite(obj: Any, where: str):
    """Where the numbers of a mapping's parameters are NaN, infinite, or missing in an array
    (a NaN saved as JSON comes back as null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        yield f"{where.lstrip('.')} ({obj})"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from non_finite(v, f"{where}.{k}")
    elif isinstance(obj, list):
        if any(v is None for v in obj) and any(isinstance(v, (int, float)) for v in obj):
            yield f"{where.lstrip('.')} (a missing number)"
        for i, v in enumerate(obj):
            yield from non_finite(v, f"{where}[{i}]")


def _check_made_for(
    path: Path,
    prof: Profile,
    *,
    gaze_model_sha256: str | None,
    features: list[str] | None,
    gaze_read: str | None,
) -> None:
    """A profile fitted on another gaze model, read or feature set would map silently
    wrong numbers, so each one the caller names must match (None: not checked)."""
    if gaze_model_sha256 is not None and prof.gaze_model_sha256 != gaze_model_sha256:
        raise ProfileError(
            f"{path}: made for gaze model {prof.gaze_model_id} "
            f"(sha256 {prof.gaze_model_sha256[:12]}…), not the one loaded "
            f"(sha256 {gaze_model_sha256[:12]}…); recalibrate, or refit it from its "
            "calibration session"
        )
    if gaze_read is not None and prof.gaze_read != gaze_read:
        want = json.dumps(read_config(prof.gaze_read))
        raise ProfileError(
            f"{path}: fitted on the gaze network's {prof.gaze_read} read, but the fast "
            f"path makes the {gaze_read} read; recalibrate, refit it from its calibration "
            f"session (`gazeloop profile fit`), or read as it was fitted: --config with "
            f"{want}"
        )
    if features is not None and list(features) != prof.features:
        raise ProfileError(
            f"{path}: made for features {prof.features}, not {list(features)}; recalibrate"
        )


def read_with_changes(prof: Profile, now: dict[str, Any]) -> list[str]:
    """The settings `now` reads frames with that differ from those `prof` was fitted on, as
    "name was → is" (empty: none, or a profile that did not record them). Said, not
    refused: a profile read otherwise still maps, only less well, and some changes (another
    landmark backend on the same networks) move features little."""
    if prof.read_with is None:
        return []
    # A setting added since the profile was made is not a change: it did not record it.
    keys = sorted(set(prof.read_with) & set(now))
    return [
        f"{k} {shown_setting(prof.read_with[k])} → {shown_setting(now[k])}"
        for k in keys
        if prof.read_with[k] != now[k]
    ]


def shown_setting(v: Any) -> str:
    """A `read_with` value as a person reads it: None is a setting left unset."""
    return "unset" if v is None else str(v)


class ProfileMapper:
    """A profile applied to fast-path samples: features → mapping → + offset, clamped.

    `offset` is read on every call and written by the closed loop (a small array swap,
    atomic under the GIL), so the fast path never waits for the loop."""

    def __init__(self, profile: Profile, screen: ScreenGeometry | None = None):
        self.profile = profile
        self.names = list(profile.features)
        self.mapping = mapping_from_params(profile.mapping.name, profile.mapping.params)
        self.offset = np.asarray(profile.offset, dtype=np.float64)
        self.last_offset = self.offset
        # The screen in use now; the profile's mapping is in normalised units, so another
        # resolution of the same screen needs no refit.
        self.screen = screen or profile.screen
        self._x = np.empty((1, len(self.names)), dtype=np.float64)

    def __call__(self, sample) -> np.ndarray | None:
        d = sample.feature_dict()
        if not d:
            return None
        for i, n in enumerate(self.names):
            self._x[0, i] = d[n]
        # Not clipped to the screen: the fast path clips what it shows, and the drift loop
        # must see a point past the edge where it is (clipped, a drift toward the Dock or
        # the menu bar left residuals no larger than the target's distance to the edge).
        off = self.offset  # read once: the loop replaces it whole from another thread
        self.last_offset = off  # what this frame's point carries (`Live` keeps it with it)
        return self.mapping.predict(self._x)[0] + off

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        return self.screen.to_px(xy)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_profile_path(
    path: str | os.PathLike[str], gaze_model_sha256: str, gaze_read: str = "single"
) -> Path:
    """Where the fit of profile `path` for one gaze model (and read) is kept, beside it. The
    read's `:` becomes `-` in the name: Windows refuses it and macOS's Finder shows it as `/`
    (a fit kept under the old name is refitted once, as for a model it has never seen)."""
    path = Path(path)
    tail = "" if gaze_read == "single" else "." + gaze_read.replace(":", "-")
    return path.parent / f"{path.stem}.models" / f"{gaze_model_sha256[:16]}{tail}.json"


def save_for_model(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Keep `profile` as the fit of `path` for its own gaze model. The file at `path` is
    written only when there is none: it is what the user's calibration made, and a refit
    (for another model, or the same one again) never overwrites it."""
    path = Path(path)
    out = profile.save(model_profile_path(path, profile.gaze_model_sha256, profile.gaze_read))
    if not path.exists():
        profile.save(path)
    return out


def find_for_model(
    path: str | os.PathLike[str], gaze_model_sha256: str, gaze_read: str = "single"
) -> tuple[Profile, Profile | None, str]:
    """(the user's profile at `path`, its fit for this gaze model and read or None, where it
    came from). A kept fit counts only if it was made from the same calibration session no
    earlier than the profile itself: a later recalibration makes older fits stale."""
    path = Path(path)
    base = Profile.load(path)
    if base.gaze_model_sha256 == gaze_model_sha256 and base.gaze_read == gaze_read:
        return base, base, f"{path} (made for this model)"
    kept = model_profile_path(path, gaze_model_sha256, gaze_read)
    made = f"{base.gaze_model_id}, {base.gaze_read} read"
    if not kept.is_file():
        return base, None, f"{path} was made for {made}; no fit for this model and read"
    try:
        fit = Profile.load(kept, gaze_model_sha256=gaze_model_sha256, gaze_read=gaze_read)
    except ProfileError as e:
        # A copy made from the calibration session, which a refit makes again: damaged, it
        # stopped `run` and `track` where the user's own profile was fine.
        return base, None, f"{kept} is unreadable, fitted again ({e})"
    if fit.calibration_session != base.calibration_session or fit.created < base.created:
        return base, None, f"{kept} predates the last calibration ({base.created})"
    return base, fit, f"{kept} (fitted for this model {fit.created})"


def data_dir() -> Path:
    """Where users' profiles, labels and models live (`$GAZELOOP_HOME` overrides)."""
    if os.environ.get("GAZELOOP_HOME"):
        return Path(os.environ["GAZELOOP_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "gazeloop"


def user_dir(user: str) -> Path:
    """A user's folder: their profiles, calibration sessions, labels and samples. A name
    that is one plain folder name is used as it is ("ada lovelace", "李雷"); any other is
    made safe, with a hash of the name so two names never share a folder (`_name_part`)."""
    return data_dir() / "users" / _name_part(user)


# `_name_part`'s made-safe form of a name that is no plain folder name ends so.
_HASHED = re.compile(r"-[0-9a-f]{8}$")


def folder_user(folder: Path) -> str | None:
    """Whose `users/<folder>` this is: the one user its profiles name whose folder it is;
    else the folder's own name, unless that is a made-safe form with a hash ("team/eve"
    lives in `team_eve-<hash>`: that is nobody's name); else None, for the caller to ask."""
    folder = Path(folder)
    named = {n for n in map(_profile_user, folder.glob("profiles/*.json")) if n}
    if len(named) == 1 and user_dir(next(iter(named))).name == folder.name:
        return named.pop()
    return None if _HASHED.search(folder.name) else folder.name


def _profile_user(path: Path) -> str | None:
    try:
        user = json.loads(path.read_text(encoding="utf-8")).get("user")
    except (OSError, ValueError, AttributeError):
        return None
    return user if isinstance(user, str) else None


def profile_path(user: str, device: str) -> Path:
    """One profile per device, in the user's folder."""
    return user_dir(user) / "profiles" / f"{_name_part(device, device=True)}.json"


# A device's profile file sits beside files named after it: "desk.sittings-1512x982.json" is
# desk's pooled profile on that screen, so a device named so must not be written there.
_BESIDE_A_PROFILE = re.compile(r"\.(?:sittings(?:-\d+x\d+)?|models)$")


def _name_part(name: str, *, device: bool = False) -> str:
    """A user or device name as one folder or file name: itself when it is a plain one;
    else with what could leave the folder, hide the file or name another file replaced, and
    a short hash of the name. One-to-one: "李雷" and "王芳" were both "_", and one person's
    calibration replaced the other's profile."""
    plain = (
        name not in ("", ".", "..")
        and not set(name) & {"/", "\\", "\0"}
        and not (device and (name.startswith(".") or _BESIDE_A_PROFILE.search(name)))
    )
    if plain:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{_SAFE.sub('_', name).strip('.') or '_'}-{digest}"


def legacy_profile_path(user: str, device: str) -> Path | None:
    """Where a profile was kept before names were made one-to-one (`_name_part`), when that
    is elsewhere: names with spaces, non-ASCII letters or punctuation. A profile found there
    is someone's only if it names this user and device: several names shared that file."""

    def old(name: str) -> str:
        safe = _SAFE.sub("_", name)
        return "_" + safe if safe.strip(".") == "" else safe

    p = data_dir() / "users" / old(user) / "profiles" / f"{old(device)}.json"
    return None if p == profile_path(user, device) else p
