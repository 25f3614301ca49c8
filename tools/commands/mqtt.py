"""The MQTT bridge: the gaze stream and the labels out of the laptop, models back into it.

    laptop                                   broker                     training box
    GazePublisher ── gazeloop/<u>/<d>/gaze (QoS 0) ──▶  (live consumers)
    LabelUplink  ── gazeloop/<u>/<d>/labels (QoS 1) ──▶  Collector → session folders
    ModelFetcher ◀── gazeloop/models/announce/<user> + chunks (retained, QoS 1) ── ModelAnnouncer

Commands: `gazeloop collect`, `gazeloop announce`, `gazeloop fetch` (`gazeloop bench mqtt`
is a benchmark, in `bench`); the laptop's side of the first two rows is `gazeloop run
--mqtt` (`commands/run.py`), which sends what its label store holds. The bridge itself is
`tools.runtime.mqtt`. aiomqtt is an optional dependency (`pip install 'gazeloop[mqtt]'`):
it is imported only when a command runs, so the CLI loads without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.store.atomic import check_writable
from gazeloop.tools.commands._args import (
    add_broker_args,
    add_registry_args,
    broker_settings,
    positive_float,
    registry_root,
)
from gazeloop.tools.errors import UserError

# `fetch --once`: how long to wait for a first connection before giving up (a script asking
# "is there a new model?" must get an answer; it waited for ever on a closed port).
ONCE_CONNECT_S = 30.0


def _screen(values: list[str] | None) -> tuple[int, int] | None:
    """`--screen-px W H` as every other command takes it; `WxH`, its first form, still is."""
    if values is None:
        return None
    text = " ".join(values)
    try:
        w, h = (int(v) for v in text.lower().replace("x", " ").split())
    except ValueError:
        raise UserError(f"--screen-px is W H in pixels, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise UserError(f"--screen-px must be positive, got {text!r}")
    try:  # the limits every screen is held to (else each label without one fails on it)
        ScreenGeometry(px=(w, h))
    except ValidationError as e:
        why = e.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise UserError(f"--screen-px: {why}") from None
    return (w, h)


def add_parser(sub) -> None:
    c = sub.add_parser(
        "collect",
        help="receive labels over MQTT and write them as session folders (training box)",
        description="Subscribes to the labels of every laptop (or --user/--device) and writes "
        "each label once as a seed-format session folder under --out (the trainer reads it "
        "as it is); malformed payloads are counted and never written. Keeps a persistent "
        "broker session, so labels sent while it is not running wait on the broker.",
    )
    add_broker_args(c)
    c.add_argument("--out", required=True, type=Path, help="dataset folder")
    c.add_argument("--user", default="+", help="only this user's labels (default: every user's)")
    c.add_argument(
        "--device", default="+", help="only this device's labels (default: every device's)"
    )
    c.add_argument(
        "--screen-px",
        nargs="+",
        metavar="W H",
        help="the screen of labels whose laptop sent no screen size",
    )
    c.add_argument("--client-id", help="broker session id (default: stable per host and --out)")
    c.add_argument(
        "--seconds", type=positive_float, help="stop after this long (default: until Ctrl-C)"
    )
    c.set_defaults(func=run_collect)

    a = sub.add_parser(
        "announce",
        help="publish a model for the laptops to fetch (retained, chunked, hash-checked)",
        description="MODEL is an exported .onnx (with its .card.json), a registry version "
        "folder, or a registry root (its promoted version: what the fast path serves there).",
    )
    add_broker_args(a)
    a.add_argument(
        "model", type=Path, metavar="MODEL_DIR_OR_REGISTRY", help="what to announce (above)"
    )
    a.add_argument("--model-id", help="which model of a registry holding several")
    a.add_argument(
        "--user",
        help="whose laptops fetch it (default: the user whose registry MODEL is in, else "
        "default); `fetch --user` takes only that user's",
    )
    a.add_argument("--json", action="store_true", help="print the announcement as JSON")
    a.set_defaults(func=run_announce)

    f = sub.add_parser(
        "fetch",
        help="bring announced models into a local model registry (laptop)",
    )
    add_broker_args(f)
    add_registry_args(f, user_help="whose announced models to take (default: default)")
    f.add_argument("--model-id", help="only this model id")
    f.add_argument(
        "--once",
        action="store_true",
        help="exit once the first announcement is dealt with (fetched, already here, failed), "
        f"or after {ONCE_CONNECT_S:.0f} s without reaching the broker (exit 1)",
    )
    f.add_argument(
        "--seconds", type=positive_float, help="stop after this long (default: run until stopped)"
    )
    f.set_defaults(func=run_fetch)


async def _until(stop: asyncio.Event, seconds: float | None, done=None) -> None:
    """Set `stop` on Ctrl-C / SIGTERM, after `seconds`, or when `done()` turns true."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not possible off the main thread or on Windows: then only Ctrl-C's exception stops.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    end = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set():
        if (end is not None and time.monotonic() >= end) or (done is not None and done()):
            stop.set()
            break
        await asyncio.sleep(0.2)


def run_collect(args: argparse.Namespace) -> int:
    from gazeloop.tools.runtime.mqtt.labels import Collector

    settings = broker_settings(args)
    screen_px = _screen(args.screen_px)
    check_writable(args.out, folder=True)  # before waiting for labels it could not store
    for flag, name in (("--user", args.user), ("--device", args.device)):
        if name != "+":  # every user's or device's labels
            _topic_user(name, flag)
    collector = Collector(
        settings,
        args.out,
        user=args.user,
        device=args.device,
        screen_px=screen_px,
        identifier=args.client_id,
        on_subscribed=lambda n: print(
            f"subscribed to {collector.topic} (connection {n}); labels sent while this "
            "collector is away wait on the broker",
            flush=True,
        ),
    )
    print(f"collecting {collector.topic} from {settings.redacted()} into {args.out}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        await asyncio.gather(collector.run(stop), _until(stop, args.seconds))

    asyncio.run(main())
    st = collector.stats
    print(
        json.dumps(
            {
                "received": st.received,
                "written": st.written,
                "other": st.other,
                "duplicates": st.duplicates,
                "malformed": st.malformed,
                "malformed_reasons": dict(collector.malformed_reasons),
                "reconnects": st.reconnects,
                "last_error": st.last_error,
            }
        )
    )
    return _reached("collect", collector.settings, st.connects, st.last_error)


def _reached(command: str, settings, connects: int, last_error: str | None) -> int:
    """1, said on stderr, when the broker was never reached: nothing could have come, which
    is not "nothing new"."""
    if connects > 0:
        return 0
    print(
        f"gazeloop {command}: never reached the broker at {settings.redacted()}: "
        f"{last_error or 'no connection in time'}",
        file=sys.stderr,
    )
    return 1


def _topic_user(user: str, flag: str = "--user") -> str:
    """A user (or device) name that can name a topic level, or a one-line refusal."""
    from gazeloop.tools.runtime.mqtt.conn import MqttConfigError, topic_part

    try:
        return topic_part(user)
    except MqttConfigError as e:
        raise UserError(f"{flag}: {e}") from None


def run_announce(args: argparse.Namespace) -> int:
    import aiomqtt

    from gazeloop.tools.runtime.mqtt.models import AnnounceError, ModelAnnouncer
    from gazeloop.trainer.registry import registry_user

    owner = registry_user(args.model)
    if args.user and owner and args.user != owner:  # her model on his topic: his laptop serves it
        raise UserError(
            f"{args.model} is {owner}'s registry: --user {args.user} would send this model "
            f"to {args.user}'s laptops; give --user {owner}"
        )
    user = args.user or owner or "default"
    announcer = ModelAnnouncer(broker_settings(args), user=_topic_user(user))
    try:
        ann = announcer.announce_path(args.model, model_id=args.model_id)
    except AnnounceError as e:
        raise UserError(str(e)) from e
    except aiomqtt.MqttError as e:
        raise UserError(f"{announcer.settings.redacted()}: {e}") from e
    if args.json:
        print(ann.model_dump_json(exclude={"card", "chunk_sha256"}))
    else:
        print(
            f"announced {ann.model_id} v{ann.version} for {user}: {ann.size} bytes in "
            f"{len(ann.chunk_sha256)} chunks, sha256 {ann.sha256}"
        )
    return 0


def _first_outcome(fetcher):
    """--once's end: the first announcement dealt with, or no broker reached in time (its
    `stats` is a snapshot: taken afresh at each look)."""
    start = time.monotonic()

    def done() -> bool:
        st = fetcher.stats
        return st.outcomes or (st.connects == 0 and time.monotonic() - start > ONCE_CONNECT_S)

    return done


def run_fetch(args: argparse.Namespace) -> int:
    from gazeloop.tools.runtime.mqtt.models import ModelFetcher

    root = registry_root(args)
    check_writable(root, folder=True)  # else every fetch fails as a "broker problem"
    user = _topic_user(args.user)
    fetcher = ModelFetcher(broker_settings(args), root, user=user, model_id=args.model_id)

    async def main() -> None:
        stop = asyncio.Event()
        done = _first_outcome(fetcher) if args.once else None
        await asyncio.gather(fetcher.run(stop), _until(stop, args.seconds, done))

    asyncio.run(main())
    st = fetcher.stats
    if fetcher.last_entry is not None:
        e = fetcher.last_entry
        print(f"fetched {e.model_id} as v{e.version} into {e.path}")
    counts = {"fetched": st.fetched, "already_had": st.already_had, "failed": st.failed}
    print(json.dumps({**counts, "malformed": st.malformed, "last_error": st.last_error}))
    if _reached("fetch", fetcher.settings, st.connects, st.last_error):
        return 1
    # A malformed announcement is a failure to bring the model in, as a failed transfer is.
    return 0 if st.fetched > 0 or (st.failed == 0 and st.malformed == 0) else 1
