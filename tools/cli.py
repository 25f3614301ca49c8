"""The `gazeloop` command."""

from __future__ import annotations

import argparse
import logging
import sys

from calibration.profile import ProfileError
from calibration.session import SessionError
from fastpath.gaze_model import ModelLoadError
from fastpath.landmarks import LandmarkError
from fastpath.models import ModelFileError
from fastpath.sources import SourceError
from tools import (
    bench,
    calibrate_cmd,
    demo,
    eval_cmd,
    import_cmd,
    models_cmd,
    mqtt_bridge,
    profile_cmd,
    record_cmd,
    run_cmd,
    track,
    train_cmd,
)
from tools.common import UserError

# Errors a user can fix (bad path, missing model, bad session...): one line, no traceback.
_USER_ERRORS = (
    UserError,
    ProfileError,
    ModelFileError,
    ModelLoadError,
    LandmarkError,
    SourceError,
    SessionError,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gazeloop",
        description="A webcam eye tracker that stays calibrated on its own.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models_cmd.add_parser(sub)
    track.add_parser(sub)
    bench.add_parser(sub)
    demo.add_parser(sub)
    eval_cmd.add_parser(sub)
    import_cmd.add_parser(sub)
    profile_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    calibrate_cmd.add_parser(sub)
    record_cmd.add_parser(sub)
    train_cmd.add_parser(sub)
    mqtt_bridge.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except _USER_ERRORS as e:
        print(f"gazeloop {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
