"""`gazeloop profile fit` chooses the mapping as `gazeloop eval` does (nested selection among
the candidates), stores the chosen candidate in the profile, and the profile evaluates on its
own session as the selection said — on the real 9-point grid session in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from gazeloop.calibration.profile import Profile
from gazeloop.fastpath.pipeline import FastPathConfig
from tests.cli import cli, eval_json


@pytest.fixture(scope="module")
def grid9(shared, gaze_onnx, face_task) -> Path:
    return shared / "data" / "sessions" / "grid9"


@pytest.fixture(scope="module")
def fitted(grid9, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("profile") / "grid9.json"
    rc, stdout, err = cli("profile", "fit", grid9, "--screen-px", 1920, 1080, "--out", out)
    assert rc == 0, err
    return out, stdout


@pytest.fixture(scope="module")
def selected(grid9) -> dict:
    """What `gazeloop eval` selects on the same session and screen."""
    return eval_json(grid9, "--screen-px", 1920, 1080)


@pytest.mark.slow
def test_profile_fit_stores_the_candidate_eval_selects(fitted, selected):
    path, stdout = fitted
    prof = Profile.load(path)
    sel = selected["selection"]
    c = prof.fit.chosen
    assert c is not None
    # the same choice as `gazeloop eval`: family, feature set, read of the frames, alpha
    assert c.label == sel["chosen"]
    assert (c.feature_set, c.read) == (sel["feature_set"], sel["read"])
    assert c.hyper == pytest.approx(sel["hyper"])
    assert prof.mapping.name == c.mapping == selected["mapping"]
    assert prof.features == c.features == selected["features"]
    assert c.mirrored is selected["mirrored"] is True  # grid9: selfie views, detected
    # the fast-path settings its frames were read with, the defaults here, and said
    assert prof.read_with == FastPathConfig().feature_settings()
    assert f"read with blink_aperture {FastPathConfig().blink_aperture}, " in stdout
    assert "focal_px unset, " in stdout  # None is a setting left unset
    # the honest figure in the profile is eval's leave-one-target-out of the whole choice
    assert prof.fit.mean_px == selected["mean_px"]
    assert prof.fit.median_px == selected["median_px"]
    assert prof.fit.targets == selected["targets"] == 9
    assert prof.fit.selection["chosen"] == sel["chosen"]
    # and it is said
    assert f"chosen by nested selection: {c.label}" in stdout
    assert f"leave-one-target-out mean {selected['mean_px']:.1f} px" in stdout


@pytest.mark.slow
def test_the_profile_evaluates_on_its_session_as_the_selection_predicted(fitted, grid9):
    """In-sample, stated as such: the profile applied unchanged to the frames it was fitted
    on gives the in-sample error recorded at the fit (below the leave-one-target-out one)."""
    path, _ = fitted
    prof = Profile.load(path)
    applied = eval_json(grid9, "--screen-px", 1920, 1080, "--profile", path)
    assert applied["profile"] == str(path)
    assert applied["mapping"] == prof.mapping.name and applied["features"] == prof.features
    assert applied["frames_used"] == prof.fit.frames == 9
    assert applied["mean_px"] == pytest.approx(prof.fit.chosen.in_sample_mean_px, abs=0.01)
    assert applied["mean_px"] < prof.fit.mean_px  # in-sample is optimistic


@pytest.mark.slow
def test_a_fixed_mapping_is_still_fitted_as_asked(grid9, tmp_path):
    out = tmp_path / "ridge.json"
    rc, stdout, err = cli(
        "profile", "fit", grid9, "--screen-px", 1920, 1080, "--mapping", "ridge", "--out", out
    )
    assert rc == 0, err
    prof = Profile.load(out)
    assert prof.mapping.name == "ridge" and prof.features == ["gaze_yaw", "gaze_pitch"]
    assert prof.fit.chosen is None and "nested selection" not in stdout


def test_a_profile_applied_with_other_read_settings_says_which(grid9, tmp_path):
    """Fitted with a focal length from --config, applied without it: `eval --profile` names
    the setting on stderr and still evaluates; applied with it, nothing is said."""
    cfg = tmp_path / "focal.json"
    cfg.write_text('{"focal_px": 1400}')
    out = tmp_path / "p.json"
    screen = ["--screen-px", 1920, 1080]
    rc, _, err = cli(
        "profile", "fit", grid9, *screen, "--mapping", "ridge", "--config", cfg, "--out", out
    )
    assert rc == 0, err
    assert Profile.load(out).read_with["focal_px"] == 1400
    rc, _, err = cli("eval", grid9, *screen, "--profile", out, "--json")
    assert rc == 0, err
    said = f"note: {out} was fitted on frames read with other settings (focal_px 1400.0 → unset)"
    assert said in err
    rc, _, err = cli("eval", grid9, *screen, "--profile", out, "--json", "--config", cfg)
    assert rc == 0 and "note:" not in err, err


def test_a_mapping_alone_takes_its_own_features(grid9, tmp_path):
    """`--mapping geometric` without `--features`: the geometric mapping's five columns, as
    `eval` takes them, not the ridge's two (which it cannot read)."""
    out = tmp_path / "geometric.json"
    args = ["profile", "fit", grid9, "--screen-px", 1920, 1080, "--mapping", "geometric"]
    rc, _, err = cli(*args, "--out", out)
    assert rc == 0, err
    prof = Profile.load(out)
    assert prof.mapping.name == "geometric"
    assert prof.features == ["gaze_yaw", "gaze_pitch", "eye_x_mm", "eye_y_mm", "eye_z_mm"]


def test_calibrate_profile_fit_and_eval_read_the_flags_alike():
    import argparse

    from gazeloop.tools.commands._args import fixed_mapping

    def ask(mapping=None, features=None):
        return fixed_mapping(argparse.Namespace(mapping=mapping, features=features))

    assert ask() is None  # nested selection
    assert ask("geometric")[1] == ["gaze_yaw", "gaze_pitch", "eye_x_mm", "eye_y_mm", "eye_z_mm"]
    assert ask("poly2") == ("poly2", ["gaze_yaw", "gaze_pitch"])
    assert ask(features="gaze_ray_yaw, gaze_ray_pitch") == (
        "ridge",
        ["gaze_ray_yaw", "gaze_ray_pitch"],
    )
    with pytest.raises(Exception, match="--features is empty"):
        ask(features=" , ")
