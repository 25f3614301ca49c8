"""Calibration profiles (`calibration.profile`): JSON round trip, atomic save, clear load
errors, resolution independence, and no pickle."""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import gazeloop.calibration as calibration
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import fit_select, make_mapping
from gazeloop.calibration.profile import (
    DEFAULT_FEATURES,
    SCHEMA_VERSION,
    FitReport,
    MappingSpec,
    Profile,
    ProfileError,
    ProfileMapper,
    data_dir,
    profile_path,
)

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
SCREEN = ScreenGeometry(px=(1920, 1080), mm=(344.0, 194.0), viewing_distance_mm=600.0)


class FakeSample:
    """What the fast path hands a mapper: anything with `feature_dict()`."""

    def __init__(self, **features: float) -> None:
        self._d = dict(features)

    def feature_dict(self) -> dict[str, float]:
        return dict(self._d)


def calibration_data(seed: int = 0):
    """A 3x3 grid of targets, 5 frames each; yaw/pitch a noisy linear function of it."""
    rng = np.random.default_rng(seed)
    grid = np.array([(x, y) for y in (0.1, 0.5, 0.9) for x in (0.1, 0.5, 0.9)])
    groups = np.repeat(np.arange(9), 5)
    y = grid[groups]
    x = np.column_stack([0.6 * (y[:, 0] - 0.5), -0.35 * (y[:, 1] - 0.5)])
    x += 0.005 * rng.normal(size=x.shape)
    return x, y, groups


def make_profile(mapping: str = "ridge", **kw) -> Profile:
    x, y, groups = calibration_data()
    m, hyper, score = fit_select(mapping, x, y, groups, aspect=SCREEN.aspect)
    fields = dict(
        user="ada",
        device="laptop",
        screen=SCREEN,
        features=list(DEFAULT_FEATURES),
        gaze_model_id="gaze-estimation-adas-0002",
        gaze_model_sha256=SHA,
        mapping=MappingSpec(name=mapping, params=m.params()),
        fit=FitReport(targets=9, frames=len(x), mean_px=score * 1080, hyper=hyper),
        offset=(0.01, -0.02),
        calibration_session="/data/ada/sessions/calib-1",
    )
    fields.update(kw)
    return Profile(**fields)


def samples(n: int = 25, seed: int = 1) -> list[FakeSample]:
    rng = np.random.default_rng(seed)
    return [
        FakeSample(gaze_yaw=a, gaze_pitch=b, head_yaw=0.3)
        for a, b in rng.uniform(-0.3, 0.3, size=(n, 2))
    ]


@pytest.fixture
def saved(tmp_path) -> tuple[Profile, Path]:
    prof = make_profile()
    return prof, prof.save(tmp_path / "users" / "ada" / "profiles" / "laptop.json")


# --- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("mapping", ["ridge", "poly2", "rbf", "affine"])
def test_json_round_trip_gives_the_same_profile_and_predictions(tmp_path, mapping):
    prof = make_profile(mapping)
    path = prof.save(tmp_path / "sub" / "p.json")  # parent folders are made
    assert path == tmp_path / "sub" / "p.json" and path.is_file()
    back = Profile.load(path, gaze_model_sha256=SHA, features=list(DEFAULT_FEATURES))
    assert back == prof
    assert back.screen == SCREEN and back.offset == (0.01, -0.02)
    a, b = ProfileMapper(prof), ProfileMapper(back)
    pa = np.array([a(s) for s in samples()])
    pb = np.array([b(s) for s in samples()])
    assert np.array_equal(pa, pb)  # bit for bit, not approximately
    # and they are the mapping's own predictions plus the offset, past the screen's edges
    # too (the fast path clips what it shows; the drift loop judges the point where it is)
    x = np.array([[s.feature_dict()[n] for n in DEFAULT_FEATURES] for s in samples()])
    raw = ProfileMapper(prof).mapping.predict(x)
    assert np.allclose(pa, raw + [0.01, -0.02], atol=1e-12)
    assert np.ptp(pa[:, 0]) > 0.3 and np.ptp(pa[:, 1]) > 0.3  # it does map, not a constant


def test_mapper_predicts_the_calibration_targets(saved):
    prof, path = saved
    mapper = ProfileMapper(Profile.load(path))
    mapper.offset = np.zeros(2)  # the loop may reset or move it; it is read on every call
    x, y, groups = calibration_data()
    pred = np.array([mapper(FakeSample(gaze_yaw=a, gaze_pitch=b)) for a, b in x])
    assert np.abs(pred - y).max() < 0.05
    mapper.offset = np.array([0.1, 0.0])
    moved = np.array([mapper(FakeSample(gaze_yaw=a, gaze_pitch=b)) for a, b in x])
    assert np.allclose(moved[:, 0], pred[:, 0] + 0.1)
    assert np.allclose(moved[:, 1], pred[:, 1])


def test_mapper_returns_none_without_features(saved):
    prof, _ = saved
    assert ProfileMapper(prof)(FakeSample()) is None


def test_file_is_plain_json_text_and_no_pickle(saved):
    prof, path = saved
    raw = path.read_bytes()
    assert not raw.startswith(b"\x80")  # a pickle's protocol marker
    data = json.loads(raw.decode("utf-8"))
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["features"] == ["gaze_yaw", "gaze_pitch"]
    assert data["gaze_model_sha256"] == SHA
    assert data["mapping"]["name"] == "ridge"
    assert data["screen"]["px"] == [1920, 1080]
    assert isinstance(data["mapping"]["params"]["state"]["W"], list)
    assert data["offset"] == [0.01, -0.02]
    # no temp files left beside it
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_pickle_is_refused_and_never_unpickled(tmp_path):
    """A profile from someone else must be safe to load: a pickle that would run code when
    unpickled is a load error and runs nothing."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.json"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ProfileError, match=str(path)):
        Profile.load(path)
    assert not marker.exists()


def test_no_pickle_module_in_the_calibration_package():
    banned = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    for py in Path(calibration.__file__).parent.rglob("*.py"):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not banned & set(names), f"{py.name} imports {names}"


# --- atomic save -------------------------------------------------------------------------


def test_failed_save_leaves_the_old_file_intact(saved, monkeypatch):
    prof, path = saved
    before = path.read_bytes()
    changed = prof.model_copy(update={"offset": (0.3, 0.3)})

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        changed.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert Profile.load(path).offset == (0.01, -0.02)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # temp file removed
    changed.save(path)  # and a working save does replace it
    assert Profile.load(path).offset == (0.3, 0.3)


# --- load errors -------------------------------------------------------------------------


def _rewrite(path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _load_error(path: Path, **kw) -> str:
    with pytest.raises(ProfileError) as e:
        Profile.load(path, **kw)
    msg = str(e.value)
    assert str(path) in msg, msg  # every message names the file
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    msg = _load_error(tmp_path / "nope.json")
    assert "no such profile" in msg


def test_malformed_json(saved):
    _, path = saved
    path.write_text(path.read_text()[:-40])  # cut short, as after a crash without atomicity
    assert "not a readable JSON profile" in _load_error(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "not a readable JSON profile" in _load_error(path)


def test_wrong_schema_version(saved):
    _, path = saved
    _rewrite(path, lambda d: d.update(schema_version=2))
    msg = _load_error(path)
    assert "schema_version 2" in msg and "reads 1" in msg


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda d: d.pop("gaze_model_sha256"), "gaze_model_sha256"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["screen"].update(px=[0, 1080]), "screen.px"),
        (lambda d: d.update(features="gaze_yaw"), "features"),
        # A name no frame offers: a live run applied it and failed every frame in silence.
        (lambda d: d["features"].__setitem__(0, "bogus"), "unknown feature(s) ['bogus']"),
    ],
)
def test_invalid_profile_names_the_field(saved, edit, where):
    _, path = saved
    _rewrite(path, edit)
    msg = _load_error(path)
    assert "invalid profile" in msg and where in msg


def test_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]")
    assert "invalid profile" in _load_error(path)


def test_broken_mapping_parameters(saved):
    _, path = saved
    _rewrite(path, lambda d: d["mapping"]["params"]["state"].update(W=[[1.0, 2.0]]))
    assert "mapping 'ridge' is invalid" in _load_error(path)
    _rewrite(path, lambda d: d["mapping"].update(name="rbf"))
    assert "mapping 'rbf' is invalid" in _load_error(path)


def test_a_scale_of_zero_or_a_nan_is_refused_at_load(saved):
    """`profile show` called a scale of 0 healthy, and `eval --profile` printed numpy's
    divide-by-zero warnings before its error; a NaN was refused by `profile show` only, so
    `run` and `track` loaded it and put every point nowhere."""
    prof, path = saved
    _rewrite(path, lambda d: d["mapping"]["params"]["state"].update(scale=[0.0, 1.0]))
    msg = _load_error(path)
    assert "mapping 'ridge' is invalid" in msg and "scale [0] is 0" in msg, msg
    _rewrite(path, lambda d: d["mapping"]["params"]["state"].update(scale=[float("nan"), 1.0]))
    msg = _load_error(path)
    assert "not a usable profile: mapping state.scale[0] (nan) is not a finite number" in msg


def test_an_offset_that_is_no_drift_is_refused_at_load(saved):
    """Only `profile show` refused a NaN or screen-sized drift offset: `run` and `track`
    loaded it and added it to every point."""
    _, path = saved
    _rewrite(path, lambda d: d.update(offset=[1e9, -1e9]))
    assert "drift offset (+1e+09, -1e+09) is more than a screen" in _load_error(path)
    _rewrite(path, lambda d: d.update(offset=[float("nan"), 0.0]))
    assert "not a usable profile: drift offset (nan, 0.0) is not finite" in _load_error(path)
    _rewrite(path, lambda d: d.update(offset=[0.6, -0.7]))  # large, but a drift
    assert Profile.load(path).offset == (0.6, -0.7)


def test_mapping_width_must_match_the_features(saved):
    """A mapping fitted on 3 features in a profile that lists 2 would only fail later, frame
    by frame, in the fast path; it is a load error."""
    prof, path = saved
    x, y, groups = calibration_data()
    x3 = np.column_stack([x, x[:, 0] * x[:, 1]])
    m = make_mapping("ridge").fit(x3, y, groups=groups)
    _rewrite(path, lambda d: d["mapping"].update(params=json.loads(json.dumps(m.params()))))
    msg = _load_error(path)
    assert "3 features" in msg and "2" in msg


def test_wrong_gaze_model(saved):
    _, path = saved
    msg = _load_error(path, gaze_model_sha256=OTHER_SHA)
    assert "gaze-estimation-adas-0002" in msg and "recalibrate" in msg
    assert SHA[:12] in msg and OTHER_SHA[:12] in msg
    assert Profile.load(path, gaze_model_sha256=SHA).gaze_model_sha256 == SHA


def test_a_profile_is_for_the_read_it_was_fitted_on(saved):
    """The mirror-averaged read and the single read of one network differ by its asymmetry:
    a profile of one read is refused for the other, with the ways out; a profile written
    before the reads existed says nothing and was fitted on the single read."""
    prof, path = saved
    assert prof.gaze_read == "single"
    msg = _load_error(path, gaze_read="mirror_average")
    assert "single read" in msg and "mirror_average read" in msg and "recalibrate" in msg
    assert '{"gaze_frame": "camera", "mirror_average": false, "crop_scale": 1.8}' in msg
    _rewrite(path, lambda d: d.pop("gaze_read"))
    assert Profile.load(path, gaze_read="single").gaze_read == "single"
    _rewrite(path, lambda d: d.update(gaze_read="both"))
    assert "gaze_read" in _load_error(path)


def test_read_names_and_the_settings_that_make_them():
    from gazeloop.calibration.profile import read_config, read_name

    names = {read_name(m, f) for m in (False, True) for f in ("camera", "ray")}
    assert names == {"single", "mirror_average", "ray:single", "ray:mirror_average"}
    names |= {read_name(True, "ray", 1.5), read_name(False, "camera", 2.25)}
    names |= {read_name(False, "camera", 5e-05)}  # positional digits: `:g` wrote 5e-05
    for n in names:  # every name is a valid profile field and its settings make it again
        assert make_profile(gaze_read=n).gaze_read == n
        c = read_config(n)
        assert read_name(c["mirror_average"], c["gaze_frame"], c["crop_scale"]) == n


def test_different_features(saved):
    _, path = saved
    msg = _load_error(path, features=["gaze_yaw", "gaze_pitch", "head_yaw"])
    assert "head_yaw" in msg and "recalibrate" in msg
    _load_error(path, features=["gaze_pitch", "gaze_yaw"])  # order matters too
    assert Profile.load(path, features=["gaze_yaw", "gaze_pitch"]).features == DEFAULT_FEATURES


# --- the done criterion: one profile, any resolution ---------------------------------------


def test_profile_fitted_at_1080p_works_at_1440p(saved):
    prof, path = saved
    prof = Profile.load(path)
    assert prof.screen.px == (1920, 1080)
    at_1080 = ProfileMapper(prof)
    at_1440 = ProfileMapper(prof, screen=prof.screen.with_px(2560, 1440))
    assert at_1440.screen.px == (2560, 1440)
    assert at_1440.screen.mm == prof.screen.mm  # same physical screen
    assert at_1440.screen.viewing_distance_mm == 600.0
    xs = samples(40)
    n1 = np.array([at_1080(s) for s in xs])
    n2 = np.array([at_1440(s) for s in xs])
    assert np.array_equal(n1, n2)  # normalised points do not depend on the resolution
    p1 = at_1080.to_px(n1)
    p2 = at_1440.to_px(n2)
    assert np.allclose(p2, p1 * (2560 / 1920), rtol=1e-12)
    assert np.allclose(p2 / [2560, 1440], n1)
    assert np.ptp(p2[:, 0]) > 0.3 * 2560  # the points spread over the screen
    # the centre target lands in the centre at both resolutions
    centre = FakeSample(gaze_yaw=0.0, gaze_pitch=0.0)
    off = np.array(prof.offset)
    assert np.allclose(at_1080.to_px(at_1080(centre) - off), [960, 540], atol=0.05 * 1080)
    assert np.allclose(at_1440.to_px(at_1440(centre) - off), [1280, 720], atol=0.05 * 1440)
    # the profile itself is untouched: it still says where it was fitted
    assert prof.screen.px == (1920, 1080)


# --- where profiles live -----------------------------------------------------------------


def test_profile_path_is_per_user_and_device(tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    assert data_dir() == tmp_path
    p = profile_path("ada lovelace", "MacBook Pro")
    assert p == tmp_path / "users" / "ada lovelace" / "profiles" / "MacBook Pro.json"
    # One-to-one: these pairs shared a file, and one calibration replaced the other's.
    for a, b in [
        (("李雷", "laptop"), ("王芳", "laptop")),
        (("ada", "MacBook (built-in)"), ("ada", "MacBook [built-in]")),
        (("ada", "desk.sittings-1512x982"), ("ada", "desk")),  # desk's pool on that screen
        (("ada", "desk.models"), ("ada", "desk")),  # desk's fits for other gaze models
        (("a/b", "x"), ("a_b", "x")),
    ]:
        pa, pb = profile_path(*a), profile_path(*b)
        beside = (pb.stem + ".sittings-1512x982", pb.stem + ".models")
        assert pa != pb and pa.stem not in beside, (a, b)
    assert profile_path("ada", "MacBook Pro/M3").name.startswith("MacBook_Pro_M3-")
    users = (tmp_path / "users").resolve()
    for user, device in [("../../etc", "../passwd"), ("..", "x"), (".", "x"), ("", "")]:
        p = profile_path(user, device)
        assert p.resolve().parent.parent.parent == users, (user, p)
        assert p.parent.name == "profiles" and p.suffix == ".json"
    assert profile_path("ada", "mac") != profile_path("bob", "mac")
    # A user's sessions and labels stay inside users/ (`--user ../../../x` wrote sessions
    # outside the data folder); a plain folder name keeps the folder they were always in.
    from gazeloop.calibration.profile import user_dir

    for user in ("../../../escaped", "a/b", "..", ".", ""):
        assert user_dir(user).resolve().parent == users, user
    assert user_dir("ada lovelace") == tmp_path / "users" / "ada lovelace"
    assert user_dir("李雷") != user_dir("王芳")
    monkeypatch.delenv("GAZELOOP_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "gazeloop"


def test_whose_folder_is_told_by_its_profiles_and_never_guessed_from_a_hashed_name(tmp_path):
    """`announce` from users/<folder>/models took the folder's name for the user's, and a
    made-safe one ("dom\\eve" lives in `dom_eve-<hash>`) sent the model to a topic no laptop
    listens on."""
    from gazeloop.calibration.profile import folder_user, user_dir

    plain, hashed = tmp_path / "ada lovelace", tmp_path / "dom_eve-1a2b3c4d"
    assert folder_user(plain) == "ada lovelace" and folder_user(hashed) is None
    mine = tmp_path / "users" / user_dir("team/eve").name
    (mine / "profiles").mkdir(parents=True)
    (mine / "profiles" / "laptop.json").write_text(json.dumps({"user": "team/eve"}))
    assert folder_user(mine) == "team/eve"


def test_fits_for_other_models_are_kept_apart_and_never_replace_the_users_profile(tmp_path):
    from gazeloop.calibration.profile import find_for_model, model_profile_path, save_for_model

    path = tmp_path / "d.json"
    mine = make_profile().model_copy(update={"calibration_session": "/s", "created": "2026-01-01"})
    save_for_model(mine, path)  # no file yet: it becomes the user's profile too
    assert Profile.load(path) == mine
    other = mine.model_copy(
        update={"gaze_model_id": "ft", "gaze_model_sha256": "b" * 64, "created": "2026-01-02"}
    )
    kept = save_for_model(other, path)
    assert kept == model_profile_path(path, "b" * 64) == tmp_path / "d.models/bbbbbbbbbbbbbbbb.json"
    # Another read is another fit; its name holds no ':' (Windows, macOS's Finder).
    assert model_profile_path(path, "b" * 64, "ray:mirror_average").name == (
        "bbbbbbbbbbbbbbbb.ray-mirror_average.json"
    )
    assert Profile.load(path) == mine  # the user's profile still serves its own model
    assert find_for_model(path, mine.gaze_model_sha256)[1] == mine
    base, fit, how = find_for_model(path, "b" * 64)
    assert base == mine and fit == other and how.startswith(str(kept))
    assert find_for_model(path, "c" * 64)[1] is None  # a model nothing was fitted for
    # A later calibration makes the older fit for the other model stale.
    mine.model_copy(update={"created": "2026-01-03"}).save(path)
    base, fit, how = find_for_model(path, "b" * 64)
    assert fit is None and "predates the last calibration" in how


def test_a_damaged_fit_kept_for_a_model_is_fitted_again_not_an_error(tmp_path):
    """The kept fit is a copy a refit makes again from the calibration session: truncated,
    it stopped `run` and `track` ("not a readable JSON profile") though the user's own
    profile was fine."""
    from gazeloop.calibration.profile import find_for_model, save_for_model

    path = tmp_path / "d.json"
    mine = make_profile().model_copy(update={"calibration_session": "/s", "created": "2026-01-01"})
    save_for_model(mine, path)
    other = mine.model_copy(
        update={"gaze_model_id": "ft", "gaze_model_sha256": "b" * 64, "created": "2026-01-02"}
    )
    kept = save_for_model(other, path)
    kept.write_bytes(kept.read_bytes()[:200])
    base, fit, how = find_for_model(path, "b" * 64)
    assert base == mine and fit is None
    assert how.startswith(f"{kept} is unreadable, fitted again (")


def test_fits_for_the_other_read_of_the_same_model_are_kept_apart(tmp_path):
    from gazeloop.calibration.profile import find_for_model, model_profile_path, save_for_model

    path = tmp_path / "d.json"
    mine = make_profile().model_copy(update={"calibration_session": "/s", "created": "2026-01-01"})
    save_for_model(mine, path)
    base, fit, how = find_for_model(path, SHA, "mirror_average")
    assert base == mine and fit is None and "single read" in how
    averaged = mine.model_copy(update={"gaze_read": "mirror_average", "created": "2026-01-02"})
    kept = save_for_model(averaged, path)
    assert kept == model_profile_path(path, SHA, "mirror_average") != model_profile_path(path, SHA)
    assert kept.name == f"{SHA[:16]}.mirror_average.json"
    assert find_for_model(path, SHA, "mirror_average")[1] == averaged
    assert find_for_model(path, SHA)[1] == mine == Profile.load(path)


def test_a_profile_records_the_eye_squares_it_was_fitted_on():
    """`profile fit --config '{"crop_scale": 1.5}'` recorded nothing of it, and the profile
    was then used silently on the network's own framing (173 against 193 px on the next
    evit sitting). The framing is part of the read's name, and a default one names none."""
    from gazeloop.calibration.profile import DEFAULT_CROP_SCALE, read_config, read_name
    from gazeloop.fastpath.features import CROP_SCALE

    assert DEFAULT_CROP_SCALE == CROP_SCALE
    assert read_name(True, "ray", CROP_SCALE) == "ray:mirror_average"
    name = read_name(True, "ray", 1.5)
    assert name == "ray:mirror_average@crop1.5"
    assert read_config(name) == {"gaze_frame": "ray", "mirror_average": True, "crop_scale": 1.5}
    assert read_config("single")["crop_scale"] == CROP_SCALE


def test_read_with_changes_names_what_differs_and_not_what_was_never_recorded():
    """A setting added since the profile was made is no change; a profile that recorded
    none has none."""
    from gazeloop.calibration.profile import read_with_changes

    prof = make_profile(read_with={"landmarks": "onnx", "focal_px": None, "crop_scale": 1.8})
    now = {"landmarks": "tasks", "focal_px": None, "crop_scale": 1.8, "new_setting": 3}
    assert read_with_changes(prof, now) == ["landmarks onnx → tasks"]
    assert read_with_changes(prof, {**now, "landmarks": "onnx"}) == []
    assert read_with_changes(make_profile(), now) == []
    # kept through a save and a load
    assert Profile.model_validate_json(prof.model_dump_json()).read_with == prof.read_with
