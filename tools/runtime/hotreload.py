"""Hot reload: the fast path picks up a newer registered model without a restart.

A watcher thread polls the model registry (a directory; the MQTT fetcher writes into the
same registry, so announced models arrive the same way). On a newer version it loads the
model off the frame thread, refits the user's profile from the stored calibration session
with the new model (no recalibration asked of the user), saves that profile, and hands both
to the fast path, which switches between two frames.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gazeloop.calibration.procedure import fit_profile
from gazeloop.calibration.profile import Profile, ProfileMapper
from gazeloop.fastpath.collect import collect_session, expand_features, feature_matrix
from gazeloop.fastpath.gaze_model import GazeModel
from gazeloop.fastpath.pipeline import FastPath

log = logging.getLogger(__name__)


def refit_profile(profile: Profile, fp_cfg, onnx_path: Path, gaze: GazeModel) -> Profile:
    """The same user, screen, features and mapping, fitted again for another gaze model
    from the frames of the profile's calibration session."""
    if not profile.calibration_session or not Path(profile.calibration_session).is_dir():
        raise RuntimeError(
            f"profile {profile.user}/{profile.device} keeps no calibration session "
            f"({profile.calibration_session!r}): it cannot be refitted for a new model"
        )
    fp = FastPath(fp_cfg.model_copy(update={"gaze_model": onnx_path}))
    try:
        col = collect_session(profile.calibration_session, fp)
    finally:
        fp.close()
    used = [ls for ls in col.samples if not ls.settling]
    if not used:
        raise RuntimeError(f"{profile.calibration_session}: no usable calibration frames")
    names = [n for n in profile.features if not n.startswith("emb_")]
    if len(names) != len(profile.features):
        names.append("embedding")  # the new model's embedding may have another size
    names = expand_features(names, used[0].sample)
    x = feature_matrix(used, names)
    y = profile.screen.to_norm(np.array([ls.label_px for ls in used]))
    return fit_profile(
        x,
        y,
        np.array([ls.target for ls in used]),
        screen=profile.screen,
        features=names,
        user=profile.user,
        device=profile.device,
        gaze_model_id=gaze.model_id,
        gaze_model_sha256=gaze.sha256,
        mapping=profile.mapping.name,
        calibration_session=profile.calibration_session,
    )


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
        latest = self.registry.latest(model_id)
        # Versions present at start are not "new": the user chose the model they started with.
        self.seen = latest.version if latest is not None else 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Load and hand over a newer model if there is one; True when a swap was requested."""
        entry = self.registry.latest(self.model_id)
        if entry is None or entry.version <= self.seen:
            return False
        self.seen = entry.version
        try:
            gaze = GazeModel(entry.onnx_path, threads=self.fp.cfg.threads)
            mapper = None
            if self.profile is not None:
                prof = refit_profile(self.profile, self.fp.cfg, entry.onnx_path, gaze)
                if self.profile_path is not None:
                    prof.save(self.profile_path)
                self.profile = prof
                mapper = ProfileMapper(prof, self.screen)
        except Exception as e:  # a bad model must never stop tracking with the old one
            msg = f"model {entry.model_id} v{entry.version} not used: {e}"
            self.errors.append(msg)
            log.error(msg)
            return False
        self.fp.request_swap(gaze, mapper)
        log.info("new model %s v%d ready; switching", entry.model_id, entry.version)
        if self.on_swap is not None:
            self.on_swap(gaze, mapper)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
