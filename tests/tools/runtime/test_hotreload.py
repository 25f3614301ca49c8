"""The fast path serves a newly promoted model without a restart, with a refitted profile
kept for that model; the next start of `run` and `track --profile` comes up on it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")


@pytest.fixture(autouse=True)
def _refits_at_normal_priority(monkeypatch):
    """A refit child at SCHED_IDLE waits for a core as long as any load lasts (a busy test
    beside it): priority is not what these tests test."""
    monkeypatch.setenv("GAZELOOP_ORACLE_NICE", "0")


@pytest.fixture(scope="module")
def corners_session(shared, tmp_path_factory):
    from gazeloop.tools.runtime.importers import import_corners4

    out = tmp_path_factory.mktemp("c4") / "session"
    import_corners4(shared / "data/video-corners4", out)
    return out


@pytest.mark.slow
def test_promoted_model_is_served_between_two_frames_and_the_next_start_uses_it(
    corners_session, tmp_path, monkeypatch, capsys
):
    from gazeloop.calibration.profile import (
        Profile,
        ProfileMapper,
        model_profile_path,
        profile_path,
    )
    from gazeloop.calibration.store.session import read_session
    from gazeloop.fastpath import models
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.fastpath.sources import SessionSource
    from gazeloop.tools.runtime.hotreload import ModelWatcher
    from gazeloop.trainer.export import export_onnx
    from gazeloop.trainer.model import GazeNet
    from gazeloop.trainer.registry import ModelRegistry, default_registry_root

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)
    fp = FastPath(FastPathConfig())
    session = read_session(corners_session)
    prof = _corners_profile(corners_session, fp.cfg)
    fp.set_mapper(ProfileMapper(prof))
    user_profile = prof.save(profile_path("u", "d"))
    registry = ModelRegistry(default_registry_root("u"))
    watcher = ModelWatcher(fp, registry.root, profile=prof, profile_path=user_profile)
    assert not watcher.check_once()  # nothing new yet

    # A "fine-tuned" model: the pretrained network with its gaze head nudged.
    net = GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))
    with torch.no_grad():
        for p in net.head.parameters():
            p.mul_(1.05)
    onnx_path = export_onnx(net, tmp_path / "ft.onnx", card={"model_id": "ft-test"})
    registry.register(onnx_path)
    assert not watcher.check_once()  # registered is not served: nothing promoted it
    registry.promote(1, "ft-test", reason="test")

    old_gaze = fp.gaze
    with SessionSource(session) as src:
        frames = list(src)[:3]
    before = fp.process(frames[0])
    assert watcher.check_once()
    assert fp.gaze is old_gaze  # loaded and refitted off the frame thread; not switched yet
    after = fp.process(frames[1])
    assert fp.gaze is not old_gaze and fp.gaze.model_id == "ft-test"
    assert after.screen_xy is not None and before.screen_xy is not None
    new_sha = fp.gaze.sha256
    kept = model_profile_path(user_profile, new_sha, fp.gaze.read)
    saved = Profile.load(kept, gaze_model_sha256=new_sha, gaze_read=fp.gaze.read)
    assert saved.gaze_model_id == "ft-test" and saved.fit.targets == 4
    assert saved.gaze_read == "ray:mirror_average"  # the fast path's default read, recorded
    # The user's own profile is still the one made for the model it was calibrated with.
    assert Profile.load(user_profile).gaze_model_sha256 == prof.gaze_model_sha256
    assert not watcher.check_once()  # the same version is not loaded twice
    # Rolled back past the first promotion: nothing promoted, the stock model comes back.
    assert registry.rollback("ft-test") is None
    assert watcher.check_once()
    fp.process(frames[2])
    assert fp.gaze.sha256 == old_gaze.sha256 and fp.gaze is not old_gaze
    assert Profile.load(user_profile) == prof  # the user's own profile was never rewritten
    registry.promote(1, "ft-test", reason="test: promoted again")
    fp.close()
    _next_start_uses_the_promoted_model(corners_session, user_profile, kept, capsys)


def _next_start_uses_the_promoted_model(session, user_profile, kept, capsys):
    """What failed before (exit 2, "made for gaze model ... recalibrate"): a restart of
    `run`, and `track --profile`, after the watcher had switched models."""
    from gazeloop.calibration.profile import Profile
    from gazeloop.tools.cli import main

    capsys.readouterr()
    base = ["--source", str(session), "--frames", "3", "--user", "u", "--device", "d"]
    assert main(["run", "--headless", *base]) == 0
    out = capsys.readouterr().out
    assert "gaze model: ft-test v1 (promoted in " in out
    assert f"profile: {kept} (fitted for this model" in out
    assert main(["track", str(session), "--frames", "3", "--profile", str(user_profile)]) == 0
    err = capsys.readouterr().err
    assert "gaze model: ft-test v1 (promoted in " in err and f"profile: {kept}" in err
    # No fit kept for the promoted model (a model promoted while nothing ran): the start
    # refits it once from the calibration session, says so, and keeps it.
    kept.unlink()
    assert main(["run", "--headless", *base]) == 0
    out = capsys.readouterr().out
    assert f"refitted for ft-test from {session}" in out and f"kept as {kept}" in out
    assert kept.is_file()
    # A calibration fits the model `run` serves this user (it fitted the stock one, which
    # every start then refitted), and no other user is served u's model.
    calibrated = user_profile.with_name("d2.json")
    base = ["--headless", "--source", str(session), "--user", "u", "--device", "d2"]
    assert main(["calibrate", *base, "--out", str(session.parent / "cal")]) == 0
    assert "gaze model: ft-test v1 (promoted in " in capsys.readouterr().err
    assert Profile.load(calibrated).gaze_model_id == "ft-test"
    fitted = user_profile.with_name("d3.json")
    assert main(["profile", "fit", str(session), "--user", "u", "--device", "d3"]) == 0
    assert "gaze model: ft-test v1 (promoted in " in capsys.readouterr().err
    assert Profile.load(fitted).gaze_model_id == "ft-test"
    assert main(["run", *base[:3], "--frames", "1", "--user", "v"]) == 0
    assert "gaze model: stock (nothing promoted in " in capsys.readouterr().out


def test_a_profile_of_the_other_read_is_refitted_at_start_and_kept_apart(corners_session, tmp_path):
    """A profile fitted on the single read meets a fast path that mirror-averages (the
    default since the read existed): `run` refits it from its calibration session for this
    read, keeps that fit beside it and leaves the user's file as it was."""
    from gazeloop.calibration.profile import Profile, model_profile_path
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.tools.runtime.hotreload import profile_for_model

    prof = _corners_profile(
        corners_session, FastPathConfig(mirror_average=False, gaze_frame="camera")
    )
    path = prof.save(tmp_path / "d.json")
    fp = FastPath(FastPathConfig())
    try:
        fit, said = profile_for_model(path, fp)
    finally:
        fp.close()
    assert prof.gaze_read == "single" and fit.gaze_read == "ray:mirror_average"
    assert fit.gaze_model_sha256 == prof.gaze_model_sha256 and fit.mapping != prof.mapping
    kept = model_profile_path(path, fit.gaze_model_sha256, fit.gaze_read)
    assert "refitted" in said and str(kept) in said
    assert Profile.load(kept, gaze_read=fit.gaze_read) == fit
    assert Profile.load(path) == prof
    # the refit read its frames as this fast path does, and records so
    assert fit.read_with == FastPathConfig().feature_settings()
    # A kept fit read with other settings (focal length set then, not now) is gazeloop's
    # own file: fitted again with these and kept over, not noted at every start.
    other = {**fit.read_with, "focal_px": 900.0}
    kept.write_text(fit.model_copy(update={"read_with": other}).model_dump_json())
    fp = FastPath(FastPathConfig())
    try:
        again, said = profile_for_model(path, fp)
    finally:
        fp.close()
    assert f"{kept} was read with other settings (focal_px 900.0 → unset)" in said
    assert "refitted" in said and "note:" not in said
    assert again.read_with == Profile.load(kept).read_with == FastPathConfig().feature_settings()
    # Its calibration session gone, it cannot be fitted again: the kept fit as it is, said
    # (it still maps; refusing it stopped a start that worked the run before).
    gone = str(tmp_path / "moved-away")
    moved = prof.model_copy(update={"calibration_session": gone}).save(tmp_path / "e.json")
    stale = fit.model_copy(update={"calibration_session": gone, "read_with": other})
    stale.save(model_profile_path(moved, fit.gaze_model_sha256, fit.gaze_read))
    fp = FastPath(FastPathConfig())
    try:
        used, said = profile_for_model(moved, fp)
    finally:
        fp.close()
    assert used == stale
    assert "was read with other settings (focal_px 900.0 → unset), and cannot be fitted " in said
    assert "keeps no calibration session" in said and said.endswith("used as it is")


def test_a_profile_read_with_other_settings_is_said_at_start(corners_session, tmp_path):
    """The same model and read, but frames read with another focal length: the profile is
    used as it is (no refit: the model is the same) and the start names the setting that
    differs. A profile that recorded no settings (made before they were) says nothing."""
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.tools.runtime.hotreload import profile_for_model

    cfg = FastPathConfig()
    old = _corners_profile(corners_session, cfg)
    assert old.read_with is None
    other = old.model_copy(update={"read_with": {**cfg.feature_settings(), "focal_px": 900.0}})
    fp = FastPath(cfg)
    try:
        _, quiet = profile_for_model(old.save(tmp_path / "old.json"), fp)
        fit, said = profile_for_model(other.save(tmp_path / "d.json"), fp)
    finally:
        fp.close()
    assert "note:" not in quiet and fit == other
    (note,) = [line for line in said.splitlines() if line.startswith("note:")]
    assert f"{tmp_path / 'd.json'} was fitted on frames read with other settings" in note
    assert "(focal_px 900.0 → unset)" in note


def promoted_watcher(tmp_path, monkeypatch, **kw):
    """A watcher on a registry whose promoted version is the stock network (v1 of "m"),
    profiles as plain strings: what a mapper and a refit make of one is spelled out.
    → (fast path, watcher)."""
    from types import SimpleNamespace

    from gazeloop.fastpath import models
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.tools.runtime import hotreload

    fp = FastPath(FastPathConfig())
    entry = SimpleNamespace(version=1, model_id="m", onnx_path=models.resolve_gaze_onnx())
    watcher = hotreload.ModelWatcher(fp, tmp_path / "reg", profile="old", screen="s", **kw)
    monkeypatch.setattr(watcher.registry, "promoted", lambda model_id=None: entry)
    monkeypatch.setattr(hotreload, "ProfileMapper", lambda prof, screen: f"mapper of {prof}")
    monkeypatch.setattr(hotreload, "refit_in_child", lambda prof, *a, **kw: f"{prof} refitted")
    return fp, watcher


def test_a_calibration_made_during_a_refit_is_kept_and_refitted_next(tmp_path, monkeypatch):
    """The watcher read its profile when a refit began and wrote the refit back when it
    ended: a calibration made meanwhile (run's c key) was replaced by the refit of the
    profile it had replaced, and that one was saved and served."""
    from gazeloop.tools.runtime import hotreload

    fp, watcher = promoted_watcher(tmp_path, monkeypatch)
    in_use, refits, swaps = ["old"], [], []
    watcher.on_swap = lambda gaze, mapper: swaps.append(mapper)

    def refit(profile, cfg, onnx_path, on_start=None):
        refits.append(profile)
        if len(refits) == 1:  # the c key, while this refit runs
            watcher.use_profile("new", "s", None, install=lambda: in_use.append("new"))
        return f"{profile} refitted"

    monkeypatch.setattr(hotreload, "refit_in_child", refit)
    assert not watcher.check_once()  # its refit is of a profile no longer in use
    assert (watcher.profile, in_use[-1], swaps, fp._swap) == ("new", "new", [], None)
    assert watcher.check_once()  # the promoted model again, now for the new calibration
    assert refits == ["old", "new"] and watcher.profile == "new refitted"
    assert swaps == ["mapper of new refitted"]
    assert not watcher.check_once()  # and only once
    fp.close()


def test_no_swap_is_handed_over_while_the_c_key_holds_the_watcher(tmp_path, monkeypatch):
    """The fast path applies a swap at its next frame: one handed over while the c key was
    fitting (no frame for seconds) replaced the new profile with the refit of the old."""
    import threading

    fp, watcher = promoted_watcher(tmp_path, monkeypatch)
    swaps: list = []
    watcher.on_swap = lambda gaze, mapper: swaps.append(mapper)
    done: list = []
    with watcher.holding():  # the c key: grid, fit, the new profile in use
        t = threading.Thread(target=lambda: done.append(watcher.check_once()))
        t.start()
        assert fp._swap is None and swaps == []
        watcher.use_profile("new", "s", None)
    t.join(30)
    if not done[0]:  # it had refitted the old one: dropped, and the next check refits
        assert watcher.check_once()
    assert swaps == ["mapper of new refitted"] and watcher.profile == "new refitted"
    fp.close()


def test_a_refit_that_cannot_be_saved_is_served_from_memory_and_said(tmp_path, monkeypatch, caplog):
    """A full disk while saving the refitted profile raised out of the watcher's thread (no
    hot reload for the rest of the run, nothing said); then it refused the model and refitted
    it again at every poll. Now the refit is served from memory, as at start-up, and the
    warning says it was not kept."""
    from gazeloop.tools.runtime import hotreload

    fp, watcher = promoted_watcher(tmp_path, monkeypatch, profile_path=tmp_path / "p.json")

    def full_disk(prof, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hotreload, "save_for_model", full_disk)
    with caplog.at_level("WARNING", logger="gazeloop.tools.runtime.hotreload"):
        assert watcher.check_once()
    assert fp._swap is not None and watcher.profile == "old refitted" and watcher.errors == []
    assert "not kept ([Errno 28] No space left on device)" in caplog.text
    assert not watcher.check_once()  # served: not refitted again at the next poll
    fp.close()


def test_a_refit_in_a_child_process_is_the_refit_and_says_why_it_failed(corners_session, tmp_path):
    """The watcher refits in a child at low priority (a thread took the cores from the
    cursor): the child's profile must be the one refitted here, and its failure a reason."""
    from gazeloop.fastpath.pipeline import FastPathConfig
    from gazeloop.tools.runtime.refit import refit_in_child, refit_profile

    cfg = FastPathConfig()
    prof = _corners_profile(corners_session, cfg)
    here = refit_profile(prof, cfg, None)
    children = []
    there = refit_in_child(prof, cfg, None, on_start=children.append)
    assert there == here and there.fit.targets == 4
    assert children and children[0].returncode == 0
    gone = prof.model_copy(update={"calibration_session": str(tmp_path / "gone")})
    with pytest.raises(RuntimeError, match=r"keeps no calibration session .*gone"):
        refit_in_child(gone, cfg, None)


def test_the_refit_child_takes_the_parents_accelerator_verdicts(tmp_path, monkeypatch):
    """The job carries the verdicts (`fastpath.sessions.known_verdicts`); the child adopts
    them before it opens a network (here it fails at once: no calibration session)."""
    import json

    from gazeloop.calibration.geometry import ScreenGeometry
    from gazeloop.calibration.profile import FitReport, MappingSpec, Profile
    from gazeloop.fastpath import sessions
    from gazeloop.fastpath.pipeline import FastPathConfig
    from gazeloop.tools.runtime import refit

    monkeypatch.setattr(refit, "lower_priority", lambda **_: None)  # this is no child
    monkeypatch.setattr(sessions, "_VERDICTS", {})
    row = [["sha256", "ab" * 32, ["CoreMLExecutionProvider", "CPUExecutionProvider"], "1.0"], "x"]
    prof = Profile(
        user="u",
        device="d",
        screen=ScreenGeometry(px=(100, 100)),
        features=["gaze_yaw"],
        gaze_model_id="m",
        gaze_model_sha256="0" * 64,
        mapping=MappingSpec(name="ridge", params={}),
        fit=FitReport(targets=4, frames=4, mean_px=1.0, median_px=1.0, baseline_mean_px=2.0),
    )
    job = {
        "profile": prof.model_dump(mode="json"),
        "fastpath": FastPathConfig().model_dump(mode="json"),
        "gaze_model": None,
        "verdicts": [row],
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert refit.main([str(tmp_path / "job.json"), str(tmp_path / "answer.json")]) == 0
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert "keeps no calibration session" in answer["error"]
    key = ("sha256", "ab" * 32, ("CoreMLExecutionProvider", "CPUExecutionProvider"), "1.0")
    adopted = sessions._VERDICTS
    assert adopted == {key: "x"}


def _corners_profile(session, cfg):
    from gazeloop.calibration.geometry import ScreenGeometry
    from gazeloop.calibration.procedure import fit_profile
    from gazeloop.calibration.store.session import read_session
    from gazeloop.fastpath.collect import collect_session
    from gazeloop.fastpath.pipeline import FastPath

    fp = FastPath(cfg)
    try:
        manifest = read_session(session).manifest
        used = collect_session(session, fp).labelled()
        screen = ScreenGeometry(px=manifest.screen_px, mm=manifest.screen_mm)
        names = ["gaze_yaw", "gaze_pitch"]
        return fit_profile(
            used.matrix(names),
            screen.to_norm(used.labels_px),
            used.groups,
            screen=screen,
            features=names,
            user="u",
            device="d",
            gaze_model_id=fp.gaze.model_id,
            gaze_model_sha256=fp.gaze.sha256,
            gaze_read=fp.gaze.read,
            calibration_session=str(session),
        )
    finally:
        fp.close()


def test_stopping_the_watcher_ends_a_refit_nobody_will_use(tmp_path, monkeypatch):
    """A refit child left running after `run` ended kept a core busy for its whole refit."""
    import subprocess
    import sys

    fp, watcher = promoted_watcher(tmp_path, monkeypatch)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher._started(running)
    watcher.stop()
    assert running.wait(timeout=30) != 0  # terminated, not finished
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher._started(late)  # a refit that started as tracking stopped
    assert late.wait(timeout=30) != 0
    fp.close()


def test_a_refit_that_cannot_be_kept_is_used_all_the_same(corners_session, tmp_path, monkeypatch):
    """A profile in a folder that cannot be written (read-only, full): `track --profile`
    ended with exit 2 on the refit's save, with the refit made and in memory."""
    import errno

    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.tools.runtime import hotreload

    prof = _corners_profile(
        corners_session, FastPathConfig(mirror_average=False, gaze_frame="camera")
    )
    path = prof.save(tmp_path / "d.json")

    def read_only(profile, where):
        raise OSError(errno.EROFS, "Read-only file system", str(where))

    monkeypatch.setattr(hotreload, "save_for_model", read_only)
    fp = FastPath(FastPathConfig())
    try:
        fit, said = hotreload.profile_for_model(path, fp)
    finally:
        fp.close()
    assert fit.gaze_read == "ray:mirror_average" and "Read-only file system" in said
    assert "not kept" in said and "refitted again next time" in said


def test_a_promoted_model_gone_bad_is_said_as_such_not_as_nothing_promoted(tmp_path):
    """The start fell back to the stock model with a warning, and then said "nothing
    promoted", which sends the person to promote what is promoted already."""
    from gazeloop.fastpath.pipeline import FastPathConfig
    from gazeloop.tools.runtime.hotreload import startup_model
    from gazeloop.trainer.registry import ModelRegistry
    from tests.tools.runtime.test_mqtt import tiny_model

    reg = ModelRegistry(tmp_path / "reg")
    path, card = tiny_model(tmp_path / "m", "net", 1000)
    entry = reg.register(path, card, promote=True)
    cfg, said = startup_model(FastPathConfig(), registry_root=reg.root)
    assert said.startswith("gaze model: net v1 (promoted in ")
    entry.onnx_path.unlink()
    cfg, said = startup_model(FastPathConfig(), registry_root=reg.root)
    assert cfg.gaze_model is None
    assert said == f"gaze model: stock (the promoted v1 in {reg.root} is damaged)"


def test_a_promotion_while_run_starts_is_served_and_a_named_model_is_kept(
    shared, tmp_path, monkeypatch
):
    """The watcher took the version promoted when it was built, after the profile had
    loaded, for the model the fast path ran: a promotion meanwhile was never served. And
    `run --gaze-model FILE` had its file swapped for the registry's next promotion."""
    import shutil
    from types import SimpleNamespace

    from gazeloop.fastpath import models
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.tools.runtime import hotreload
    from gazeloop.trainer.registry import ModelRegistry

    stock = models.resolve_gaze_onnx()
    v1 = SimpleNamespace(version=1, model_id="m", onnx_path=stock)
    v2 = SimpleNamespace(
        version=2, model_id="m", onnx_path=shutil.copy(stock, tmp_path / "v2.onnx")
    )
    promoted = {"now": v1}
    monkeypatch.setattr(ModelRegistry, "promoted", lambda self, model_id=None: promoted["now"])
    monkeypatch.setattr(hotreload, "ProfileMapper", lambda prof, screen: f"mapper of {prof}")
    monkeypatch.setattr(hotreload, "refit_in_child", lambda prof, *a, **kw: f"{prof} refitted")
    fp = FastPath(FastPathConfig(gaze_model=stock))  # started on v1
    assert not hotreload.ModelWatcher(fp, tmp_path / "reg").check_once()  # v1 runs: no news
    promoted["now"] = v2  # promoted while the profile loaded
    assert hotreload.ModelWatcher(fp, tmp_path / "reg").check_once()
    promoted["now"] = None  # everything rolled back: the stock model, which runs already
    assert not hotreload.ModelWatcher(FastPath(FastPathConfig()), tmp_path / "reg").check_once()

    from tests.cli import cli

    built = []
    monkeypatch.setattr(hotreload.ModelWatcher, "start", lambda self: built.append(self))
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    grid9 = shared / "data/sessions/grid9"
    base = ["run", "--headless", "--source", grid9, "--frames", 1, "--oracle", "none"]
    assert cli(*base)[0] == 0 and len(built) == 1
    rc, _, err = cli(*base, "--gaze-model", stock)
    assert rc == 0, err
    assert len(built) == 1, "a named model file would be swapped for the registry's"
