"""`gazeloop run`: the live program — camera → fast path → the gaze point, with the oracle
correcting drift in the background.

Keys (window mode): 7 validation glance (one dot, full screen: look at it; the fixation on
it is a label; Esc skips it; without a profile there is no screen to put the dot on, and 7
says so in the terminal) · c calibrate (the target grid, full screen; Esc cancels it; the
new profile is used at once) · space record a labelled sample · q quit. Esc does nothing in
the live view: a glance often ends by itself just as Esc is pressed to skip it. The glance
also comes on its own when the loop has had no label for --glance-every minutes (never
during a calibration; 0: never).

Labels from several sources (clicks, glances, an oracle) go to one loop, which weighs each
source by the noise its own residuals show; the status line says, per source, labels
accepted of given, its noise (σ per axis, px) and weight, and the last decision. Every label
(accepted or not, with the decision) is kept in the user's label store.

--oracle targets labels snapshots with the recorded targets of a session or 4-corner
recording given as --source: ground truth replayed, for trying the loop without a model.
--oracle clicks (the default with a camera and a profile) turns your left clicks into
labels: a person looks at what they click, so a click that ends a steady fixation is a point
label; double clicks, drags and clicks made on the move are not (oracle/clicks.py).

In a new sitting (the device's profile made over 30 minutes ago) the run starts with the
profile of all the user's calibration sessions on that device and screen pooled
(tools/runtime/sittings_profile.py); --profile P runs with P.

--mqtt URL publishes the gaze stream (capture times on the wall clock) and sends every
label in the user's label store that the broker has not acknowledged yet, this run's and
earlier ones'; `gazeloop collect` on the training box writes them as sessions.

A camera is asked for --camera-fps (default 60) and --camera-size; drivers may grant less,
so the mode granted is printed first. A run whose camera fails for good exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from gazeloop.calibration.profile import (
    Profile,
    ProfileError,
    ProfileMapper,
    legacy_profile_path,
    profile_path,
    user_dir,
)
from gazeloop.calibration.store.atomic import atomic_write_bytes, check_writable, file_in_the_way
from gazeloop.calibration.store.writer import SessionWriter
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.fastpath.sources import CameraSource, is_camera
from gazeloop.tools.commands._args import (
    SCREEN_PX_HELP,
    add_broker_args,
    add_camera_args,
    add_fastpath_args,
    add_grid_args,
    add_model_id_arg,
    add_moondream_pin_args,
    add_user_args,
    broker_settings,
    camera_request,
    fastpath_config,
    labelling_config,
    moondream_config,
    non_negative_float,
    positive_float,
    positive_int,
    procedure_config,
    real_path,
    screen_from_args,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.calibration import default_session_dir, grid_sees, manifest_for
from gazeloop.tools.runtime.interrupts import terminate_as_interrupt
from gazeloop.tools.runtime.labelled import LabelledSource, open_labelled, read_as_fitted
from gazeloop.tools.runtime.live import Live, made_this_sitting, model_record
from gazeloop.tools.runtime.recording import UnixClock
from gazeloop.tools.ui.calibration_grid import DotView, calibrate_on_screen, render_dot
from gazeloop.tools.ui.render import LiveData, PipData, render_live, render_pip, render_waiting
from gazeloop.tools.ui.window import (
    CLOSED,
    ESC,
    CvDisplay,
    require_display,
    screen_size_unknown,
)

log = logging.getLogger(__name__)
WINDOW = "gazeloop"
# The live view's only way out. Not Esc: it skips the glance's dot and cancels the grid, and
# a glance that ends by itself as Esc is pressed would hand that Esc to the live view.
QUIT = ord("q")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the live tracker (window, or --headless)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(p)
    _add_oracle_args(p)
    _add_run_args(p)
    _add_mqtt_args(p)
    p.add_argument("--screenshot", type=Path, help="save the last window picture here on exit")
    p.add_argument(
        "--no-watch-models",
        action="store_true",
        help="do not switch to newer models appearing in the registry (never done with "
        "--gaze-model: the file named is the model served)",
    )
    add_model_id_arg(p)
    add_grid_args(p)
    add_fastpath_args(p)
    p.set_defaults(func=run)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """What is tracked, whose it is, and the profile and screen it maps onto."""
    p.add_argument("--source", default="0", help="camera index, video or session (default 0)")
    add_camera_args(p)
    add_user_args(p)
    p.add_argument("--profile", type=Path, help="profile file (default: the user's for device)")
    p.add_argument(
        "--screen-px",
        type=positive_int,
        nargs=2,
        metavar=("W", "H"),
        help=f"the screen in use: {SCREEN_PX_HELP}",
    )
    p.add_argument(
        "--mirrored",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a replayed session without session.json stores selfie views (default: not)",
    )


def _add_oracle_args(p: argparse.ArgumentParser) -> None:
    """Where the labels that correct the drift come from, and how often."""
    p.add_argument(
        "--oracle",
        choices=["auto", "none", "clicks", "moondream", "targets"],
        default="auto",
        help="labeller: clicks turns left clicks you make while looking at what you click "
        "into labels (pynput); moondream needs its weights in the local HF cache; targets "
        "replays a recording's own targets; auto (default): clicks with a camera and a "
        "profile, else none",
    )
    p.add_argument(
        "--oracle-in",
        choices=["process", "thread"],
        help="run the model oracle (moondream) in a child process on its own cores "
        "(default) or in a thread of this one",
    )
    add_moondream_pin_args(p)
    p.add_argument(
        "--oracle-threads",
        type=positive_int,
        help="compute threads of the model oracle's process (default: one per core it gets)",
    )
    p.add_argument(
        "--snapshot-every",
        type=non_negative_float,
        help="seconds between labels (default: the config's policy.min_interval_s, 5.0)",
    )
    p.add_argument(
        "--replay-clicks",
        action="store_true",
        help="with a recording that has targets: click each target once, 300 ms into its "
        "settled frames, through the click rules (alongside any --oracle)",
    )
    p.add_argument(
        "--glance-every",
        type=non_negative_float,
        default=10.0,
        metavar="MIN",
        help="window mode: a validation dot when the loop has had no label for this many "
        "minutes (default 10; 0: only on the 7 key)",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """How the run shows itself (a window, or status lines) and when it ends."""
    p.add_argument("--headless", action="store_true", help="no window; status lines instead")
    p.add_argument("--frames", type=positive_int, help="stop after this many frames")
    p.add_argument("--seconds", type=positive_float, help="stop after this long (wall clock)")
    p.add_argument("--move-cursor", action="store_true", help="move the OS cursor (pynput)")


def _add_mqtt_args(p: argparse.ArgumentParser) -> None:
    """The broker the gaze stream and the stored labels go to (unsent ones wait in the label
    store until it is there), with the TLS flags every MQTT command takes."""
    add_broker_args(p, required=False)
    p.add_argument(
        "--mqtt-wait",
        type=positive_float,
        metavar="S",
        help="at the end, wait up to S seconds for labels still unsent (default 10)",
    )


def _profile(args, fp: FastPath) -> tuple[ProfileMapper | None, Path]:
    """The profile to run with and its file: the one named, else the user's for the device,
    or in a new sitting the profile of all the user's sittings pooled when there is one."""
    path = args.profile or _own_profile(args)
    if not path.is_file():
        blocker = file_in_the_way(path.parent)
        if path.exists() or blocker is not None:
            # Not "no profile yet": something is in the way, and calibrating would fail on it.
            why = f"{blocker} is a file, not a folder" if blocker else "a folder, not a profile"
            raise UserError(f"{path}: {why}")
        if args.profile:
            raise UserError(f"{path}: no such profile")
        print(
            f"no calibration profile for {args.user}/{args.device} yet ({path}): showing gaze "
            "angles only; run `gazeloop calibrate` (or `gazeloop profile fit SESSION`)"
        )
        return None, path
    from gazeloop.tools.runtime.hotreload import profile_for_model

    # A new sitting is decided on the device's own file, before any refit for the model
    # loaded, which the pooled profile would make unneeded.
    pooled = None
    if args.profile is None and not made_this_sitting(own := Profile.load(path)):
        pooled = _sittings_profile(args, own, fp)
    prof, said = profile_for_model(pooled or path, fp)  # the fit for this model (kept/refit)
    if pooled is not None:
        path, n = pooled, len(prof.calibration_sessions)
        said = f"profile: a new sitting, so the {n} sittings pooled: " + said.removeprefix(
            "profile: "
        )
    print(said, flush=True)
    if (prof.user, prof.device) != (args.user, args.device):
        # Allowed (a profile is portable), but said: labels and sittings are kept under
        # --user/--device, and another device's camera sits elsewhere on its screen.
        w, h = prof.screen.px
        print(
            f"note: {path} was made for {prof.user}/{prof.device} on a {w}x{h} screen; this "
            f"run is {args.user}/{args.device}",
            flush=True,
        )
    screen = prof.screen.with_px(*args.screen_px) if args.screen_px else None
    return ProfileMapper(prof, screen), path


def _own_profile(args) -> Path:
    """The user's profile for the device; one kept where names were kept before they were
    made one-to-one is used (said) until a calibration saves it in its place, when it is
    this user's and device's (that file was shared by names that differ)."""
    path = profile_path(args.user, args.device)
    old = legacy_profile_path(args.user, args.device)
    if path.exists() or old is None or not old.is_file():
        return path
    try:
        prof = Profile.load(old)
    except ProfileError as e:
        print(f"profile: {old}, where it was kept before, is not used: {e}")
        return path
    if (prof.user, prof.device) != (args.user, args.device):
        print(f"profile: {old}, where it was kept before, is {prof.user}/{prof.device}'s")
        return path
    print(f"profile: {old} (where it was kept before; a calibration saves it to {path})")
    return old


def calibration_out(given: Path | None, in_use: Profile | None, args) -> Path:
    """Where the c key saves its profile: the --profile in use when it is this run's user's
    and device's (recalibrating it is the point), else their own file. Another person's or
    device's profile, given to try it, is left as it was: the fit just made is of this
    person at this camera."""
    own = profile_path(args.user, args.device)
    if given is None or (
        in_use is not None and (in_use.user, in_use.device) != (args.user, args.device)
    ):
        return own
    return given


def _sittings_profile(args, prof: Profile, fp: FastPath) -> Path | None:
    """`tools.runtime.sittings_profile.current`; a failure to pool is said and the device's
    own profile stays."""
    from gazeloop.tools.runtime import sittings_profile

    try:
        # The screen in use: with --screen-px, its sittings, not those of the profile's size.
        screen = prof.screen.with_px(*args.screen_px) if args.screen_px else prof.screen
        return sittings_profile.current(args.user, args.device, screen, fp.cfg)
    except (ValueError, OSError, ProfileError) as e:
        print(f"profile: the sittings could not be pooled ({e}); using {args.device}'s own")
        return None


def _oracle(args, mapper):
    if args.oracle == "none":
        return None
    if mapper is None:
        raise UserError("the oracle corrects a calibrated cursor: calibrate first")
    if args.oracle == "clicks":
        return None  # not a worker's oracle: see _clicks
    if args.oracle == "targets":
        from gazeloop.oracle.simple import TargetOracle

        print(
            "oracle: targets, the recording's own targets replayed as labels (ground truth "
            "for testing the loop, not a measurement of anything)",
            flush=True,
        )
        return TargetOracle()
    from gazeloop.oracle.moondream import MoondreamOracle, load_moondream

    cfg = args.moondream
    cam = getattr(mapper.screen, "camera_norm", None)
    if args.oracle_in == "process":
        # Its own process and cores: a VLM's Python between tensor ops would otherwise
        # compete with the camera loop for the interpreter lock (see oracle/process.py).
        from gazeloop.oracle.process import OracleSpec, ProcessOracle

        spec = OracleSpec(
            "gazeloop.oracle.moondream:build_oracle",
            {
                "config": cfg.model_dump(mode="json"),
                "screen": mapper.screen.model_dump(mode="json"),
                "camera_norm": None if cam is None else [float(cam[0]), float(cam[1])],
            },
        )
        print("loading Moondream in its own process …", file=sys.stderr)
        with _model_refusal():
            return ProcessOracle(spec, threads=args.oracle_threads)
    with _model_refusal():
        model = load_moondream(cfg)
    return MoondreamOracle(model, cfg, mapper.screen, camera_norm=cam)


@contextlib.contextmanager
def _model_refusal():
    """A model that cannot load (its packages missing, transformers ≥ 5, weights not
    cached) says so in one line and exits 2, as any input the user can fix: wherever it
    runs, `load_moondream`'s `OracleError` already says what to do, and a traceback
    around it only hides that."""
    from gazeloop.oracle.base import OracleError

    try:
        yield
    except OracleError as e:
        raise UserError(str(e)) from None


def _mqtt(args, src, store, mapper):
    """The gaze publisher and the label uplink (None without a store); aiomqtt is an
    optional dependency. A camera's stream is "latest first" (a short queue, samples older
    than 0.5 s dropped); a replay publishes at its own pace, every sample (its times are
    the recording's, so age says nothing), with a deep queue for a broker outage. The
    broker's settings were read before the models loaded (`_before_models`: aiomqtt is
    there)."""
    from gazeloop.tools.runtime.mqtt.conn import MqttConfigError, topic_part
    from gazeloop.tools.runtime.mqtt.gaze import GazePublisher
    from gazeloop.tools.runtime.mqtt.labels import LabelUplink
    from gazeloop.tools.runtime.mqtt.outbox import OutboxError

    live_source = isinstance(src, CameraSource)
    settings = args.broker
    try:
        topic_part(args.user), topic_part(args.device)
        publisher = GazePublisher(
            settings,
            user=args.user,
            device=args.device,
            queue_size=8 if live_source else 4096,
            max_age_s=0.5 if live_source else None,
        )
        uplink = None
        if store is not None:
            screen = None if mapper is None else mapper.screen
            uplink = LabelUplink(settings, store, user=args.user, device=args.device, screen=screen)
    except (MqttConfigError, OutboxError) as e:
        raise UserError(f"--mqtt: {e}") from e
    publisher.start()
    if uplink is not None:
        uplink.start()
    return publisher, uplink


class Cursor:
    """The operating system's cursor, via pynput (optional: `pip install pynput`)."""

    def __init__(self):
        from gazeloop.tools.runtime.permissions import ALLOW, accessibility_trusted, no_pointer

        try:
            from pynput.mouse import Controller
        except ImportError as e:
            raise UserError(no_pointer("--move-cursor", e)) from None

        if accessibility_trusted() is False:
            raise UserError(
                f"--move-cursor: macOS does not let this program move the pointer: {ALLOW}"
            )
        self._c = Controller()

    def move(self, px: np.ndarray) -> None:
        self._c.position = (int(px[0]), int(px[1]))


def _resolve_oracle(args, ls: LabelledSource) -> None:
    """--oracle auto: clicks when a person is in front of a camera, none for recordings.
    Never clicks with --move-cursor: the pointer sits on the tracker's own estimate, so a
    click there labels the estimate with itself (the loop could never see a drift, and the
    trainer would learn the model's own answers)."""
    args.oracle_auto = args.oracle == "auto"
    if args.move_cursor and args.oracle == "clicks":
        raise UserError(
            "--oracle clicks with --move-cursor: the pointer follows your gaze, so a click "
            "lands on the tracker's own estimate and labels nothing; use one or the other"
        )
    if args.oracle_auto:
        camera = isinstance(ls.source, CameraSource)
        args.oracle = "clicks" if camera and not args.move_cursor else "none"
        if camera and args.move_cursor and not args.headless:
            print(
                "no click labels: --move-cursor puts the pointer where you look, so a click "
                "would label the tracker's estimate with itself; the 7 key's dot still does",
                flush=True,
            )


def _replay_clicks(args, live: Live, mapper, ls: LabelledSource):
    """--replay-clicks: the recording's targets clicked once each, through the click rules
    (`tools.runtime.clicks.ClickReplay`); None without the flag."""
    if not args.replay_clicks:
        return None
    if mapper is None:
        raise UserError("--replay-clicks: clicks correct a calibrated cursor; calibrate first")
    if args.oracle == "clicks":
        raise UserError("--replay-clicks replaces the mouse: use another --oracle with it")
    from gazeloop.tools.runtime.clicks import ClickLabeller, ClickReplay

    # A constant clock: the labeller then places every press at the last frame's own time.
    # Judged at their frame (no 60 Hz to keep): the offset moves at the same frame every
    # time, so a replay gives the same labels.
    live.clicks = ClickLabeller(
        live.history, mapper.screen.px, live.external_label, clock=lambda: 0
    )
    return ClickReplay(live.clicks, ls.target_of, recorded_px=ls.screen_px)


def _clicks(args, live: Live, mapper, ls: LabelledSource):
    """--oracle clicks: left clicks become point labels through the click rules
    (tools.runtime.clicks); returns the listener to stop, or None."""
    if args.oracle != "clicks":
        return None
    from gazeloop.tools.runtime.clicks import ClickLabeller, start_listener

    camera = isinstance(ls.source, CameraSource)  # its frames and the presses share a clock
    live.clicks = ClickLabeller(live.history, mapper.screen.px, live.post_label, same_clock=camera)
    try:
        return start_listener(live.clicks)
    except UserError as e:
        if not args.oracle_auto:
            raise
        live.clicks = None
        print(f"no click labels: {e}", flush=True)
        return None


def _clicks_after_calibration(args, live: Live, ls: LabelledSource, listeners: list):
    """What the window calls with the c key's new profile: in a run that began without one
    (--oracle auto, a camera), the clicks start with the first, as they would have with a
    profile at start. They stayed off for the whole run. None when there is nothing to
    start."""
    if not args.clicks_later:
        return None

    def start(mapper: ProfileMapper) -> None:
        if not args.clicks_later:  # once: a listener that could not start says so once
            return
        args.clicks_later, args.oracle = False, "clicks"
        listeners.append(_clicks(args, live, mapper, ls))
        if live.clicks is not None:  # the store's run record says so from here on
            live.note_settings(oracle="clicks")

    return start


def _target_hook(args, ls: LabelledSource):
    """Snapshots labelled by the recording: the target on screen when the frame was taken;
    frames of the eye still on its way get no snapshot."""
    if args.oracle != "targets":
        return None
    if not ls.labelled:
        raise UserError(
            f"--oracle targets: {args.source} ({ls.kind}) has no recorded targets; give a "
            "session folder or a 4-corner recording"
        )
    px = ls.screen_px or (tuple(args.screen_px) if args.screen_px else None)
    if px is None:
        raise UserError(f"--oracle targets: the screen of {args.source} is unknown; --screen-px")
    size = np.array(px, dtype=np.float64)

    def hook(snap, frame):
        info = ls.target_of(frame)
        if info is None or info.settling:
            return None
        snap.target_xy = tuple(float(v) for v in np.array(info.label_px) / size)
        return snap

    return hook


def run(args: argparse.Namespace) -> int:
    camera = camera_request(args)
    if not args.headless:
        require_display("the live view", "use --headless to run without one")
    ls = open_labelled(
        args.source,
        screen_px=tuple(args.screen_px) if args.screen_px else None,
        mirrored=args.mirrored,
        with_targets=args.oracle == "targets" or args.replay_clicks,
        **camera,
    )
    try:
        if isinstance(ls.source, CameraSource):  # the mode granted, before the models load
            print(ls.describe(), flush=True)
        return _run(args, ls)
    finally:
        ls.close()


def _read_as_fitted(ls: LabelledSource, mapper) -> None:
    """A session folder whose mirroring neither its manifest nor --mirrored states is read
    as the profile's frames were (`read_as_fitted`, as `track` does): opened before the
    profile was known, it was read as stored, and a selfie-view folder's points came out
    mirrored across the screen."""
    if ls.session is None or mapper is None:  # a session's source is a SessionSource
        return
    unmirror = read_as_fitted(ls.session.mirrored_stated, mapper.profile)
    if unmirror is not None:
        ls.source.unmirror = unmirror


def _run(args: argparse.Namespace, ls: LabelledSource) -> int:
    hook = _before_models(args, ls)
    fp, mapper, used_profile = _models(args)
    _read_as_fitted(ls, mapper)
    oracle = _oracle(args, mapper)
    store = _label_store(args, oracle, mapper)
    settings = _run_settings(args, fp, mapper, used_profile)
    live = _live(args, ls, fp, mapper, oracle, store, hook, settings)
    listeners = [_clicks(args, live, mapper, ls)]
    replay = _replay_clicks(args, live, mapper, ls)
    watcher = _model_watcher(args, live, fp, mapper, used_profile)
    cursor = Cursor() if args.move_cursor else None
    src = ls.source
    stream = iter(src)
    later = _clicks_after_calibration(args, live, ls, listeners)
    ui = None if args.headless else _window(args, ls, live, stream, watcher, later)
    if ui is not None and isinstance(src, CameraSource):
        src.on_wait = ui.waiting  # a camera reconnecting: the window still draws and hears q
    try:
        with terminate_as_interrupt():
            frames, interrupted = _track(
                args, live, src, stream, ui=ui, replay=replay, cursor=cursor
            )
    finally:
        summary = _stop(args, live, src, watcher=watcher, listeners=listeners, ui=ui)
    print(f"gazeloop run: {frames} frames{' (interrupted)' if interrupted else ''}; {summary}")
    why = live.policy.why_none() if live.worker is not None else None
    if why:
        print(f"note: {why}")
    if interrupted:
        return 130
    failed = getattr(src, "error", None)
    if failed:  # a camera lost mid-run: however many frames came before, the run failed
        print(f"gazeloop run: failed: {failed}", flush=True)
        return 1
    return 0 if frames else 1  # a source that gave nothing trackable is a failed run


def _before_models(args, ls: LabelledSource):
    """What the flags and the source decide before any model loads (a mistake is said in a
    second, not after the networks): the labeller, the targets' hook, the label store's
    folder. → the snapshot hook of --oracle targets, or None."""
    _resolve_oracle(args, ls)
    if args.oracle != "moondream" and (args.code_commit or args.moondream_unpinned):
        raise UserError("--code-commit and --moondream-unpinned are for --oracle moondream")
    if args.oracle == "moondream":  # a missing pin is said before any model loads
        args.moondream = moondream_config(args, loads_weights=True)
    elif args.oracle_in or args.oracle_threads:
        raise UserError("--oracle-in and --oracle-threads are for --oracle moondream")
    args.oracle_in = args.oracle_in or "process"
    if not args.mqtt and (args.ca_file or args.insecure or args.mqtt_wait is not None):
        raise UserError(
            "--ca-file, --insecure and --mqtt-wait are for the broker: give --mqtt URL too"
        )
    args.mqtt_wait = 10.0 if args.mqtt_wait is None else args.mqtt_wait
    args.grid = procedure_config(args, replay=False)  # the c key's, checked now, not at c
    # A bad URL or a missing aiomqtt, said before any model loads.
    args.broker = broker_settings(args) if args.mqtt else None
    hook = _target_hook(args, ls)
    if args.replay_clicks and not ls.labelled:  # before any model loads
        raise UserError(
            f"--replay-clicks: {args.source} ({ls.kind}) has no recorded targets; give a "
            "session folder or a 4-corner recording"
        )
    if args.screenshot is not None:
        _check_screenshot(args)
    if args.oracle != "none":  # the label store's folder, before anything loads
        check_writable(user_dir(args.user) / "labels", folder=True)
    return hook


def _check_screenshot(args) -> None:
    """--screenshot: a window to take it from, a picture format, and a place to write it,
    said before the run rather than lost at its end."""
    if args.headless:
        raise UserError("--screenshot saves the window's picture: --headless has no window")
    if args.screenshot.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"--screenshot {args.screenshot}: name a .png or .jpg file")
    check_writable(args.screenshot, folder=False)


def _models(args) -> tuple[FastPath, ProfileMapper | None, Path]:
    """The fast path and the profile it maps with; without a profile, --oracle auto labels
    nothing. → (fast path, mapper or None, profile file)."""
    from gazeloop.tools.runtime.hotreload import startup_model

    # the user's promoted model, unless a gaze model is named
    fp_cfg, said = startup_model(fastpath_config(args), user=args.user, model_id=args.model_id)
    print(said, flush=True)
    fp = FastPath(fp_cfg)
    mapper, used_profile = _profile(args, fp)
    # Clicks correct a calibrated cursor: there is none yet. The c key's first profile
    # starts them (`_clicks_after_calibration`).
    args.clicks_later = args.oracle_auto and mapper is None and args.oracle == "clicks"
    if args.oracle_auto and mapper is None:
        args.oracle = "none"
    return fp, mapper, used_profile


def _label_store(args, oracle, mapper):
    """The user's label store when this run labels anything, or has labels of earlier runs
    to send; None otherwise."""
    labels_dir = user_dir(args.user) / "labels"
    # With --mqtt the store is the outbox: labels a previous run could not send go now,
    # even when this run has no oracle.
    from gazeloop.calibration.store.labelstore import DB_NAME, LabelStore

    # Clicks and glances are labels too: kept with the oracle's. A window labels with the
    # glance, once it has a profile: the c key makes one in a run that began without.
    labelled_here = oracle is not None or args.oracle == "clicks" or args.replay_clicks
    labelled_here |= not args.headless and (mapper is not None or grid_sees(args.source))
    if labelled_here or (args.mqtt and (labels_dir / DB_NAME).is_file()):
        if args.oracle == "none":  # not checked before the models loaded
            check_writable(labels_dir, folder=True)
        return LabelStore(labels_dir)
    return None


def _run_settings(args, fp: FastPath, mapper, used_profile: Path) -> dict:
    """What the label store records of this run beside its labels (`LabelStore.begin_run`):
    the resolved config (what `--config` would take back), the source, the labeller, the
    profile and the gaze model, so every label says how it was made."""
    return {
        "command": "run",
        "user": args.user,
        "device": args.device,  # whose camera placement: the uplink files labels by it
        "source": str(args.source),
        # Resolved: training leaves out the labels of a replay of what its gate judges on.
        "source_path": None
        if is_camera(args.source)
        else str(real_path(Path(args.source).expanduser())),
        "oracle": args.oracle,
        "profile": None if mapper is None else str(used_profile),
        "gaze_model": model_record(fp.gaze),
        "config": labelling_config(args).model_dump(mode="json"),
    }


def _live(args, ls: LabelledSource, fp: FastPath, mapper, oracle, store, hook, settings) -> Live:
    """The running system, with --mqtt's publisher and uplink on the source's clock;
    `settings`: what the store records of the run (`_run_settings`)."""
    from gazeloop.tools.runtime.mqtt.timebase import SourceClock

    # The one conversion of frame time to the wall clock, for the stored labels as for the
    # stream: a replayed recording's labels keep its own times, with --mqtt or without.
    clock = SourceClock(ls.source)
    publisher = uplink = None
    if args.mqtt:
        publisher, uplink = _mqtt(args, ls.source, store, mapper)
    cfg = labelling_config(args)
    return Live(
        fp,
        mapper=mapper,
        oracle=oracle,
        policy=cfg.policy.build(),
        loop_cfg=cfg.loop_config(),  # Live takes each profile's screen for the aspect
        oracle_timeout_s=cfg.oracle.timeout_s,
        store=store,
        publisher=publisher,
        snapshot_hook=hook,
        clock=clock,
        uplink=uplink,
        run_settings=settings,
    )


def _model_watcher(args, live: Live, fp: FastPath, mapper, used_profile: Path):
    """The watcher that swaps in newer models from the registry (with the profile refitted
    for them), started; None with --no-watch-models or without the trainer extra."""
    if args.no_watch_models:
        return None
    if fastpath_config(args).gaze_model is not None:
        return None  # a model file named by the user is the one they meant, not the registry's
    from gazeloop.tools.runtime.hotreload import ModelWatcher

    def on_swap(gaze, m) -> None:
        live.adopt(m, gaze)
        # Said, not only logged: the labels from here on belong to a new run record.
        refit = "" if m is None else ", with the profile refitted for it"
        print(f"gaze model: switched to {gaze.model_id} ({gaze.sha256[:12]}){refit}", flush=True)

    try:
        from gazeloop.trainer.registry import default_registry_root

        watcher = ModelWatcher(
            fp,
            default_registry_root(args.user),
            profile=None if mapper is None else mapper.profile,
            profile_path=used_profile,
            screen=None if mapper is None else mapper.screen,
            on_swap=on_swap,
            model_id=args.model_id,
        )
        watcher.start()
    except ImportError:  # the registry lives in the trainer extra
        return None
    return watcher


def _window(args, ls: LabelledSource, live: Live, stream, watcher, calibrated=None) -> Window:
    """The window, with the validation glance; its `c` key reads `stream`, and a profile it
    makes is the one a later model swap refits (and is given to `calibrated`)."""

    def on_profile(prof: Profile, m: ProfileMapper, path: Path) -> None:
        """The c key's new profile in use; a later model swap refits it, in its own file."""
        watcher.use_profile(prof, m.screen, path, install=lambda: live.install(m))

    live.enable_glance(args.glance_every * 60.0)
    swaps = {} if watcher is None else {"on_profile": on_profile, "hold": watcher.holding}
    ui = Window(
        live,
        args,
        stream=stream,
        clock=UnixClock(ls.source),
        camera=grid_sees(args.source),
        calibrated=calibrated,
        **swaps,
    )
    ui.source_desc = ls.describe()
    return ui


def _track(args, live: Live, src, stream, *, ui, replay, cursor) -> tuple[int, bool]:
    """The frame loop: every frame through the running system, until the source ends, the
    window closes, --frames or --seconds is reached, or Ctrl-C (or SIGTERM). → (frames
    processed, whether it was interrupted: the summary is said either way)."""
    frames, interrupted = 0, False
    t_start = time.monotonic()
    last_status = t_start
    with src:
        try:
            for frame in stream:
                s = live.process(frame)
                if replay is not None:
                    replay.after(frame)
                frames += 1
                if cursor is not None and s.screen_px is not None:
                    cursor.move(s.screen_px)
                if ui is not None:
                    if not ui.show(frame, s):
                        break
                elif time.monotonic() - last_status >= 1.0:
                    last_status = time.monotonic()
                    print(status_text(live, s), flush=True)
                if args.frames is not None and frames >= args.frames:
                    break
                if args.seconds is not None and time.monotonic() - t_start >= args.seconds:
                    break
        except KeyboardInterrupt:
            interrupted = True
    return frames, interrupted


def _stop(args, live: Live, src, *, watcher, listeners, ui) -> str:
    """Everything the run started, stopped, however it ended; the running system closed
    even when finishing it fails. → the summary line."""
    if watcher is not None:
        watcher.stop()
    for listener in filter(None, listeners):
        listener.stop()
    if ui is not None:
        ui.close(args.screenshot)
    try:
        _finish(live, args, replay=not isinstance(src, CameraSource))
        summary = status_text(live, None)
    finally:
        live.close()
    return summary


def _finish(live: Live, args, *, replay: bool) -> None:
    """Stop the oracle (a replay's snapshot in hand is labelled first), then give the labels
    still unsent up to --mqtt-wait seconds. The store's queue first: counting what is
    unsent reads the store, which a write stuck on a stalled disk holds."""
    live.drain_store()
    pending = live.labels_pending()
    if pending:
        print(f"sending {pending} labels (waiting up to {args.mqtt_wait:g} s) …", flush=True)
    live.finish(
        args.mqtt_wait if args.mqtt else 0.0,
        oracle_wait_s=live.oracle_timeout_s if replay else 0.0,
    )
    left = live.labels_pending() or 0  # None: no uplink
    stuck = live.uplink.stats.unsendable if live.uplink is not None else 0
    if stuck:
        print(
            f"{stuck} labels cannot be sent (too big for a message even re-encoded, or "
            "unreadable; the log names them): they stay in the label store",
            flush=True,
        )
    if left > stuck:
        why = live.uplink.stats.last_error if live.uplink is not None else None
        print(
            f"{left - stuck} labels not sent yet ({why or 'broker away'}): they stay in the "
            "label store and go on the next `run --mqtt`",
            flush=True,
        )


def status_text(live: Live, s, st: dict | None = None) -> str:
    """One status line; `st`: `live.status()` when the caller has it already."""
    st = st or live.status()
    parts = [f"{st['fps']:5.1f} fps", f"fast path {st['frame_ms_p50']:.1f} ms"]
    if s is not None and s.screen_px is not None:
        parts.append(f"gaze ({s.screen_px[0]:.0f}, {s.screen_px[1]:.0f}) px")
    elif s is not None and s.gaze_yp is not None:
        yaw, pitch = (math.degrees(v) for v in s.gaze_yp)
        parts.append(f"gaze yaw {yaw:+.1f}° pitch {pitch:+.1f}°")
    elif s is not None:
        parts.append(_no_estimate(s))
    if "oracle" in st:
        parts.append(_oracle_text(st["oracle"]))
    if "clicks" in st:
        c = st["clicks"]
        parts.append(f"clicks {c.get('ok', 0)} kept of {sum(c.values())}")
    parts += _sources_text(st)
    if st.get("offset_px") is not None:
        parts.append(f"drift offset ({st['offset_px'][0]:+.0f}, {st['offset_px'][1]:+.0f}) px")
    elif st.get("offset") is not None:
        parts.append(f"drift offset ({st['offset'][0]:+.3f}, {st['offset'][1]:+.3f})")
    if st.get("alarm"):
        parts.append(f"ALARM: {st['alarm']}")
    parts += _mqtt_text(st) + _store_text(live)
    return "  ".join(parts)


def _no_estimate(s) -> str:
    """Why a frame has no gaze: the stage that failed says it (a model that gives NaN read
    as "eyes closed" on every frame), else no face, else a blink."""
    q = s.quality
    if q.error:
        return f"no gaze: {q.error}"
    return "no face" if not q.face else "eyes closed"


def _oracle_text(o: dict) -> str:
    """The oracle's labels, and its failures: 43 failed calls read as "0 done"."""
    text = f"oracle {o['done']} done"
    lost = {k: o.get(k, 0) for k in ("failed", "timed_out", "bad")}
    if any(lost.values()):
        text += ", " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in lost.items() if n)
        if o.get("last_error"):
            text += f" (last: {o['last_error']})"
    return text + (" (busy)" if o["busy"] else "")


def _sources_text(st: dict) -> list[str]:
    """Per label source: accepted of given, noise σ and weight in the loop; the last word."""
    out = []
    if st.get("labels_dropped"):
        n = st["labels_dropped"]
        out.append(f"{n} clicks NOT judged (the loop fell behind, or the run was ending)")
    if st.get("labels_unjudged"):
        out.append(f"{st['labels_unjudged']} clicks NOT judged: the loop did not finish in time")
    if st.get("judge_errors"):
        out.append(f"{st['judge_errors']} clicks NOT judged: an error (the log says which)")
    for name, v in (st.get("sources") or {}).items():
        unit = "px" if v["scale_unit"] == "px" else ""
        scale = f"{v['scale']:.0f}{unit}" if unit else f"{v['scale']:.3f}"
        out.append(f"{name} {v['accepted']}/{v['labels']} σ {scale} w {v['weight']:.2f}")
    last = st.get("last_decision")
    if last is not None:
        word = "accepted" if last["accepted"] else "rejected: " + last["why"].split(" (")[0]
        out.append(f"last {last['source']} {word}")
    if st.get("glance_showing"):
        out.append("glance: look at the dot")
    return out


def _store_text(live: Live) -> list[str]:
    """What the label store kept: a full disk said once in the log must also show in the
    summary, and labels replayed twice are kept once, not lost."""
    if live.store is None:
        return []
    said = [] if live.uplink is not None else [f"labels stored {live.labels_stored}"]
    if live.store_duplicates:
        said.append(f"{live.store_duplicates} already stored (kept once)")
    if live.store_errors:
        said.append(f"{live.store_errors} NOT stored: {live.store_error}")
    if live.store_dropped:
        said.append(f"{live.store_dropped} NOT stored: the store's writer fell behind")
    if live.store_unwritten:
        said.append(f"{live.store_unwritten} NOT stored: the disk did not take them in time")
    if live.store_stuck:
        said.append(f"{live.store_stuck} still being written at the end (the store may hold it)")
    if live.labels_unstored:
        said.append(f"{live.labels_unstored} NOT stored: the oracle answered after a calibration")
    if live.labels_without_run:
        n = live.labels_without_run
        said.append(f"{n} kept without their run record: {live.run_record_error}")
    return said


def _mqtt_text(st: dict) -> list[str]:
    out = []
    g = st.get("gaze_stream")
    if g is not None:
        why = [
            f"{k} {g['dropped_' + k]}" for k in ("queue", "stale", "closed") if g["dropped_" + k]
        ]
        drops = f" ({', '.join(why)})" if why else ""
        waiting = g["offered"] - g["sent"] - g["dropped"]
        link = f" [{waiting} waiting: {g['last_error']}]" if waiting and g["last_error"] else ""
        out.append(f"gaze sent {g['sent']}, dropped {g['dropped']}{drops}{link}")
    u = st.get("label_uplink")
    if u is not None:
        pending = "?" if u["pending"] is None else u["pending"]
        out.append(f"labels stored {u['stored']}, sent {u['sent']}, pending {pending}")
    return out


def oracle_target_px(snap, label) -> tuple[float, float] | None:
    """Where the oracle says the eye in `snap` looks, in the snapshot's pixels: the end of
    the picture-in-picture's gold ray. Moondream keeps its forced gaze target in
    `details["target"]`, normalised to the image (a list once it has come back from the
    oracle's process as JSON). No other label has one: the glance's `target_px` and a
    click's `click_px` are places on the screen, which on the camera's picture would point
    nowhere."""
    details = label.details if label is not None else None
    t = details.get("target") if isinstance(details, dict) else None
    if not isinstance(t, list | tuple) or len(t) != 2:
        return None
    try:
        x, y = float(t[0]), float(t[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    h, w = snap.image.shape[:2]
    return x * w, y * h


class Window:
    """The OpenCV window and its keys. Drawing is done by the pure renderers.

    `stream` is the frame iterator the main loop reads: the `c` key's calibration grid takes
    its frames from it, so the camera is never opened twice."""

    def __init__(
        self,
        live: Live,
        args,
        *,
        stream=None,
        clock=None,
        on_profile=None,
        hold=None,
        camera=True,
        calibrated=None,
    ):
        self.live = live
        self.camera = camera  # the grid shows dots a recording's frames never saw
        self.hold = hold or contextlib.nullcontext
        self.args = args
        self.stream = stream
        self.clock = clock
        self.on_profile = on_profile
        self.calibrated = calibrated  # told of each new profile once it is in use
        self.source_desc = str(args.source)
        self.last_img: np.ndarray | None = None
        # One session per run, made at the first space press (a folder of a run with no
        # sample would be an empty session).
        self.samples_dir = default_session_dir(args.user, "samples")
        self._samples: SessionWriter | None = None
        self.display = CvDisplay(WINDOW)
        self._sized = False
        self._glancing = False  # the glance's dot is on the screen (full screen)
        self.gone = False  # its window was closed during the c key's grid

    def _aspect(self) -> float:
        m = self.live.mapper
        return m.screen.px[0] / m.screen.px[1] if m is not None else 16 / 9

    def show(self, frame, s) -> bool:
        live = self.live
        g = live.glance
        if g is not None and g.active is None and g.due(frame.t_ns):
            g.start(frame.t_ns, "auto")
        if g is not None and g.active is not None:
            return self._show_glance(frame)
        if self._glancing:
            self._end_glance()
        pip = None
        if live.last is not None:
            pip = render_pip(self._pip_data(live.last.snapshot, live.last.label))
        elif live.pending is not None:  # the first label is still being worked on
            snap, gaze = live.pending
            pip = render_pip(self._pip_data(snap, None, busy=True, phase=frame.index * 0.3))
        st = live.status()
        d = LiveData(
            image=frame.image,
            landmarks=None if s.landmarks is None else s.landmarks.points,
            screen_xy=None if s.screen_xy is None else tuple(s.screen_xy),
            screen_aspect=self._aspect(),
            pip=pip,
            status=status_text(live, s, st),
            alarm=st.get("alarm"),
            usable=s.quality.usable,
        )
        self.last_img = render_live(d)
        if not self._sized:
            self.display.size_to(self.last_img.shape[1], self.last_img.shape[0])
            self._sized = True
        key = self.display.show(self.last_img)
        if key in (QUIT, CLOSED):
            return False
        if key == ord("7"):
            if live.glance is not None:  # a dot from the next frame on
                live.glance.start(frame.t_ns, "key")
            else:  # a dot is a place on a screen: no profile, no screen
                print("7: nothing to verify without a profile: press c to calibrate", flush=True)
        elif key == ord(" "):
            self.record(frame, s)
        elif key == ord("c"):
            self.calibrate()
        return not self.gone

    def waiting(self, seconds: float) -> bool:
        """While the camera gives no frame (`CameraSource.on_wait`): the last view dimmed,
        saying so, and the keys still read. → False when q asks to stop."""
        msg = f"{self.source_desc}: no frame for {seconds:.1f} s, reconnecting (q quits)"
        return self.display.show(render_waiting(self.last_img, msg)) not in (QUIT, CLOSED)

    def _show_glance(self, frame) -> bool:
        """The glance's dot, full screen: the calibration grid's dot, large at first (it
        catches the eye) and shrinking to a point (it pins the fixation). Esc skips it."""
        g = self.live.glance.active
        px = self.live.mapper.screen.px
        if not self._glancing:
            self.display.fullscreen(True)
            self.display.size_to(*px)
            self._glancing = True
        h = px[1]
        big, small = max(12.0, 0.035 * h), max(4.0, 0.008 * h)
        u = min(max((frame.t_ns - g.shown_t_ns) / 0.3e9, 0.0), 1.0)
        r = big + (small - big) * u * u * (3 - 2 * u)
        view = DotView(px, g.xy, r, caption="look at the dot    Esc skips")
        key = self.display.show(render_dot(view))
        if key == ESC:  # not q: a glance ending by itself would pass it on and quit the run
            self.live.glance.cancel()
        return key != CLOSED

    def _end_glance(self) -> None:
        self._glancing = False
        self.display.fullscreen(False)
        self._sized = False  # back from full screen: the live view's size again
        g = self.live.glance.last if self.live.glance is not None else None
        if g is None:
            return
        if g.verdict != "ok":
            print(f"glance ({g.trigger}): no label ({g.verdict.replace('_', ' ')})", flush=True)
            return
        said = "" if g.decision is None else ": " + g.decision.why
        px = np.asarray(g.xy) * self.live.mapper.screen.px
        print(f"glance ({g.trigger}) at ({px[0]:.0f}, {px[1]:.0f}) px{said}", flush=True)

    def calibrate(self) -> None:
        """c: the calibration grid, full screen in this window with this camera; the fitted
        profile is saved and goes into the running fast path without a restart. No glance
        during it (it is one long validation)."""
        if self.live.glance is not None:
            self.live.glance.cancel()
            self.live.glance.calibrating = True
        try:
            with self.hold():  # no model swap from the first dot to the profile in use
                self._calibrate()
        finally:
            if self.live.glance is not None:
                self.live.glance.calibrating = False
        # The grid's window closed (it cancelled the grid): the run ends too, as when the
        # live view's is closed, rather than the next frame opening a new one.
        self.gone = self.display.closed()

    def _calibrate(self) -> None:
        live, args = self.live, self.args
        if self.stream is None or self.clock is None:
            return
        if not self.camera:
            print(
                "c: calibrating needs a camera (a recording's frames never saw the grid's "
                "dots); for a recording with its targets: gazeloop calibrate --headless",
                flush=True,
            )
            return
        try:
            cfg = args.grid
            screen = self._grid_screen()
            res = calibrate_on_screen(
                self.stream,
                live.fp,
                cfg,
                screen,
                self.display,
                self.clock,
                user=args.user,
                device=args.device,
                session_dir=default_session_dir(args.user),
                profile_out=calibration_out(
                    args.profile, live.mapper.profile if live.mapper else None, args
                ),
                source_desc=self.source_desc,
                program="gazeloop run (c key)",
                ready_s=args.ready,
                result_wait_s=5.0,
                replaces=live.mapper is not None,
            )
        except UserError as e:
            print(f"calibration: {e}", flush=True)
            return
        finally:
            self._sized = False  # back from full screen: the live view's size again
        if res is None:
            print("calibration cancelled; the current profile stays", flush=True)
            return
        mapper = ProfileMapper(res.profile, screen)
        if self.on_profile is not None:
            self.on_profile(res.profile, mapper, res.profile_path)
        else:
            live.install(mapper)
        if self.calibrated is not None:
            self.calibrated(mapper)
        print("calibrated; the new profile is in use: " + "; ".join(res.lines()), flush=True)

    def _grid_screen(self):
        """The screen the grid is drawn on: the profile's (at --screen-px when given), else
        the flags', else the one the window system reports once the window is full screen."""
        live, args = self.live, self.args
        screen = live.mapper.screen if live.mapper is not None else None
        if args.screen_px:
            px = tuple(args.screen_px)
            screen = screen.with_px(*px) if screen is not None else screen_from_args(args, px)
        if screen is None:
            self.display.fullscreen(True)
            px = self.display.screen_px()
            if px is None:
                self.display.fullscreen(False)
                raise UserError(screen_size_unknown("restart with --screen-px W H"))
            screen = screen_from_args(args, px)
        return screen

    def _pip_data(self, snap, label, *, busy=False, phase=0.0) -> PipData:
        return PipData(
            image=snap.image,
            eye_px=snap.eye_px,
            iris_px=list(snap.pupils_px or []),
            label=label,
            oracle_target_px=oracle_target_px(snap, label),
            busy=busy,
            spinner_phase=phase,
        )

    def record(self, frame, s) -> None:
        """Space: the user looks at the cursor; keep the frame labelled with its position."""
        if s.screen_px is None:
            print("no cursor position to label (no profile, or no face)")
            return
        if self._samples is None:
            screen, a = self.live.mapper.screen, self.args
            self._samples = SessionWriter(
                self.samples_dir, manifest_for(screen, a.user, a.device, "gazeloop run (space)")
            )
        # The session format's time is the wall clock at capture: the source's own (a
        # replay's frames keep the recording's times, as the labels do).
        t_ms = int(self.live.clock.ms(frame.t_ns))  # `_live` always gives it the source's
        self._samples.write(
            t_ms,
            frame.image,
            (float(s.screen_px[0]), float(s.screen_px[1])),
            {"label_source": "cursor (space key)"},
        )
        print(f"sample recorded in {self.samples_dir}")

    def close(self, screenshot: Path | None) -> None:
        if screenshot is not None and self.last_img is not None:
            ok, data = cv2.imencode(screenshot.suffix.lower(), self.last_img)
            try:
                if not ok:
                    raise OSError(f"cannot encode the picture as {screenshot.suffix}")
                atomic_write_bytes(screenshot, data.tobytes())
                print(f"screenshot: {screenshot}", file=sys.stderr)
            except OSError as e:  # the run's labels are stored: a lost picture is a warning
                print(f"screenshot not saved: {e}", file=sys.stderr)
        cv2.destroyAllWindows()
