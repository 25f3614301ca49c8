"""`gazeloop models list/promote/rollback`: a person overrides the promotion gate, and the
registry's pointer (what the fast path serves) follows."""

from __future__ import annotations

import pytest

from tests.cli import cli
from tests.tools.runtime.test_mqtt import tiny_model


def test_promote_and_rollback_move_what_is_served(tmp_path, capsys):
    from gazeloop.tools.cli import main
    from gazeloop.trainer.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg")
    refused = {"promoted": False, "reason": "worse than its parent by 3.0 ± 1.0 px"}
    for n in (1000, 2000, 3000):
        path, card = tiny_model(tmp_path / "m", "net", n)
        judged = {3000: refused, 2000: {"promoted": True, "reason": None}}  # a fetched card
        reg.register(path, card | {"evaluation": judged.get(n)})
    opts = ["--registry", str(reg.root)]
    assert reg.promoted("net") is None
    assert main(["models", "promote", "1", *opts]) == 0
    assert main(["models", "promote", "3", *opts, "--reason", "looked fine to me"]) == 0
    assert reg.promoted("net").version == 3
    capsys.readouterr()
    assert main(["models", "list", *opts]) == 0
    listing = capsys.readouterr().out.splitlines()
    # v1 and v3 were promoted by a person (`models promote`), and the list says so.
    assert listing[0].startswith("  net v1") and listing[0].endswith(
        "gate: not judged; promoted by hand: gazeloop models promote"
    )
    assert listing[1].endswith("gate: promoted")  # no reason given: none made up ("None")
    assert listing[2].startswith("* net v3") and listing[2].endswith(
        "gate: refused: worse than its parent by 3.0 ± 1.0 px; promoted by hand: looked fine to me"
    )
    capsys.readouterr()
    assert main(["models", "promote", "3", *opts]) == 0  # served already: said, not recorded
    assert "net v3 is served already: nothing changed" in capsys.readouterr().out
    assert main(["models", "rollback", *opts]) == 0
    assert reg.promoted("net").version == 1
    assert "net v1 is served again" in capsys.readouterr().out
    assert main(["models", "promote", "9", *opts]) == 2  # a one-line error, exit 2
    assert "net v9 is not a valid version" in capsys.readouterr().err
    assert reg.promoted("net").version == 1
    # Back past the first promotion: nothing promoted, the stock model is served.
    assert main(["models", "rollback", *opts]) == 0
    assert "serves the stock model" in capsys.readouterr().out and reg.promoted("net") is None
    assert main(["models", "rollback", *opts]) == 2
    assert "nothing is promoted, so nothing to roll back" in capsys.readouterr().err


def test_with_two_model_ids_promoted_none_is_called_served_and_run_names_one(
    tmp_path, capsys, monkeypatch
):
    """Two model ids promoted: `models list` starred both as served and promote said 'a
    running fast path switches to it', while run served the stock model (it cannot choose)
    and had no way to be told which."""
    from gazeloop.fastpath.pipeline import FastPathConfig
    from gazeloop.tools.cli import main
    from gazeloop.tools.errors import UserError
    from gazeloop.tools.runtime.hotreload import startup_model
    from gazeloop.trainer.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg")
    for mid in ("net", "carol-net"):  # carol-net's promotion is the command's
        reg.register(*tiny_model(tmp_path / "m", mid, 1000), promote=mid == "net")
    opts = ["--registry", str(reg.root)]
    capsys.readouterr()
    assert main(["models", "promote", "1", "--model-id", "carol-net", *opts]) == 0
    assert "served by `run --model-id carol-net` (the registry holds net too)" in (
        capsys.readouterr().out
    )
    assert main(["models", "list", *opts]) == 0
    listing = capsys.readouterr().out
    assert "* " not in listing and "+ net v1" in listing and "+ carol-net v1" in listing
    assert "run serves the one `run --model-id ID` names, else the stock model" in listing
    cfg, said = startup_model(FastPathConfig(), registry_root=reg.root, model_id="carol-net")
    assert "carol-net v1" in said and cfg.gaze_model == reg.promoted("carol-net").onnx_path
    # calibrate and profile fit name it too: fitted with the stock model, every start of
    # `run --model-id` refitted their profile.
    import argparse
    import shutil

    from gazeloop.tools.commands._args import run_config, serve_users_model
    from gazeloop.trainer.registry import default_registry_root

    shutil.copytree(reg.root, default_registry_root("carol"))
    args = argparse.Namespace(user="carol", model_id="carol-net")
    serve_users_model(args)
    assert run_config(args).fastpath.gaze_model.parent.parent.name == "carol-net"
    assert "gaze model: carol-net v1 (promoted in" in capsys.readouterr().err
    # A typo served the stock model without a word; a model file named beside it was taken.
    with pytest.raises(UserError, match="--model-id carl-net: not in the registry"):
        startup_model(FastPathConfig(), registry_root=reg.root, model_id="carl-net")
    with pytest.raises(UserError, match="--gaze-model names a file"):
        named = FastPathConfig(gaze_model=tmp_path / "x.onnx")
        startup_model(named, registry_root=reg.root, model_id="net")
    # One promoted beside another registered: run serves neither, so no star either.
    only = ModelRegistry(tmp_path / "reg2")
    only.register(*tiny_model(tmp_path / "m", "net", 1000), promote=True)
    only.register(*tiny_model(tmp_path / "m", "carol-net", 1000))
    assert main(["models", "list", "--registry", str(only.root)]) == 0
    listing = capsys.readouterr().out
    assert "* " not in listing and "+ net v1" in listing
    for command in (["run", "-h"], ["track", "-h"]):
        with pytest.raises(SystemExit):
            main(command)
        assert "--model-id" in capsys.readouterr().out


def test_each_user_is_served_from_their_own_registry(tmp_path, capsys):
    """One registry for everyone served alice's personal model to bob (DESIGN: profiles,
    labels and registry, one directory per user), and bob's rollback took it from alice."""
    from gazeloop.calibration.profile import user_dir
    from gazeloop.fastpath.pipeline import FastPathConfig
    from gazeloop.tools.cli import main
    from gazeloop.tools.runtime.hotreload import startup_model
    from gazeloop.trainer.registry import ModelRegistry, default_registry_root

    alice = ModelRegistry(default_registry_root("alice"))
    assert alice.root == user_dir("alice") / "models"
    alice.register(*tiny_model(tmp_path / "m", "net", 1000))
    capsys.readouterr()
    assert main(["models", "promote", "1", "--user", "alice"]) == 0
    assert alice.promoted("net").version == 1
    cfg, said = startup_model(FastPathConfig(), user="alice")
    assert cfg.gaze_model == alice.promoted("net").onnx_path, said
    cfg, said = startup_model(FastPathConfig(), user="bob")
    assert cfg.gaze_model is None and said.startswith("gaze model: stock"), said
    capsys.readouterr()
    assert main(["models", "list", "--user", "bob"]) == 0
    assert "no registered models in" in capsys.readouterr().out
    assert main(["models", "rollback", "--user", "bob"]) == 2
    assert alice.promoted("net").version == 1


def test_models_in_the_old_shared_registry_are_pointed_at_not_served(tmp_path, capsys):
    """Models registered before each user had a registry stay where they are (whose they
    are is the person's call); `run` and `models list` say where they are and where to."""
    from gazeloop.calibration.profile import data_dir
    from gazeloop.fastpath.pipeline import FastPathConfig
    from gazeloop.tools.cli import main
    from gazeloop.tools.runtime.hotreload import startup_model
    from gazeloop.trainer.registry import ModelRegistry, default_registry_root

    old = ModelRegistry(data_dir() / "models")
    old.register(*tiny_model(tmp_path / "m", "net", 1000), promote=True)
    cfg, said = startup_model(FastPathConfig())
    mine = default_registry_root()
    assert cfg.gaze_model is None
    assert said == (
        f"gaze model: stock ({old.root} holds models registered before each user had a "
        f"registry, anyone's: move those trained for you to {mine})"
    )
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert f"move those trained for you to {mine}" in capsys.readouterr().out
    (mine / "net").parent.mkdir(parents=True)
    (old.root / "net").rename(mine / "net")
    cfg, said = startup_model(FastPathConfig())
    assert cfg.gaze_model == ModelRegistry(mine).promoted("net").onnx_path, said


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))


def test_check_calls_a_damaged_built_model_stale_not_ok(shared, tmp_path, monkeypatch, capsys):
    """A truncated ONNX in the cache was reported "ok" (and rebuilt only at its next use)."""
    import shutil

    from gazeloop.fastpath import models
    from gazeloop.tools.cli import main

    monkeypatch.setenv("GAZELOOP_MODELS", str(shared / "models"))
    built = [models.resolve_gaze_onnx(), *models.resolve_face_onnx()]
    cache = tmp_path / "cache"
    cache.mkdir()
    for p in built:
        shutil.copy(p, cache / p.name)
    gaze = cache / models.GAZE_ONNX.name
    gaze.write_bytes(gaze.read_bytes()[:100_000])
    monkeypatch.setenv(models.ENV_CACHE, str(cache))
    assert main(["models", "check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (stale,) = [x for x in lines if x.startswith("stale")]
    assert models.GAZE_ONNX.name in stale and str(gaze) in stale
    assert sum(x.startswith("ok") for x in lines) == 5


def test_check_calls_a_damaged_source_model_corrupt_not_missing(shared, tmp_path, monkeypatch):
    """A face landmarker whose bytes are not the release's was listed as MISSING: the user
    then looks for a file that is there."""
    import shutil

    from gazeloop.fastpath import models

    mine = tmp_path / "models"
    (mine / models.GAZE_IR_XML.name).parent.mkdir(parents=True)
    task = mine / models.FACE_LANDMARKER.name
    task.write_bytes((shared / "models" / models.FACE_LANDMARKER.name).read_bytes()[:1000])
    shutil.copyfile(shared / "models" / models.GAZE_IR_XML.name, mine / models.GAZE_IR_XML.name)
    monkeypatch.setenv("GAZELOOP_MODELS", str(mine))
    monkeypatch.setenv(models.ENV_OFFLINE, "1")
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path / "cache"))
    rc, out, _ = cli("models", "check")
    assert rc == 1
    lines = out.splitlines()
    (corrupt,) = [x for x in lines if x.startswith("CORRUPT")]
    assert str(task) in corrupt and "does not match the expected" in corrupt
    (missing,) = [x for x in lines if x.startswith("MISSING")]
    assert models.GAZE_IR_BIN.name in missing


def test_a_version_folder_copied_to_the_registrys_top_is_said_where_it_goes(tmp_path, capsys):
    """The README's copy-without-a-broker done one level too high: `promote` said
    'v0001 v1 is not a valid version' and `list` 'no registered models', naming nothing."""
    import shutil

    from gazeloop.tools.cli import main
    from gazeloop.trainer.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg")
    path, card = tiny_model(tmp_path / "m", "net", 1000)
    reg.register(path, card)
    mac = tmp_path / "mac"
    mac.mkdir()
    shutil.copytree(reg.root / "net/v0001", mac / "v0001")
    assert main(["models", "promote", "1", "--registry", str(mac)]) == 2
    err = capsys.readouterr().err
    assert "v0001 is a version folder at the registry's top" in err and "<model-id>/v0001" in err
    assert main(["models", "list", "--registry", str(mac)]) == 0
    assert "v0001 there is a version folder" in capsys.readouterr().out
    (mac / "net").mkdir()
    (mac / "v0001").rename(mac / "net/v0001")
    assert main(["models", "promote", "1", "--registry", str(mac)]) == 0


@pytest.mark.parametrize("history", [[1, 2], {"a": 1}, "abc", [{"at": "x"}]])
def test_a_promotion_history_of_the_wrong_shape_is_one_line(tmp_path, history):
    """A list of numbers was a TypeError traceback in `models list` and an AttributeError in
    `rollback`, and `promote` wrote its record after the junk."""
    import json

    from gazeloop.trainer.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg")
    path, card = tiny_model(tmp_path / "m", "net", 1000)
    reg.register(path, card)
    pointer = tmp_path / "reg/net/promoted.json"
    pointer.write_text(json.dumps({"model_id": "net", "version": 1, "history": history}))
    before = pointer.read_bytes()
    for argv in (["list"], ["rollback"], ["promote", "1"]):
        rc, _, err = cli("models", *argv, "--registry", tmp_path / "reg")
        assert rc == 2 and "Traceback" not in err, err
        assert f"{pointer}: unreadable promotion pointer: history is not a list" in err
    assert pointer.read_bytes() == before
