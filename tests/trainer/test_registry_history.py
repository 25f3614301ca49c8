"""The registry keeps who promoted what: a rollback (even of the first promotion) appends to
the history instead of cutting it, `models list` says when a person promoted a version the
gate had not, and shipping bytes the registry already holds registers and judges nothing."""

from __future__ import annotations

import json

import pytest

import gazeloop.trainer.ship as ship_mod
from gazeloop.trainer.gate import GateResult
from gazeloop.trainer.registry import PROMOTED_FILE, ModelRegistry, RegistryError
from tests.tools.runtime.test_mqtt import tiny_model

REFUSED = {"promoted": False, "reason": "worse than its parent by 3.0 ± 1.0 px"}


def _registry(tmp_path, n: int = 2) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "reg")
    for i in range(n):
        path, card = tiny_model(tmp_path / "m", "net", 1000 * (i + 1))
        reg.register(path, card | {"evaluation": REFUSED})
    return reg


def test_rolling_back_the_first_promotion_keeps_the_record(tmp_path):
    reg = _registry(tmp_path)
    reg.promote(1, "net", reason="looked fine to me")
    assert reg.rollback("net") is None and reg.promoted("net") is None
    pointer = json.loads((reg.root / "net" / PROMOTED_FILE).read_text())
    assert pointer["version"] is None
    assert [(h["version"], h["reason"]) for h in pointer["history"]] == [
        (1, "looked fine to me"),
        (None, "rollback from v1"),
    ]
    assert pointer["history"][1]["rollback"] is True and pointer["history"][1]["undone"] == 1
    assert reg.last_promotion("net") is None
    with pytest.raises(RegistryError, match="nothing is promoted, so nothing to roll back"):
        reg.rollback("net")
    # The stack still works through the appended records, one step back each time.
    reg.promote(1, "net")
    reg.promote(2, "net")
    assert reg.rollback("net").version == 1
    assert reg.rollback("net") is None
    assert len(reg.promotions("net")) == 6


def test_models_list_says_who_promoted_against_the_gate(tmp_path, capsys):
    from gazeloop.tools.cli import main

    reg = _registry(tmp_path)
    opts = ["--registry", str(reg.root)]
    assert main(["models", "promote", "1", *opts, "--reason", "looked fine to me"]) == 0
    assert main(["models", "rollback", *opts]) == 0  # the first promotion, rolled back
    capsys.readouterr()
    assert main(["models", "list", *opts]) == 0
    v1, v2 = capsys.readouterr().out.splitlines()[:2]
    assert v1.startswith("  net v1") and v1.endswith(
        "gate: refused: worse than its parent by 3.0 ± 1.0 px; promoted by hand: looked fine to me"
    )
    assert v2.endswith("gate: refused: worse than its parent by 3.0 ± 1.0 px")


@pytest.fixture
def shipping(tmp_path, monkeypatch):
    """`ship` with export and gate stood in for (a tiny model; the gate says "better"):
    → (config, best checkpoint, registry root, the model file, the gate's calls)."""
    from gazeloop.trainer.export import card_path_for

    onnx, base_card = tiny_model(tmp_path / "m", "net", 1000)
    base = onnx.read_bytes()
    judged = []

    def export(model, out, card):  # as export_onnx: the file's metadata names the parent
        import onnx as onnx_pkg

        m = onnx_pkg.load_from_string(base)
        m.metadata_props.add(key="gazeloop.parent_model_id", value=card["parent_model_id"])
        out.write_bytes(m.SerializeToString())
        doc = {k: v for k, v in base_card.items() if k != "onnx_sha256"}
        doc |= {k: card[k] for k in ("parent_model_id", "weights_sha256")}
        card_path_for(out).write_text(json.dumps(doc, default=str))
        return out

    def judge(*a, **kw):
        judged.append(a)
        return GateResult(promoted=True, reason="better")

    best = tmp_path / "best.safetensors"
    best.write_bytes(b"the best checkpoint's weights")
    monkeypatch.setattr(ship_mod, "export_onnx", export)
    monkeypatch.setattr(ship_mod, "load_checkpoint", lambda p: None)
    monkeypatch.setattr(ship_mod, "card_metrics", lambda p: {})
    monkeypatch.setattr(ship_mod, "judge", judge)
    cfg = ship_mod.TrainConfig(out_dir=tmp_path / "run")
    return cfg, best, tmp_path / "reg", onnx, judged


def test_shipping_the_same_weights_again_registers_and_judges_nothing(shipping, monkeypatch):
    """A `--resume --export` relaunch of a finished run judged its model again and registered
    it as a second version; and once the gate had promoted the first export, which the next
    one names as its parent, the ONNX bytes differed, so comparing them found nothing."""
    cfg, best, reg, onnx, judged = shipping
    monkeypatch.setattr(ship_mod, "parent_model", lambda *a: (onnx, "parent", "stock", None))
    first = ship_mod.ship(cfg, best, reg, "net")
    # v1 is promoted now: a relaunch's export would name it as the parent.
    monkeypatch.setattr(ship_mod, "parent_model", lambda *a: (onnx, "net v1", "net", 1))
    again = ship_mod.ship(cfg, best, reg, "net")
    assert first["version"] == 1 and "already_registered" not in first
    assert again["version"] == 1 and again["already_registered"] is True
    assert again["gate"]["reason"].startswith("already registered as v1 (the same checkpoint)")
    assert again["gate"]["reason"].endswith("its gate said: better")
    assert len(judged) == 1 and again["promoted"] is True
    assert [e.version for e in ModelRegistry(reg).list("net")] == [1]
    best.write_bytes(b"other weights")  # trained further: a new model, judged
    assert ship_mod.ship(cfg, best, reg, "net")["version"] == 2 and len(judged) == 2


def test_a_run_stopped_between_registering_and_promoting_is_promoted_on_relaunch(
    shipping, monkeypatch
):
    """SIGTERM (or a crash) after the gate passed and the model was registered, before it
    was promoted: the relaunch the message advises found the weights registered and said
    "already registered", and the passed model was never served."""
    from gazeloop.trainer.registry import ModelRegistry

    cfg, best, reg, onnx, judged = shipping
    monkeypatch.setattr(ship_mod, "parent_model", lambda *a: (onnx, "parent", "stock", None))
    promote = ModelRegistry.promote

    def stopped(self, *a, **kw):
        raise KeyboardInterrupt  # SIGTERM, as terminate_as_interrupt raises it

    monkeypatch.setattr(ModelRegistry, "promote", stopped)
    with pytest.raises(KeyboardInterrupt):
        ship_mod.ship(cfg, best, reg, "net")
    assert ModelRegistry(reg).promoted("net") is None  # registered, not served
    monkeypatch.setattr(ModelRegistry, "promote", promote)
    again = ship_mod.ship(cfg, best, reg, "net")
    assert again["promoted"] is True and again["served_version"] == 1 and len(judged) == 1
    assert again["gate"]["reason"].endswith("it had not been promoted, and is now")
    assert ModelRegistry(reg).promoted("net").version == 1
    GateResult.model_validate(again["gate"])  # what `train` prints it from (it refused a field)
    # A person's rollback stands: the next relaunch (a script may pass --resume --export
    # every time) does not promote it again.
    ModelRegistry(reg).rollback("net")
    third = ship_mod.ship(cfg, best, reg, "net")
    assert third["promoted"] is False and ModelRegistry(reg).promoted("net") is None
