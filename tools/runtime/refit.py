"""Refitting a user's profile for another gaze model, from its calibration sessions.

A refit reads every calibration frame through the new model's fast path: seconds of full
CPU. When the watcher does it while the user is tracked (`hotreload.ModelWatcher`), a thread
of the same process took the cores from the fast path: on the 2-core Linux VM, refitting
corners4's profile (74 frames, 1.4-2.2 s) took the cursor from about 100 frames a second to
53, 88 and 96 in three runs, against 91, 94 and 104 in a child (a one-off script, 2026-12-06;
not measured on a Mac). So the watcher runs it in a child process at the oracle's low
priority (`oracle.host.lower_priority`: SCHED_IDLE on Linux, a nice value elsewhere, and
on macOS also the background class that keeps it off the cores the cursor uses). The
child is started as the oracle's is (`python -P`: a `gazeloop` folder where the user stands
is not imported instead of the installed package) in its own session (Ctrl-C in the
terminal stops `run`, which ends the child; it does not print a traceback). Job and answer
go through JSON files (no pickle); the child's own log lines come back as warnings.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.procedure import fit_profile
from gazeloop.calibration.profile import Profile
from gazeloop.calibration.sittings import cell_ids, point_groups
from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.fastpath.collect import collect_session
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.sessions import adopt_verdicts, known_verdicts
from gazeloop.oracle.host import lower_priority
from gazeloop.oracle.process import python_child_env
from gazeloop.tools.runtime.made_by import made_by
from gazeloop.tools.runtime.quiet import THIRD_PARTY

log = logging.getLogger(__name__)


def refit_profile(profile: Profile, fp_cfg, onnx_path: Path | None) -> Profile:
    """The same user, screen, features and mapping, fitted again for another gaze model
    from the frames of the profile's calibration session (all of its sessions, pooled as
    `calibration.sittings` pools them, when it was fitted on several)."""
    folders = _sessions_left(profile)
    chosen = profile.fit.chosen
    fp = FastPath(fp_cfg.model_copy(update={"gaze_model": onnx_path}))
    ids = made_by(fp)
    try:
        parts = [_read_as_fitted(folder, fp, chosen) for folder in folders]
    finally:
        fp.close()
    used = LabelledFrames.concat(parts)
    if not len(used):
        raise RuntimeError(f"{folders[-1]}: no usable calibration frames")
    sitting = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    names = [n for n in profile.features if not n.startswith("emb_")]
    if len(names) != len(profile.features):
        names.append("embedding")  # the new model's embedding may have another size
    names = used.expand(names)
    x, labels, targets = used.matrix(names), used.labels_px, used.groups
    # several sessions: a screen point is one target, left out of all of them at once, and
    # outliers are judged within a target of one session (`calibration.sittings`)
    pooled = len(folders) > 1
    new = fit_profile(
        x,
        profile.screen.to_norm(labels),
        point_groups(labels) if pooled else targets,
        outlier_groups=cell_ids(np.array(sitting), targets) if pooled else None,
        screen=profile.screen,
        features=names,
        user=profile.user,
        device=profile.device,
        **ids,
        mapping=profile.mapping.name,
        # The base profile's, even gone: `find_for_model` knows a kept fit by it.
        calibration_session=profile.calibration_session,
    )
    # what the calibration decided about its history stays with its sessions, and what it
    # chose with how the frames were read (its features and hyperparameters are the refit's)
    again = None
    if chosen is not None:
        again = chosen.model_copy(
            update={"features": names, "read": "as read", "hyper": new.fit.hyper}
            | {"in_sample_mean_px": None}
        )
    fit = new.fit.model_copy(update={"history": profile.fit.history, "chosen": again})
    # Of the same sittings: its `created` stays theirs, or a run would take a profile of
    # last week for this sitting's (the loop's prior) because it was refitted today.
    kept = {"calibration_sessions": [str(f) for f in folders] if pooled else [], "fit": fit}
    return new.model_copy(update=kept | {"created": profile.created})


def _sessions_left(profile: Profile) -> list[str]:
    """The profile's calibration sessions still on disk (a refit goes on without the ones
    deleted or moved since, said); RuntimeError when none is."""
    given = profile.calibration_sessions or [profile.calibration_session]
    folders = [f for f in given if f and Path(f).is_dir()]
    if not folders:
        raise RuntimeError(
            f"profile {profile.user}/{profile.device} keeps no calibration session "
            f"({given[-1]!r}): it cannot be refitted for a new model"
        )
    if len(folders) < len(given):
        gone = [f for f in given if f not in folders]
        log.warning("refitting without %d calibration session(s) gone: %s", len(gone), gone)
    return folders


def _read_as_fitted(folder: str, fp: FastPath, chosen) -> LabelledFrames:
    """A session's frames read as the profile's were: left to tell from the frames, a
    selfie view without a manifest was read un-mirrored, and the refit, which no longer
    said so, put every point of a mirrored reading on the other side of the screen."""
    mirrored = None if chosen is None else chosen.mirrored
    return collect_session(folder, fp, mirrored=mirrored).labelled()


def refit_in_child(
    profile: Profile,
    fp_cfg: FastPathConfig,
    onnx_path: Path | None,
    *,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> Profile:
    """`refit_profile` in a child process at low priority. `on_start` gets the child
    (the watcher terminates it when tracking stops). RuntimeError with the child's reason
    when it fails."""
    with tempfile.TemporaryDirectory(prefix="gazeloop-refit-") as tmp:
        job, answer = Path(tmp) / "job.json", Path(tmp) / "answer.json"
        spec = {
            "profile": profile.model_dump(mode="json"),
            "fastpath": fp_cfg.model_dump(mode="json"),
            "gaze_model": None if onnx_path is None else str(onnx_path),
            "verdicts": known_verdicts(),  # an accelerator's check is not made twice
        }
        atomic_write_bytes(job, json.dumps(spec).encode())
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", __name__, str(job), str(answer)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=python_child_env(),
            cwd=os.getcwd(),
            start_new_session=True,
        )
        if on_start is not None:
            on_start(child)
        _, err = child.communicate()
        said = _own_lines(err)
        for line in said:
            log.warning("refit: %s", line)
        if not answer.is_file():
            last = said[-1] if said else f"exit status {child.returncode}"
            raise RuntimeError(f"the refit process ended without an answer: {last}")
        result = json.loads(answer.read_text(encoding="utf-8"))
    if "error" in result:
        raise RuntimeError(result["error"])
    return Profile.model_validate(result["profile"])


def _own_lines(err: bytes) -> list[str]:
    """The child's stderr without MediaPipe's and TensorFlow Lite's C++ log lines."""
    lines = (raw for raw in err.splitlines() if raw.strip() and not THIRD_PARTY.match(raw))
    return [raw.decode("utf-8", "replace") for raw in lines]


def main(argv: list[str] | None = None) -> int:
    """The child: job file in, answer file out (written last, so no answer means it died)."""
    job, answer = (Path(a) for a in (argv if argv is not None else sys.argv[1:]))
    lower_priority(background=True)  # the oracle's knob, GAZELOOP_ORACLE_NICE (default 10)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    spec = json.loads(job.read_text(encoding="utf-8"))
    adopt_verdicts(spec.get("verdicts", []))
    onnx = spec["gaze_model"]
    try:
        prof = refit_profile(
            Profile.model_validate(spec["profile"]),
            FastPathConfig.model_validate(spec["fastpath"]),
            None if onnx is None else Path(onnx),
        )
        result = {"profile": prof.model_dump(mode="json")}
    except Exception as e:  # the parent says why the new model is not used
        result = {
            "error": str(e)
            if isinstance(e, (RuntimeError, ValueError, OSError))
            else f"{type(e).__name__}: {e}"
        }
    atomic_write_bytes(answer, json.dumps(result).encode())  # whole, or none: it died
    return 0


if __name__ == "__main__":
    sys.exit(main())
