"""Options shared by the commands (not a command itself): the fast-path flags, the
calibration grid's flags (`calibrate`, and `run` for its `c` key), a fixed mapping or
nested selection (`calibrate`, `profile fit`, `eval`) and a fixed mapping's frames and
features (`eval`, `profile fit`), the user and the screen as the flags and a recording's
manifest describe them (`calibrate`, `run`, `eval`, `profile`), the flags of reading a
recorded session (`eval`, `eval-sittings`, `profile fit`, `bench loop`), the camera's mode
(`run`, `calibrate`, `record`) and the broker flags (`collect`, `announce`, `fetch`,
`bench mqtt`). The only module commands share."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.geometry import ScreenGeometry, session_screen
from gazeloop.calibration.mapping import MAPPINGS, mapping_class
from gazeloop.calibration.procedure import LAYOUTS, ProcedureConfig
from gazeloop.calibration.profile import DEFAULT_FEATURES, FEATURE_NAMES, is_feature_name
from gazeloop.calibration.store.atomic import check_writable
from gazeloop.calibration.store.session import SessionManifest
from gazeloop.fastpath.collect import collect_session
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.providers import EP_CHOICES, ProviderError, resolve_providers
from gazeloop.fastpath.sources import is_camera
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.made_by import made_by
from gazeloop.tools.runtime.progress import Progress
from gazeloop.tools.runtime.run_config import PolicySettings, RunConfig

# --- numbers a user types ------------------------------------------------------------------


def _number(kind: type, positive: bool):
    what = ("a positive " if positive else "a non-negative ") + (
        "integer" if kind is int else "number"
    )

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, positive=True)
positive_float = _number(float, positive=True)
non_negative_float = _number(float, positive=False)
non_negative_int = _number(int, positive=False)


def finite_float(text: str) -> float:
    """Any finite number (a position, which may be negative): NaN and infinities refused."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


finite_float.__name__ = "a finite number"


def fraction(text: str) -> float:
    """A share between 0 and 1."""
    v = non_negative_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text!r}")
    return v


fraction.__name__ = "a fraction"


# --- the fast path -------------------------------------------------------------------------


def add_fastpath_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fast path")
    g.add_argument(
        "--config",
        type=Path,
        help="a JSON file of settings: fast-path ones, or sections fastpath, loop, policy, "
        "oracle (README, Configuration)",
    )
    g.add_argument(
        "--landmarks",
        choices=["onnx", "tasks", "legacy"],
        help="landmark backend (default onnx; tasks needs the mediapipe extra, legacy the "
        "legacy extra)",
    )
    g.add_argument("--face-model", type=Path, help="face_landmarker.task")
    g.add_argument("--gaze-model", type=Path, help="ONNX gaze model")
    g.add_argument(
        "--filter",
        choices=["one_euro", "kalman", "none"],
        help="smoothing filter (default one_euro)",
    )
    g.add_argument("--threads", type=positive_int, help="onnxruntime intra-op threads (default 1)")
    g.add_argument(
        "--ep",
        choices=EP_CHOICES,
        help="onnxruntime execution provider (default auto: CoreML on a Mac, CUDA when "
        "offered, CPU otherwise)",
    )


_JSON_KINDS = {list: "a list", str: "a string", bool: "a boolean", int: "a number"}
_JSON_KINDS |= {float: "a number", type(None): "null"}


def read_config_file(path: str | Path, name: str, fields: str) -> dict:
    """A `--config` file's JSON object (of `fields`' fields), or one line naming the file:
    unreadable (binary, bad JSON, nested beyond the parser) or not an object."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path}: cannot read {name}: {e}") from None
    if not isinstance(doc, dict):
        kind = _JSON_KINDS.get(type(doc), type(doc).__name__)
        raise UserError(f"{path}: a {name} is a JSON object of {fields} fields, not {kind}")
    return doc


def run_config(args: argparse.Namespace) -> RunConfig:
    """The `--config` file (if any: sectioned, or flat fast-path settings; see
    `tools.runtime.run_config`) with the fast-path flags that were given over it. Read once
    per command: what it runs with and the config.json it writes at the end are the same
    settings, even if the file changes meanwhile."""
    cached = getattr(args, "_run_config", None)
    if cached is not None:
        return cached
    doc: dict = {}
    if getattr(args, "config", None):
        doc = read_config_file(args.config, "config", "settings")
    flags = {}
    for key in ("landmarks", "face_model", "gaze_model", "filter", "threads", "ep"):
        v = getattr(args, key, None)
        if v is not None:
            flags[key] = v
    where = str(args.config) if getattr(args, "config", None) else "command line"
    try:
        cfg = RunConfig.from_doc(doc, where, flags)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:  # a forced provider this onnxruntime lacks: one line, before any model loads
        resolve_providers(cfg.fastpath.ep)
    except ProviderError as e:
        raise UserError(f"{'--ep' if getattr(args, 'ep', None) else args.config}: {e}") from None
    args._run_config = cfg
    return cfg


def with_interval(policy: PolicySettings, seconds: float | None) -> PolicySettings:
    """The policy with `--snapshot-every` over the config's interval, when it was given."""
    if seconds is None:
        return policy
    return policy.model_copy(update={"min_interval_s": seconds})


def labelling_config(args: argparse.Namespace, default_interval_s: float | None = None):
    """`run_config` with `--snapshot-every` over the config's interval (`run`, `demo`): what
    runs and what the label store records of it. `default_interval_s`: the interval when
    neither the flag nor the file gives one (else the policy's own default)."""
    cfg = run_config(args)
    seconds = args.snapshot_every
    if seconds is None and "min_interval_s" not in cfg.policy.model_fields_set:
        seconds = default_interval_s
    return cfg.model_copy(update={"policy": with_interval(cfg.policy, seconds)})


def resolved_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a report was made with, resolved (the defaults, the `--config` file, the
    flags over it), as JSON: a `--json` report's "settings", as `config.json` is beside a
    folder of output. A number without them cannot be made again."""
    return run_config(args).model_dump(mode="json")


def fastpath_config(args: argparse.Namespace) -> FastPathConfig:
    """The fast path's settings: `run_config`'s first section."""
    return run_config(args).fastpath


def serve_users_model(args: argparse.Namespace) -> None:
    """Have the fast path run the model `run` serves `args.user` (their promoted one) unless
    a gaze model is named, and say which on stderr (`calibrate`, `profile fit`): a profile
    fitted with the stock model while another was promoted was refitted at every `run`'s
    start, and the accuracy printed was not what the cursor would get."""
    from gazeloop.tools.runtime.hotreload import startup_model

    model_id = getattr(args, "model_id", None)
    cfg, said = startup_model(fastpath_config(args), user=args.user, model_id=model_id)
    print(said, file=sys.stderr, flush=True)
    args._run_config = run_config(args).model_copy(update={"fastpath": cfg})


# --- the camera ----------------------------------------------------------------------------

# The fast path is built for 60 Hz; a camera left at its driver's default (often 30 fps)
# caps it below that without a word, so 60 is asked for unless the user says otherwise.
DEFAULT_CAMERA_FPS = 60.0


def camera_fps(text: str) -> float | str:
    """--camera-fps: a positive number, or `driver`: ask for none. A rate asked for is held
    (macOS fixes the frame duration), so a dim room gets darker frames; the driver's own
    may slow down to expose longer."""
    return "driver" if text.strip().lower() == "driver" else positive_float(text)


def add_camera_args(p: argparse.ArgumentParser) -> None:
    """The mode a camera source is asked for (`run`, `calibrate`, `record`)."""
    g = p.add_argument_group("camera (a camera index as --source only)")
    g.add_argument(
        "--camera-fps",
        type=camera_fps,
        metavar="FPS",
        help=f"frame rate to ask the camera for (default {DEFAULT_CAMERA_FPS:g}; the driver "
        "may grant less, which is said at the start), or 'driver' to ask for none: the "
        "driver's own rate, which may slow down in a dim room to expose longer",
    )
    g.add_argument(
        "--camera-size",
        type=positive_int,
        nargs=2,
        metavar=("W", "H"),
        help="frame size in pixels to ask the camera for (default: the driver's)",
    )


def camera_request(args: argparse.Namespace) -> dict:
    """`open_labelled`'s camera keywords from --camera-fps and --camera-size; either flag
    with a source that is not a camera is refused in one line (it would be ignored)."""
    fps, size = args.camera_fps, args.camera_size
    if not is_camera(args.source):
        given = [f for f, v in (("--camera-fps", fps), ("--camera-size", size)) if v is not None]
        if given:
            raise UserError(
                f"{' and '.join(given)}: only for a camera index as --source, not {args.source!r}"
            )
        return {}
    return {
        "camera_fps": DEFAULT_CAMERA_FPS if fps is None else (None if fps == "driver" else fps),
        "camera_size": None if size is None else tuple(size),
    }


# --- the calibration grid ------------------------------------------------------------------


def add_grid_args(p: argparse.ArgumentParser) -> None:
    """The grid's options; `gazeloop run` takes them too, for its `c` key."""
    g = p.add_argument_group("calibration grid")
    g.add_argument("--points", type=int, choices=LAYOUTS, default=9, help="targets (default 9)")
    g.add_argument(
        "--settle", type=float, default=0.8, help="seconds per target before capture (0.8)"
    )
    g.add_argument("--capture", type=int, default=30, help="frames captured per target (30)")
    g.add_argument(
        "--capture-timeout",
        type=float,
        default=2.0,
        help="seconds a target may take to capture its frames (2.0)",
    )
    g.add_argument(
        "--ready", type=float, default=2.0, help="seconds before the first target (default 2.0)"
    )
    g.add_argument(
        "--min-frames",
        type=int,
        help="usable frames a target needs (default 8, or --capture if smaller; "
        "1 when replaying a recording)",
    )
    g.add_argument(
        "--mapping",
        choices=sorted(MAPPINGS),
        help="fix the profile's mapping (default: chosen by nested selection, as eval does)",
    )
    g.add_argument(
        "--features",
        metavar="A,B",
        help="fix the mapping's features (default: chosen with it; with --mapping alone, that "
        "mapping's own)",
    )


def feature_names(names: list[str]) -> list[str]:
    """The grid's features, each one the fast path gives; a one-line error otherwise."""
    bad = [n for n in names if not is_feature_name(n)]
    if not names or bad:
        raise UserError(
            f"--features: unknown {bad or 'empty list'}; choose from {', '.join(FEATURE_NAMES)} "
            "or emb_<i>"
        )
    return names


def fixed_mapping(args: argparse.Namespace) -> tuple[str, list[str]] | None:
    """The mapping `--mapping`/`--features` fix (`calibrate`, `profile fit`, `eval`), or None
    when neither is given: then the mapping is chosen by nested selection, as `eval` chooses
    it. Either flag alone fixes one mapping, so the other needs a default: ridge, and the
    mapping's own features (the geometric mapping's five columns) else `DEFAULT_FEATURES`.
    → (mapping, feature names as typed; a command checks them against the frames)."""
    if args.mapping is None and args.features is None:
        return None
    mapping = args.mapping or "ridge"
    if args.features is None:
        return mapping, list(mapping_class(mapping).features or DEFAULT_FEATURES)
    names = [n.strip() for n in args.features.split(",") if n.strip()]
    if not names:
        raise UserError("--features is empty")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # the same column twice: a singular fit, said before the fast path runs
        raise UserError(f"--features names {', '.join(twice)} more than once")
    return mapping, names


def collect_frames(args: argparse.Namespace, session, what: str):
    """Every frame of `session` through a fast path of the flags' settings, for a fixed
    mapping (`eval`, `profile fit`: no feature cache, no selection), the fast path closed
    after. → (the collection, what a profile records of that fast path: `made_by`)."""
    fp = FastPath(fastpath_config(args))
    try:
        with Progress(f"{what}, {len(session.items)} frames through the fast path"):
            col = collect_session(session, fp)
    finally:
        fp.close()
    return col, made_by(fp)


def feature_columns(used: LabelledFrames, names: list[str]):
    """The fixed mapping's features over the frames `used` (`eval`, `profile fit`): the names
    as typed, `embedding` expanded, and their matrix; a name the frames do not have is one
    line, not a KeyError. → (names, matrix)."""
    try:
        return used.expand(names), used.matrix(names)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None


def procedure_config(args: argparse.Namespace, *, replay: bool) -> ProcedureConfig:
    """The calibration grid's settings (`calibrate`, `run`'s c key) from `add_grid_args`."""
    for name in ("settle", "capture_timeout", "ready"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a number of seconds >= 0")
    if args.capture < 1:
        raise UserError("--capture must be at least 1 frame")
    if args.min_frames is not None:
        min_frames = args.min_frames
    else:
        # A recording is what it is (grid9 has one frame per target); a live grid asks for
        # enough frames that one blink cannot make a target.
        min_frames = 1 if replay else min(8, args.capture)
    if min_frames < 1:
        raise UserError("--min-frames must be at least 1")
    fixed = fixed_mapping(args)  # neither flag: chosen by nested selection
    mapping, names = fixed or ("ridge", DEFAULT_FEATURES)
    return ProcedureConfig(
        n_targets=args.points,
        settle_s=args.settle,
        collect_s=args.capture_timeout,
        frames=args.capture,
        min_frames=min_frames,
        features=tuple(feature_names(list(names))),
        mapping=mapping,
        select=fixed is None,
    )


# --- whose, and the screen -----------------------------------------------------------------


def real_path(path: Path | str) -> Path:
    """The path with its links followed; a link loop is the user's one line, not Python's
    RuntimeError (3.11-3.12) or OSError (3.13)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise UserError(f"{path}: cannot follow its links ({e})") from None


def distinct_paths(paths: list, flag: str, why: str) -> None:
    """Refuse a path given twice under any spelling (`S` and `S/`, a link to it): `why`
    says what the copy would do."""
    seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        first = seen.setdefault(real_path(path), i)
        if first != i:
            raise UserError(f"{flag} {path} is given twice (also as {paths[first]}): {why}")


def add_model_id_arg(p: argparse.ArgumentParser) -> None:
    """Which model of the user's registry, when it holds several (`run`, `calibrate`,
    `profile fit`): with none named, those serve the stock model."""
    p.add_argument(
        "--model-id",
        help="the registry's model to serve, when it holds several (default: its only one)",
    )


def add_user_args(p: argparse.ArgumentParser) -> None:
    """The person and the machine a profile is of (`run`, `calibrate`, `profile fit`): the
    profile's file and the user's sessions and labels are found by them."""
    p.add_argument(
        "--user", default="default", help="whose profiles, sessions and labels (default: default)"
    )
    p.add_argument(
        "--device",
        default="default",
        help="which machine's profile (the camera's place; default: default)",
    )


def add_registry_args(
    p: argparse.ArgumentParser, *, user_default: str | None = "default", user_help: str = ""
) -> None:
    """Which model registry a command reads or writes: the user's, or a folder by path."""
    from gazeloop.calibration.profile import data_dir

    p.add_argument(
        "--user",
        default=user_default,
        help=user_help or f"whose model registry (default: {user_default})",
    )
    p.add_argument(
        "--registry",
        type=Path,
        help=f"model registry folder instead of the user's ({data_dir()}/users/USER/models)",
    )


def registry_root(args: argparse.Namespace) -> Path:
    """The registry `add_registry_args` names (the trainer extra's: imported only here)."""
    from gazeloop.trainer.registry import default_registry_root

    return args.registry or default_registry_root(args.user)


# --screen-px's unit: the pointer's and the clicks' (pynput's). On macOS those are points,
# half the Retina pixels, and the grid is drawn scaled to fit, so a size in pixels looked
# right on screen while the cursor and every click label were off by a factor of two.
SCREEN_PX_HELP = (
    "the screen's size in pixels (on macOS in points: the size Displays shows; "
    "default there: the main display's)"
)


def add_screen_size_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """The screen in pixels and in millimetres: `calibrate`, `eval` and `profile fit` take
    them alike (each says its viewing distance its own way). `default`: where a recorded
    session's screen comes from without the flag; None: the screen in use (`calibrate`)."""
    about = (
        f"{SCREEN_PX_HELP}; with a recording, the session's"
        if default is None
        else f"the screen's size in pixels, the unit of the targets (default: {default})"
    )
    p.add_argument("--screen-px", type=positive_int, nargs=2, metavar=("W", "H"), help=about)
    p.add_argument(
        "--screen-mm",
        type=positive_float,
        nargs=2,
        metavar=("W", "H"),
        help="the screen's size in mm (for errors in mm and degrees)",
    )


def screen_from_args(args, px: tuple[int, int], manifest: SessionManifest | None = None):
    """The screen: pixels as resolved, millimetres and camera from the flags, else from the
    recording's manifest."""
    mm = tuple(args.screen_mm) if getattr(args, "screen_mm", None) else None
    cam = tuple(args.camera_mm) if getattr(args, "camera_mm", None) else None
    if manifest is not None:
        mm = mm or manifest.screen_mm
        cam = cam or manifest.camera_mm
    try:
        return ScreenGeometry(
            px=px, mm=mm, camera_mm=cam, viewing_distance_mm=getattr(args, "distance_mm", None)
        )
    except ValueError as e:
        raise UserError(f"screen: {e}") from None


def screen_for(args, session) -> ScreenGeometry | None:
    """The screen of a session read for evaluation or fitting (`eval`, `profile fit`)."""
    mm = tuple(args.screen_mm) if args.screen_mm else None
    screen = session_screen(session, screen_mm=mm, distance_mm=args.distance_mm)
    if screen is None and (mm or args.distance_mm):  # they were dropped without a word
        print(
            f"note: {session.folder}: --screen-mm and --distance-mm need the screen's size in "
            "pixels (--screen-px W H, or a session.json): no millimetres or degrees",
            file=sys.stderr,
        )
    elif screen is not None and screen.mm is None and args.distance_mm:
        print(
            f"note: {session.folder}: --distance-mm needs the screen's size in millimetres "
            "(--screen-mm W H, or a session.json that says it): no degrees",
            file=sys.stderr,
        )
    return screen


# --- reading a recorded session ------------------------------------------------------------


def add_distance_arg(p: argparse.ArgumentParser) -> None:
    """The viewing distance of `eval`: with it, errors in degrees too."""
    p.add_argument(
        "--distance-mm", type=positive_float, help="viewing distance, for errors in degrees"
    )


def add_mirrored_arg(p: argparse.ArgumentParser) -> None:
    """Whether a recording's images are selfie views, for the commands that take the
    manifest's word and else ask the frames (`eval`, `bench loop`)."""
    p.add_argument(
        "--mirrored",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the images are selfie views (default: the manifest's word, else told by the frames)",
    )


def add_no_cache_arg(p: argparse.ArgumentParser) -> None:
    """The way around the feature cache, for the commands that read a session's features
    from it (`eval`, `eval-sittings`, `profile fit`)."""
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="run the fast path on every frame instead of reading cached features",
    )


# --- the broker ----------------------------------------------------------------------------


def add_broker_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("broker")
    g.add_argument(
        "--mqtt",
        required=required,
        metavar="URL",
        help="mqtt://[user[:pass]@]host[:port] or mqtts://... (TLS); the port defaults to "
        "1883, 8883 with TLS; a user without a password takes it from $GAZELOOP_MQTT_PASSWORD",
    )
    g.add_argument("--ca-file", help="CA certificate(s) to verify the broker (PEM); implies TLS")
    g.add_argument(
        "--insecure", action="store_true", help="TLS without certificate checks (test brokers)"
    )


def broker_settings(args: argparse.Namespace):
    """The broker flags as `MqttSettings`; aiomqtt loads here, not when the parser is built."""
    try:
        from gazeloop.tools.runtime.mqtt.conn import MqttConfigError, MqttSettings
    except ModuleNotFoundError as e:
        if e.name in ("aiomqtt", "paho"):
            raise UserError("MQTT needs aiomqtt: pip install 'gazeloop[mqtt]'") from e
        raise
    try:
        return MqttSettings.from_url(args.mqtt, ca_file=args.ca_file, insecure=args.insecure)
    except MqttConfigError as e:
        raise UserError(str(e)) from e


# --- pictures ------------------------------------------------------------------------------

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def commit_hash(text: str) -> str:
    """argparse type: a full 40-hex commit hash, lower-cased."""
    v = text.strip().lower()
    if len(v) != 40 or any(c not in "0123456789abcdef" for c in v):
        raise argparse.ArgumentTypeError(f"not a 40-hex commit hash: {text!r}")
    return v


def add_moondream_pin_args(p: argparse.ArgumentParser) -> None:
    """Which commit Moondream's remote code (trust_remote_code) may come from."""
    p.add_argument(
        "--code-commit",
        type=commit_hash,
        metavar="SHA",
        help="moondream: the reviewed 40-hex commit its remote code must come from (none is "
        "recorded in this release, so the real model needs this or --moondream-unpinned)",
    )
    p.add_argument(
        "--moondream-unpinned",
        action="store_true",
        help="moondream: run the remote code from whatever the revision resolves to, "
        "unreviewed (trust_remote_code); warned loudly",
    )


def moondream_config(args: argparse.Namespace, *, loads_weights: bool):
    """The Moondream settings --code-commit and --moondream-unpinned ask for. The remote
    code runs pinned to the commit given, else to the reviewed one recorded in the code;
    with neither, loading the real model is refused here, before anything loads, unless
    unpinned on purpose (warned). The API-shaped double runs no remote code: no pin needed."""
    from gazeloop.oracle.moondream import REVIEWED_CODE_COMMIT, MoondreamConfig

    if args.code_commit and args.moondream_unpinned:
        raise UserError(
            "--code-commit pins Moondream's remote code, --moondream-unpinned runs it unpinned: "
            "give one of them"
        )
    commit = args.code_commit or (None if args.moondream_unpinned else REVIEWED_CODE_COMMIT)
    if loads_weights and commit is None and not args.moondream_unpinned:
        raise UserError(
            "moondream: no reviewed commit of its remote code is recorded in this release; "
            "give --code-commit SHA (the commit you reviewed) or --moondream-unpinned"
        )
    if loads_weights and args.moondream_unpinned and commit is None:
        print("WARNING: Moondream remote code UNPINNED: unreviewed code will run", file=sys.stderr)
    return MoondreamConfig(code_commit=commit, allow_unpinned=args.moondream_unpinned)


def check_plot_path(path: Path) -> None:
    """Before any work: a picture's name has a format matplotlib writes, and it can be
    written there."""
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: name a .png, .svg or .pdf file")
    check_writable(path, folder=False)
    # check_writable passes a folder still to be made (it probes the first one that exists),
    # but nothing makes a picture's folder: the write would fail after all the work.
    if not path.parent.is_dir():
        raise UserError(f"--plot {path}: the folder {path.parent} does not exist")
