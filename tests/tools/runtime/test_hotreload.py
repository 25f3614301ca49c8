"""The fast path serves a newly exported model without a restart, with a refitted profile."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")


@pytest.fixture(scope="module")
def corners_session(shared, tmp_path_factory):
    from gazeloop.tools.runtime.importers import import_corners4

    out = tmp_path_factory.mktemp("c4") / "session"
    import_corners4(shared / "data/video-corners4", out)
    return out


@pytest.mark.slow
def test_new_registered_model_is_served_between_two_frames(corners_session, tmp_path):
    from gazeloop.calibration.geometry import ScreenGeometry
    from gazeloop.calibration.procedure import fit_profile
    from gazeloop.calibration.profile import Profile, ProfileMapper
    from gazeloop.calibration.store.session import read_session
    from gazeloop.fastpath import models
    from gazeloop.fastpath.collect import collect_session, feature_matrix
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.fastpath.sources import SessionSource
    from gazeloop.tools.runtime.hotreload import ModelWatcher
    from gazeloop.trainer.export import export_onnx
    from gazeloop.trainer.model import GazeNet
    from gazeloop.trainer.registry import ModelRegistry

    torch.set_num_threads(1)
    fp = FastPath(FastPathConfig())
    session = read_session(corners_session)
    screen = ScreenGeometry(px=session.manifest.screen_px, mm=session.manifest.screen_mm)
    col = collect_session(session, fp)
    used = [s for s in col.samples if not s.settling]
    names = ["gaze_yaw", "gaze_pitch"]
    prof = fit_profile(
        feature_matrix(used, names),
        screen.to_norm(np.array([s.label_px for s in used])),
        np.array([s.target for s in used]),
        screen=screen,
        features=names,
        user="u",
        device="d",
        gaze_model_id=fp.gaze.model_id,
        gaze_model_sha256=fp.gaze.sha256,
        calibration_session=str(corners_session),
    )
    fp.set_mapper(ProfileMapper(prof))
    registry = ModelRegistry(tmp_path / "registry")
    watcher = ModelWatcher(fp, registry.root, profile=prof, profile_path=tmp_path / "profile.json")
    assert not watcher.check_once()  # nothing new yet

    # A "fine-tuned" model: the pretrained network with its gaze head nudged.
    net = GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))
    with torch.no_grad():
        for p in net.head.parameters():
            p.mul_(1.05)
    onnx_path = export_onnx(net, tmp_path / "ft.onnx", card={"model_id": "ft-test"})
    registry.register(onnx_path)

    old_gaze = fp.gaze
    with SessionSource(session) as src:
        frames = list(src)[:3]
    before = fp.process(frames[0])
    assert watcher.check_once()
    assert fp.gaze is old_gaze  # loaded and refitted off the frame thread; not switched yet
    after = fp.process(frames[1])
    assert fp.gaze is not old_gaze and fp.gaze.model_id == "ft-test"
    assert after.screen_xy is not None and before.screen_xy is not None
    saved = Profile.load(tmp_path / "profile.json", gaze_model_sha256=fp.gaze.sha256)
    assert saved.gaze_model_id == "ft-test" and saved.fit.targets == 4
    assert not watcher.check_once()  # the same version is not loaded twice
    fp.close()
