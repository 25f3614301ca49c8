"""Hot reload: the fast path picks up a newer registered model without a restart.

A watcher thread polls the model registry (a directory; the MQTT fetcher writes into the
same registry, so announced models arrive the same way) for a change of its *promoted*
version (a promotion by the trainer's gate or by hand, or a rollback); registered versions
that nothing promoted are never served. On a change it loads the model off the frame thread,
refits the user's profile from the stored calibration session with the new model (no
recalibration asked of the user; in a child process at low priority, so the cursor keeps
its frame rate: `refit`), keeps that fit beside the user's profile as the one for
that model (`calibration.profile.save_for_model`: the user's own file is not overwritten),
and hands both to the fast path, which switches between two frames.

At start (`startup_model`, `profile_for_model`) `run` and `track` do the same: they load the
promoted model, and the profile made for it, refitting it once from the calibration session
when none is kept yet, and say what they did.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from gazeloop.calibration.profile import (
    Profile,
    ProfileError,
    ProfileMapper,
    find_for_model,
    model_profile_path,
    read_with_changes,
    save_for_model,
)
from gazeloop.fastpath import models
from gazeloop.fastpath.gaze_model import GazeModel
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.made_by import read_otherwise
from gazeloop.tools.runtime.refit import refit_in_child, refit_profile

log = logging.getLogger(__name__)


def startup_model(
    fp_cfg, *, user: str = "default", registry_root: Path | None = None, model_id: str | None = None
):
    """(fast-path config, what was chosen): the promoted model of the user's registry (or
    `registry_root`) when no gaze model was named, else the config unchanged. No registry,
    no promoted version or no trainer extra: the stock model, said so."""
    if fp_cfg.gaze_model is not None:
        if model_id is not None:
            raise UserError("--model-id picks the registry's model; --gaze-model names a file")
        return fp_cfg, f"gaze model: {fp_cfg.gaze_model} (given)"
    try:
        from gazeloop.trainer.registry import (
            ModelRegistry,
            RegistryError,
            default_registry_root,
            unmoved_registry_note,
        )
    except ImportError:  # the registry lives in the trainer extra
        return fp_cfg, "gaze model: stock (no trainer extra, so no model registry)"
    root = Path(registry_root or default_registry_root(user))
    if note := unmoved_registry_note(root):
        return fp_cfg, f"gaze model: stock ({note})"
    try:
        reg = ModelRegistry(root) if root.is_dir() else None
        held = [] if reg is None else reg.model_ids()
        if model_id is not None and model_id not in held:  # a typo served the stock model
            raise UserError(f"--model-id {model_id}: not in the registry {root} (it holds: "
                            f"{', '.join(held) or 'nothing'})")  # fmt: skip
        entry = reg.promoted(model_id) if reg is not None else None
        # A promotion whose version has gone bad is skipped with a warning: not "nothing".
        bad = reg.last_promotion(model_id) if reg is not None and entry is None else None
    except RegistryError as e:
        return fp_cfg, f"gaze model: stock (registry {root}: {e})"
    if bad is not None:
        return fp_cfg, f"gaze model: stock (the promoted v{bad['version']} in {root} is damaged)"
    if entry is None:
        return fp_cfg, f"gaze model: stock (nothing promoted in {root})"
    cfg = fp_cfg.model_copy(update={"gaze_model": entry.onnx_path})
    return cfg, f"gaze model: {entry.model_id} v{entry.version} (promoted in {root})"


def profile_for_model(path: Path, fp: FastPath) -> tuple[Profile, str]:
    """The user's profile for the model this fast path runs: the file itself when it was
    made for it, else the fit kept for that model, else a refit from the profile's
    calibration session (kept for next time). ProfileError when none of these is possible."""
    base, fit, how = find_for_model(path, fp.gaze.sha256, fp.gaze.read)
    if fit is base:  # the user's own file: read otherwise, only noted
        note = read_otherwise(path, fit, fp)
        return fit, f"profile: {how}" + ("" if note is None else "\n" + note)
    stale = None
    if fit is not None:
        # A fit gazeloop kept for this model, read with other settings: fitted again with
        # these, as a stale one is; when it cannot be (its calibration session gone), the
        # kept fit as it is, said: it still maps.
        changes = read_with_changes(fit, fp.cfg.feature_settings())
        if not changes:
            return fit, f"profile: {how}"
        kept = model_profile_path(path, fp.gaze.sha256, fp.gaze.read)
        stale, how = fit, f"{kept} was read with other settings ({'; '.join(changes)})"
    try:
        fit = refit_profile(base, fp.cfg, fp.cfg.gaze_model)
    except (RuntimeError, ValueError, OSError) as e:
        if stale is not None:
            return stale, f"profile: {how}, and cannot be fitted again ({e}): used as it is"
        raise ProfileError(
            f"{path}: made for gaze model {base.gaze_model_id} ({base.gaze_read} read), not "
            f"the one loaded ({fp.gaze.model_id}, {fp.gaze.read} read), and it cannot be "
            f"refitted: {e}; recalibrate"
        ) from None
    return fit, _refitted(how, base, fit, fp, path)


def _refitted(how: str, base: Profile, fit: Profile, fp: FastPath, path: Path) -> str:
    """What a start says of a refit, once it is kept beside the user's profile."""
    err = f"{fit.fit.mean_px:.1f} px leave-one-target-out" if fit.fit.mean_px else "fitted"
    return (
        f"profile: {how}; refitted for {fp.gaze.model_id} from {base.calibration_session} "
        f"({err}), {_keep(fit, path)[1]}"
    )


def _keep(fit: Profile, path: Path) -> tuple[bool, str]:
    """Keep a refit beside the user's profile for next time, and say where. A profile folder
    we may not write to (read-only, full) costs the next start a refit, not this one its
    profile: the refit is in memory (`track --profile` ended with exit 2 here; a hot reload
    refused the model and refitted it again at every poll)."""
    try:
        return True, f"kept as {save_for_model(fit, path)}"
    except OSError as e:
        return False, f"not kept ({e}): refitted again next time"


class ModelWatcher:
    def __init__(
        self,
        fp: FastPath,
        registry_root: Path,
        *,
        model_id: str | None = None,
        profile: Profile | None = None,
        profile_path: Path | None = None,
        screen=None,
        interval_s: float = 2.0,
        on_swap: Callable[[GazeModel, ProfileMapper | None], None] | None = None,
    ):
        from gazeloop.trainer.registry import (
            ModelRegistry,  # tools may use the trainer; fastpath not
        )

        self.fp = fp
        self.registry = ModelRegistry(registry_root)
        self.model_id = model_id
        self.profile = profile
        self.profile_path = profile_path
        self.screen = screen
        self.interval_s = interval_s
        self.on_swap = on_swap
        self.errors: list[str] = []
        # Only a change from what the fast path runs is news: the model file it was started
        # on (`startup_model`'s choice; None: the stock model).
        self.seen = self._version_of(fp.cfg.gaze_model)
        # A calibration made while a refit runs (run's c key) must not be overwritten by
        # the refit of the profile it replaced: `use_profile` counts the profiles given,
        # and a refit hands its swap over only if no other came meanwhile.
        self._lock = threading.RLock()  # `holding` around `use_profile` takes it twice
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen | None = None  # a refit running (`refit_in_child`)

    def _promoted(self):
        """(readable, the promoted entry or None). An unreadable registry is not a change."""
        from gazeloop.trainer.registry import RegistryError

        try:
            return True, self.registry.promoted(self.model_id)
        except RegistryError as e:
            msg = str(e)
            if msg not in self.errors:  # once: the watcher polls every few seconds
                self.errors.append(msg)
                log.error(msg)
            return False, None

    def _version_of(self, running: Path | str | None) -> int | None:
        """The promoted version when the fast path runs its file; else a version nothing
        is promoted as (-1), so the first check swaps. The promoted version was read here,
        after the profile had loaded (a refit can take minutes): a promotion meanwhile was
        taken for the model already running and never served."""
        entry = self._promoted()[1]
        if running is None:
            return None if entry is None else -1
        if entry is not None and Path(entry.onnx_path).resolve() == Path(running).resolve():
            return entry.version
        return -1

    def check_once(self) -> bool:
        """Load and hand over the promoted model if it changed (a promotion or a rollback);
        True when a swap was requested."""
        readable, entry = self._promoted()
        version = None if entry is None else entry.version
        if not readable or version == self.seen:
            return False
        seen_before, self.seen = self.seen, version
        # Nothing promoted any more (rolled back past the first promotion): the stock model.
        name = "the stock model" if entry is None else f"{entry.model_id} v{entry.version}"
        with self._lock:
            profile, screen, path, generation = (
                self.profile,
                self.screen,
                self.profile_path,
                self._generation,
            )
        try:
            onnx_path = entry.onnx_path if entry is not None else models.resolve_gaze_onnx()
            # on the providers the running fast path chose (a forced --ep holds for new models)
            gaze = GazeModel(
                onnx_path,
                threads=self.fp.cfg.threads,
                providers=self.fp.providers,
                mirror_average=self.fp.cfg.mirror_average,
                head_frame=self.fp.cfg.gaze_frame,
                crop_scale=self.fp.cfg.crop_scale,
            )
            prof = mapper = None
            if profile is not None:
                prof = refit_in_child(profile, self.fp.cfg, onnx_path, on_start=self._started)
                mapper = ProfileMapper(prof, screen)
        except Exception as e:  # a bad model must never stop tracking with the old one
            if self._stop.is_set():  # its refit ended by stop(): nothing went wrong
                return False
            msg = f"{name} not used: {e}"
            self.errors.append(msg)
            log.error(msg)
            return False
        with self._lock:
            if generation != self._generation:
                # Another profile came while this one was refitted: the next check refits it.
                self.seen = seen_before
                log.info("%s: a new calibration came during its refit; refitting that", name)
                return False
            if prof is not None:
                if path is not None:
                    kept, said = _keep(prof, path)
                    if not kept:
                        log.warning("%s: the profile refitted for it is %s", name, said)
                self.profile = prof
            self.fp.request_swap(gaze, mapper)
            if self.on_swap is not None:
                self.on_swap(gaze, mapper)
        log.info("%s ready; switching", name)
        return True

    def holding(self):
        """No swap is handed over while this is held: run's c key holds it from the grid's
        first dot to its profile in use. A swap handed over mid-grid would mix two models'
        features in one fit, and one handed over after the fit (the fast path applies it at
        its next frame) would replace the new profile with the refit of the old one."""
        return self._lock

    def use_profile(self, profile: Profile, screen, path: Path | None, install=None) -> None:
        """A new profile for the running model (run's c key): the one later swaps refit.
        `install()` puts it in use under the same lock, so no refit of the old profile
        handed over before it can land after it."""
        with self._lock:
            self._generation += 1
            self.profile, self.screen, self.profile_path = profile, screen, path
            if install is not None:
                install()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # the next promotion must still be served
                log.exception("model watcher: check failed")

    def _started(self, child: subprocess.Popen) -> None:
        self._child = child
        if self._stop.is_set():  # stopped while the child was starting
            child.terminate()

    def stop(self) -> None:
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:  # a refit nobody will use
            child.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)
