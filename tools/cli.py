"""The `gazeloop` command: builds the parser from the command modules and maps the errors a
user can fix to one line each. Nothing else lives here."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from gazeloop.calibration.profile import ProfileError
from gazeloop.calibration.store.atomic import WriteError
from gazeloop.calibration.store.labelstore import LabelStoreError
from gazeloop.calibration.store.session import SessionError
from gazeloop.calibration.store.writer import SessionWriteError
from gazeloop.fastpath.gaze_model import ModelLoadError
from gazeloop.fastpath.landmarks import LandmarkError
from gazeloop.fastpath.models import ModelFileError
from gazeloop.fastpath.sources import SourceError
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime import progress
from gazeloop.tools.runtime.quiet import StderrFilter, silence_opencv

# One module per subcommand, in the order `gazeloop --help` lists them.
COMMANDS = (
    "models",
    "track",
    "bench",
    "demo",
    "eval_",
    "eval_sittings",
    "head_shift",
    "oracle_",
    "import_",
    "profile",
    "run",
    "calibrate",
    "record",
    "labels",
    "train",
    "mqtt",
    "baseline",
)

# Errors a user can fix (bad path, missing model, bad session...): one line, no traceback.
_USER_ERRORS = (
    UserError,
    ProfileError,
    ModelFileError,
    ModelLoadError,
    LandmarkError,
    SourceError,
    SessionError,
    SessionWriteError,
    LabelStoreError,
    WriteError,
)

# What an optional package is installed with: a command that needs one the user left out
# says which extra to install, in one line (eight commands ended in a ModuleNotFoundError
# traceback, exit 1).
_EXTRA_OF = {
    "torch": "trainer",  # or "oracle", for Moondream (`run --oracle moondream` says so)
    "accelerate": "trainer",
    "safetensors": "trainer",
    "onnxscript": "trainer",
    "tqdm": "trainer",
    "h5py": "trainer",
    "scipy": "trainer",
    "aiomqtt": "mqtt",
    "transformers": "oracle",
    "PIL": "oracle",
    "pynput": "cursor",
    "mediapipe": "mediapipe",
}


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other error of ours, with where the usage
    is: its default prints the whole usage first (19 lines for `run`), burying the line
    that says what was wrong. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gazeloop",
        description="A webcam eye tracker that stays calibrated on its own.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gazeloop.tools.commands.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Third-party C++ log lines off stderr unless asked for (only where fd 2 is a real file:
    # under a test runner's capture there is nothing to protect).
    quiet = None
    if args.verbose == 0:
        silence_opencv()
    if args.verbose == 0 and _stderr_is_fd2():
        # The terminal itself for progress lines, before the filter takes fd 2 over.
        progress.use_terminal(os.fdopen(os.dup(2), "w") if os.isatty(2) else None)
        quiet = StderrFilter()
    try:
        rc = _dispatch(args)
    finally:
        if quiet is not None:
            quiet.close()
            progress.use_terminal(None)
    if getattr(args, "leave_now", False):
        # A torchrun process other than the main one, its work done (`commands.train`):
        # out without the interpreter's teardown, after what it said is out.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _dispatch(args: argparse.Namespace) -> int:
    """The command, its errors each a code and one line."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our stdout went away (`gazeloop track ... | head`): stop as a Unix tool
        # killed by SIGPIPE does, without a traceback. stdout now points at /dev/null, so the
        # interpreter's last flush cannot raise it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except _USER_ERRORS as e:
        print(f"gazeloop {args.command}: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = _EXTRA_OF.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"gazeloop {args.command}: needs {e.name}, which the {extra} extra installs: "
            f"pip install 'gazeloop[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except OSError as e:
        # A file the system refused (read-only, full, missing, not a folder) that no command
        # anticipated: still the user's to fix, and the file and the cause say how.
        if e.filename is None:
            raise
        print(f"gazeloop {args.command}: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
