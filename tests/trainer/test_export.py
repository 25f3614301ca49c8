"""trainer.export (ONNX + card, parity gate) and trainer.registry (versioned, atomic), down to
the fast path's GazeModel loading what the registry holds."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.paths import SHARED

torch = pytest.importorskip("torch", reason="torch (trainer extra) is needed for the trainer")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (trainer extra)")

import onnx  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from gazeloop.fastpath.gaze_model import GazeModel  # noqa: E402
from gazeloop.fastpath.ir_onnx import OMZ_IO_CONVENTION, build_onnx  # noqa: E402
from gazeloop.trainer import export as ex  # noqa: E402
from gazeloop.trainer.export import (  # noqa: E402
    ExportParityError,
    ModelCard,
    card_path_for,
    export_onnx,
    read_card,
)
from gazeloop.trainer.model import MODEL_VERSION, GazeNet  # noqa: E402
from gazeloop.trainer.registry import ModelRegistry, RegistryError  # noqa: E402

torch.set_num_threads(1)

IR_DIR = SHARED / "models" / "gaze-estimation-adas-0002"
XML = IR_DIR / "gaze-estimation-adas-0002.xml"
BIN = IR_DIR / "gaze-estimation-adas-0002.bin"

CARD = {
    "model_id": "gaze-test",
    "training_data": {"summary": {"sessions": 0, "frames": 0}, "sha256": "0" * 64},
    "metrics": {"loto_px": 123.4},
    "parent_model_id": "gaze-estimation-adas-0002",
}


def _need_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"shared material folder not found at {SHARED} (holds the pretrained IR)")


def _perturb(model: GazeNet, scale: float = 0.02, seed: int = 0) -> GazeNet:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def pretrained_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_shared()
    return build_onnx(XML, BIN, tmp_path_factory.mktemp("rebuild") / "pretrained.onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unchanged pretrained network exported by the trainer (one export per module)."""
    _need_shared()
    out = tmp_path_factory.mktemp("export") / "gaze-test.onnx"
    return export_onnx(GazeNet.from_ir(XML, BIN), out, card=CARD)


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory: pytest.TempPathFactory) -> tuple[GazeNet, Path]:
    _need_shared()
    model = _perturb(GazeNet.from_ir(XML, BIN)).eval()
    out = tmp_path_factory.mktemp("export-perturbed") / "gaze-test.onnx"
    return model, export_onnx(model, out, card={**CARD, "parent_model_id": "gaze-test"})


def _crops(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:60, 0:60]
    eyes = []
    for _ in range(2 * n):
        cx, cy = rng.uniform(20, 40, 2)
        img = 210 - 160 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 50)
        eyes.append(np.clip(img[..., None] + rng.normal(0, 8, (60, 60, 3)), 0, 255))
    eyes = np.asarray(eyes).astype(np.uint8)
    head = np.radians(rng.uniform(-20, 20, (n, 3)))
    return eyes[:n], eyes[n:], head


# -- export -------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_is_one_file_with_metadata_and_card(exported: Path) -> None:
    assert sorted(p.name for p in exported.parent.iterdir()) == [
        "gaze-test.card.json",
        "gaze-test.onnx",
    ]  # no .onnx.data, no temp files left behind
    proto = onnx.load(str(exported), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["gazeloop.model_id"] == "gaze-test"
    assert meta["gazeloop.io_convention"] == OMZ_IO_CONVENTION
    assert meta["gazeloop.builder"] == ex.EXPORT_BUILDER
    assert MODEL_VERSION in meta["gazeloop.trainer_version"]
    assert [i.name for i in proto.graph.input] == [
        "left_eye_image",
        "right_eye_image",
        "head_pose_angles",
    ]
    assert [o.name for o in proto.graph.output] == ["gaze_vector", "embedding"]
    batch_dims = {i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input}
    assert len(batch_dims) == 1 and batch_dims != {""}  # one symbolic batch dimension

    card = read_card(card_path_for(exported))
    assert card.model_id == "gaze-test" and card.version is None
    assert 0.0 <= card.parity_max_error <= 1e-4
    assert card.onnx_bytes == exported.stat().st_size
    assert card.metrics == {"loto_px": 123.4}
    assert card.parent_model_id == "gaze-estimation-adas-0002"
    assert card.training_data.sha256 == "0" * 64
    assert card.preprocessing.descriptor["crop_scale"] == pytest.approx(1.8)
    assert card.preprocessing.version == ex.preprocessing_version()
    assert [t.name for t in card.outputs] == ["gaze_vector", "embedding"]
    assert card.outputs[1].shape == ["N", 80]


@pytest.mark.slow
def test_exported_model_matches_torch_at_several_batch_sizes(exported: Path) -> None:
    import onnxruntime as ort

    model = GazeNet.from_ir(XML, BIN).eval()
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for n in (1, 3, 7):
        left, right, head = ex.parity_inputs(n, seed=n + 10)
        got = sess.run(
            None, {"left_eye_image": left, "right_eye_image": right, "head_pose_angles": head}
        )
        with torch.no_grad():
            want = model(torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(head))
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            assert np.abs(g - w.numpy()).max() <= 1e-4


@pytest.mark.slow
def test_registered_model_loads_in_gazemodel_and_predicts_like_pretrained(
    exported: Path, pretrained_onnx: Path, tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    entry = reg.register(exported)
    assert entry.version == 1 and entry.path.name == "v0001"
    assert sorted(p.name for p in entry.path.iterdir()) == ["card.json", "model.onnx"]
    # Moved away from where it was exported: it must not depend on neighbouring files.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = Path(shutil.copy(entry.onnx_path, elsewhere / "model.onnx"))

    ours = GazeModel(moved, threads=1)
    ref = GazeModel(pretrained_onnx, threads=1)
    assert ours.model_id == "gaze-test" and ours.embedding_dim == 80
    left, right, head = _crops(6)
    a = ours.predict_batch(left, right, head)
    b = ref.predict_batch(left, right, head)
    assert np.abs(a.raw - b.raw).max() <= 1e-4
    assert np.abs(a.embeddings - b.embeddings).max() <= 1e-4
    assert np.nanmax(np.abs(a.yaw_pitch - b.yaw_pitch)) <= 1e-3
    one = ours.predict(left[0], right[0], head[0])
    np.testing.assert_allclose(one.raw, b.raw[0], atol=1e-4)


@pytest.mark.slow
def test_perturbed_model_exports_registers_and_loads(
    exported: Path, perturbed: tuple[GazeNet, Path], pretrained_onnx: Path, tmp_path: Path
) -> None:
    model, path = perturbed
    reg = ModelRegistry(tmp_path / "registry")
    reg.register(exported)
    entry = reg.register(path)
    assert entry.version == 2 and reg.latest().version == 2
    assert entry.card.parent_model_id == "gaze-test"
    assert entry.card.parity_max_error <= 1e-4

    ours = GazeModel(entry.onnx_path, threads=1)
    left, right, head = _crops(4, seed=1)
    got = ours.predict_batch(left, right, head)
    pre = GazeModel(pretrained_onnx, threads=1).predict_batch(left, right, head)
    assert np.abs(got.raw - pre.raw).max() > 1e-3  # the new weights are what is served
    # ...and they are the torch model's: same feed as GazeModel builds (OMZ order, degrees).
    omz_left = torch.from_numpy(right.transpose(0, 3, 1, 2).astype(np.float32))
    omz_right = torch.from_numpy(left.transpose(0, 3, 1, 2).astype(np.float32))
    omz_head = torch.tensor(
        np.stack([np.degrees(head[:, 0]), -np.degrees(head[:, 1]), 0 * head[:, 2]], 1),
        dtype=torch.float32,
    )
    with torch.no_grad():
        want, _ = model(omz_left, omz_right, omz_head)
    assert np.abs(got.raw - want.numpy()).max() <= 1e-4


@pytest.mark.slow
def test_failed_parity_writes_nothing(
    exported: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A real mismatch, not a faked number: the exporter hands back the PRETRAINED graph while
    # the model being exported has other weights, and the real parity check must catch it.
    monkeypatch.setattr(
        ex,
        "_torch_to_onnx",
        lambda model, opset: onnx.load(str(exported), load_external_data=False),
    )
    reg = ModelRegistry(tmp_path / "registry")
    reg.register(exported)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "out" / "bad.onnx"
    model = _perturb(GazeNet.from_ir(XML, BIN))
    with pytest.raises(ExportParityError) as info:
        export_onnx(model, out, card=CARD)
    assert info.value.max_error > 1e-3
    assert not out.exists() and not card_path_for(out).exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "out" not in p.parts) == [
        b for b in before if "out" not in b.parts
    ]
    assert [e.version for e in reg.list()] == [1]

    # With the same substitution, the pretrained weights DO pass: the gate is not just "fail".
    good = export_onnx(GazeNet.from_ir(XML, BIN), tmp_path / "out" / "good.onnx", card=CARD)
    assert read_card(card_path_for(good)).parity_max_error <= 1e-4


def test_bad_card_fails_before_exporting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _need_shared()

    def no_export(*_a, **_k):
        raise AssertionError("the slow export ran for an invalid card")

    monkeypatch.setattr(ex, "_torch_to_onnx", no_export)
    model = GazeNet.from_ir(XML, BIN)
    for card in ({"model_id": "../escape"}, {"model_id": "ok", "unknown_field": 1}, {}):
        with pytest.raises(ValidationError):
            export_onnx(model, tmp_path / "x.onnx", card=card)
    assert list(tmp_path.iterdir()) == []


# -- registry -----------------------------------------------------------------------------


@pytest.mark.slow
def test_registry_versions_go_up_and_skip_damaged(
    exported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.latest() is None and reg.list() == []
    for expected in (1, 2, 3):
        assert reg.register(exported).version == expected
    model_dir = tmp_path / "reg" / "gaze-test"
    assert sorted(p.name for p in model_dir.iterdir()) == ["v0001", "v0002", "v0003"]
    assert [e.version for e in reg.list()] == [1, 2, 3]
    assert reg.get(2).card.version == 2

    # v0003 loses its model (an interrupted hand copy); v0002's card lies about the file.
    (model_dir / "v0003" / "model.onnx").unlink()
    card2 = model_dir / "v0002" / "card.json"
    doc = json.loads(card2.read_text())
    doc["onnx_sha256"] = "f" * 64
    card2.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="gazeloop.trainer.registry"):
        latest = reg.latest()
    assert latest is not None and latest.version == 1
    assert "v0003" in caplog.text and "v0002" in caplog.text
    assert [e.version for e in reg.list()] == [1, 2]  # cheap listing does not hash
    assert [e.version for e in reg.list(verify_hash=True)] == [1]
    with pytest.raises(RegistryError):
        reg.get(3)
    with pytest.raises(RegistryError):
        reg.get(9)

    # Numbers never go back, even past damaged versions; leftovers of a crash are ignored.
    (model_dir / ".tmp-crashed").mkdir()
    (model_dir / "v0004").mkdir()  # empty: a copy that never started
    assert reg.register(exported).version == 5
    assert reg.latest().version == 5


@pytest.mark.slow
def test_registry_refuses_mismatched_card_and_external_data(exported: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    card = read_card(card_path_for(exported))
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(exported))
    proto.doc_string = "changed"
    onnx.save(proto, str(other))
    with pytest.raises(RegistryError, match="sha256"):
        reg.register(other, card)

    split = tmp_path / "split" / "model.onnx"
    split.parent.mkdir()
    onnx.save(proto, str(split), save_as_external_data=True, size_threshold=0)
    with pytest.raises(RegistryError, match="external data"):
        reg.register(split, card.model_copy(update={"onnx_sha256": None}))
    assert not (tmp_path / "reg" / "gaze-test").exists() or reg.list() == []


def _relabelled(exported: Path, dest: Path, model_id: str) -> Path:
    proto = onnx.load(str(exported))
    for p in proto.metadata_props:
        if p.key == "gazeloop.model_id":
            p.value = model_id
    onnx.save(proto, str(dest))
    return dest


@pytest.mark.slow
def test_registry_refuses_a_card_for_another_model(exported: Path, tmp_path: Path) -> None:
    # GazeModel reports the file's own model id: a registry folder must agree with it.
    card = read_card(card_path_for(exported)).model_copy(
        update={"model_id": "gaze-other", "onnx_sha256": None}
    )
    with pytest.raises(RegistryError, match="gazeloop.model_id"):
        ModelRegistry(tmp_path / "reg").register(exported, card)


@pytest.mark.slow
def test_registry_with_several_models_needs_an_id(exported: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    card = read_card(card_path_for(exported))
    reg.register(exported, card)
    other = _relabelled(exported, tmp_path / "other.onnx", "gaze-other")
    reg.register(other, card.model_copy(update={"model_id": "gaze-other", "onnx_sha256": None}))
    assert reg.model_ids() == ["gaze-other", "gaze-test"]
    with pytest.raises(RegistryError, match="several models"):
        reg.latest()
    assert reg.latest("gaze-other").version == 1
    assert isinstance(reg.latest("gaze-test").card, ModelCard)


@pytest.mark.slow
def test_a_full_registry_disk_is_named_as_the_registry_not_the_model(
    exported: Path, tmp_path: Path
) -> None:
    """`shutil.copyfile` blamed its source for the destination's full disk: `export` said
    the model file it had just written (on a disk with room) had no space left."""
    import subprocess

    from gazeloop.calibration.store.atomic import WriteError

    root = tmp_path / "reg"
    root.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(WriteError) as e:
            ModelRegistry(root).register(exported)  # a 7.5 MB model on a 1 MB disk
        assert e.value.filename == str(root / "gaze-test")
        assert str(e.value) == f"cannot write {root / 'gaze-test'}: No space left on device"
        assert [p.name for p in (root / "gaze-test").iterdir()] == []  # no temp left behind
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
