"""The MQTT bridge: the gaze stream and the labels out of the laptop, models back into it.

    laptop                                   broker                     training box
    GazePublisher ── gazeloop/<u>/<d>/gaze (QoS 0) ──▶  (live consumers)
    LabelUplink  ── gazeloop/<u>/<d>/labels (QoS 1) ──▶  Collector → session folders
    ModelFetcher ◀── gazeloop/models/announce + chunks (retained, QoS 1) ── ModelAnnouncer

Commands: `gazeloop collect`, `gazeloop announce`, `gazeloop fetch` (and `gazeloop bench mqtt`
through `bench_mqtt`). aiomqtt is an optional dependency (`pip install 'gazeloop[mqtt]'`):
this module imports it only when a command or class is used, so the CLI loads without it.
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
from typing import TYPE_CHECKING, Any

from gazeloop.tools.errors import UserError

if TYPE_CHECKING:
    from gazeloop.tools.runtime.mqtt.bench import bench_mqtt
    from gazeloop.tools.runtime.mqtt.conn import Backoff, MqttConfigError, MqttSettings
    from gazeloop.tools.runtime.mqtt.gaze import GazePublisher, PublisherStats
    from gazeloop.tools.runtime.mqtt.labels import (
        Collector,
        CollectorStats,
        LabelUplink,
        UplinkStats,
    )
    from gazeloop.tools.runtime.mqtt.models import ModelAnnouncement, ModelAnnouncer, ModelFetcher

_EXPORTS = {
    "Backoff": "gazeloop.tools.runtime.mqtt.conn",
    "MqttConfigError": "gazeloop.tools.runtime.mqtt.conn",
    "MqttSettings": "gazeloop.tools.runtime.mqtt.conn",
    "GazePublisher": "gazeloop.tools.runtime.mqtt.gaze",
    "PublisherStats": "gazeloop.tools.runtime.mqtt.gaze",
    "Collector": "gazeloop.tools.runtime.mqtt.labels",
    "CollectorStats": "gazeloop.tools.runtime.mqtt.labels",
    "LabelUplink": "gazeloop.tools.runtime.mqtt.labels",
    "UplinkStats": "gazeloop.tools.runtime.mqtt.labels",
    "ModelAnnouncement": "gazeloop.tools.runtime.mqtt.models",
    "ModelAnnouncer": "gazeloop.tools.runtime.mqtt.models",
    "ModelFetcher": "gazeloop.tools.runtime.mqtt.models",
    "bench_mqtt": "gazeloop.tools.runtime.mqtt.bench",
}


def __getattr__(name: str) -> Any:
    # Lazy: `tools.cli` imports this module for its parsers; aiomqtt loads on first use.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    try:
        mod = __import__(module, fromlist=[name])
    except ModuleNotFoundError as e:
        if e.name in ("aiomqtt", "paho"):
            raise UserError("MQTT needs aiomqtt: pip install 'gazeloop[mqtt]'") from e
        raise
    return getattr(mod, name)


def _settings(args: argparse.Namespace) -> MqttSettings:
    from gazeloop.tools.runtime.mqtt.conn import MqttConfigError, MqttSettings

    try:
        return MqttSettings.from_url(args.mqtt, ca_file=args.ca_file, insecure=args.insecure)
    except MqttConfigError as e:
        raise UserError(str(e)) from e


def add_broker_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("broker")
    g.add_argument(
        "--mqtt",
        required=required,
        metavar="URL",
        help="mqtt://[user[:pass]@]host[:port] or mqtts://... (TLS); a user without a "
        "password takes it from $GAZELOOP_MQTT_PASSWORD",
    )
    g.add_argument("--ca-file", help="CA certificate(s) to verify the broker (PEM); implies TLS")
    g.add_argument(
        "--insecure", action="store_true", help="TLS without certificate checks (test brokers)"
    )


def _screen(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"screen size is WxH in pixels, got {text!r}") from e
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"screen size must be positive, got {text!r}")
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
    c.add_argument("--user", default="+", help="only this user's labels")
    c.add_argument("--device", default="+", help="only this device's labels")
    c.add_argument(
        "--screen-px", type=_screen, help="WxH for labels whose laptop sent no screen size"
    )
    c.add_argument("--client-id", help="broker session id (default: stable per host and --out)")
    c.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    c.set_defaults(func=run_collect)

    a = sub.add_parser(
        "announce",
        help="publish a model for the laptops to fetch (retained, chunked, hash-checked)",
        description="MODEL is an exported .onnx (with its .card.json), a registry version "
        "folder, or a registry root (its latest valid version).",
    )
    add_broker_args(a)
    a.add_argument("model", type=Path, metavar="MODEL_DIR_OR_REGISTRY")
    a.add_argument("--model-id", help="which model of a registry holding several")
    a.add_argument("--json", action="store_true", help="print the announcement as JSON")
    a.set_defaults(func=run_announce)

    f = sub.add_parser(
        "fetch",
        help="bring announced models into a local model registry (laptop)",
    )
    add_broker_args(f)
    f.add_argument("--registry", required=True, type=Path, help="model registry root")
    f.add_argument("--model-id", help="only this model id")
    f.add_argument("--once", action="store_true", help="exit after the first model fetched")
    f.add_argument("--seconds", type=float, help="stop after this long")
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

    settings = _settings(args)
    collector = Collector(
        settings,
        args.out,
        user=args.user,
        device=args.device,
        screen_px=args.screen_px,
        identifier=args.client_id,
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
    return 0


def run_announce(args: argparse.Namespace) -> int:
    import aiomqtt

    from gazeloop.tools.runtime.mqtt.models import AnnounceError, ModelAnnouncer

    announcer = ModelAnnouncer(_settings(args))
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
            f"announced {ann.model_id} v{ann.version}: {ann.size} bytes in "
            f"{len(ann.chunk_sha256)} chunks, sha256 {ann.sha256}"
        )
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from gazeloop.tools.runtime.mqtt.models import ModelFetcher

    fetcher = ModelFetcher(_settings(args), args.registry, model_id=args.model_id)

    async def main() -> None:
        stop = asyncio.Event()
        done = (lambda: fetcher.stats.fetched > 0) if args.once else None
        await asyncio.gather(fetcher.run(stop), _until(stop, args.seconds, done))

    asyncio.run(main())
    st = fetcher.stats
    if fetcher.last_entry is not None:
        e = fetcher.last_entry
        print(f"fetched {e.model_id} as v{e.version} into {e.path}")
    print(json.dumps({"fetched": st.fetched, "already_had": st.already_had, "failed": st.failed}))
    return 0 if st.failed == 0 or st.fetched > 0 else 1


__all__ = [
    "Backoff",
    "Collector",
    "CollectorStats",
    "GazePublisher",
    "LabelUplink",
    "ModelAnnouncement",
    "ModelAnnouncer",
    "ModelFetcher",
    "MqttConfigError",
    "MqttSettings",
    "PublisherStats",
    "UplinkStats",
    "add_broker_args",
    "add_parser",
    "bench_mqtt",
    "add_bench_parser",
]


def add_bench_parser(sub) -> None:
    """Parser for `gazeloop bench mqtt` (for tools/bench.py to call with its subparsers)."""
    b = sub.add_parser("mqtt", help="gaze stream latency through a broker (JSON)")
    add_broker_args(b)
    b.add_argument("--rate", type=float, default=60.0, help="samples per second (default 60)")
    b.add_argument("--seconds", type=float, default=5.0)
    # Every benchmark takes --json; this one prints JSON either way.
    b.add_argument("--json", action="store_true", help="one JSON object (the default output)")
    b.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from gazeloop.tools.runtime.mqtt.bench import bench_mqtt

    settings = _settings(args)
    try:
        result = bench_mqtt(settings, rate_hz=args.rate, seconds=args.seconds)
    except RuntimeError as e:
        raise UserError(str(e)) from e
    json.dump(result, sys.stdout)
    print()
    return 0
