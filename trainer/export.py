"""Export a trained GazeNet to ONNX for the fast path, with a parity check and a model card.

The file must be something `fastpath.gaze_model.GazeModel` runs unchanged: the OMZ input and
output names and meanings (tagged with the same `gazeloop.io_convention` as the IR rebuild),
a dynamic batch, and ONE file: GazeModel hands onnxruntime the file's bytes, so weights in a
`.onnx.data` side file would not be found. torch's exporter is asked for a single file and
the result is checked for external data anyway.

Nothing is written unless onnxruntime reproduces PyTorch to `PARITY_TOL` on fixed inputs;
the model and its card are then written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.fastpath import features as _features
from gazeloop.fastpath.ir_onnx import EMBEDDING_OUTPUT, OMZ_INPUTS, OMZ_IO_CONVENTION, OMZ_OUTPUT
from gazeloop.trainer.card import (
    EXPORT_BUILDER,
    MODEL_VERSION,
    ModelCard,
    Preprocessing,
    TensorSpec,
    TrainingData,
    card_path_for,
    read_card,
)
from gazeloop.trainer.model import GazeNet, spec_digest

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4


class ExportParityError(RuntimeError):
    """onnxruntime and PyTorch disagree on the exported model; nothing was written."""

    def __init__(self, max_error: float, tol: float) -> None:
        self.max_error, self.tol = max_error, tol
        super().__init__(
            f"exported ONNX differs from PyTorch by {max_error:.3g} (> {tol:.1g}); not written"
        )


# -- preprocessing descriptor --------------------------------------------------------------


def preprocessing_descriptor() -> dict[str, Any]:
    """What the crops fed to the model are, from fastpath's own constants: a model trained on
    other crops must not be served through this pipeline unnoticed."""
    return {
        "crop_px": int(_features.CROP),
        "crop_scale": float(_features.CROP_SCALE),
        "crop": "square of crop_scale x eye-corner distance about the corner midpoint, "
        "rotated by head roll, bilinear, edge replicated",
        "pixels": "BGR float 0-255, NCHW, unnormalised (the graph normalises)",
        "left_eye_image": "image-left eye (the person's right eye)",
        "head_pose_angles": "OMZ degrees: yaw, -pitch (ours), roll fed as 0 (crops roll-aligned)",
    }


def preprocessing_version() -> str:
    """fastpath's PREPROCESSING_VERSION if it defines one, else a digest of the descriptor
    (which at least changes when a crop constant does)."""
    explicit = getattr(_features, "PREPROCESSING_VERSION", None)
    if explicit is not None:
        return str(explicit)
    digest = hashlib.sha256(
        json.dumps(preprocessing_descriptor(), sort_keys=True).encode()
    ).hexdigest()
    return f"fastpath.features/{digest[:12]}"


# -- the model card ------------------------------------------------------------------------


def _io_specs(embedding_dim: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    left, right, head = OMZ_INPUTS
    inputs = [
        TensorSpec(name=left, shape=["N", 3, 60, 60], description="image-left eye, BGR 0-255"),
        TensorSpec(name=right, shape=["N", 3, 60, 60], description="image-right eye, BGR 0-255"),
        TensorSpec(name=head, shape=["N", 3], description="OMZ head pose, degrees"),
    ]
    outputs = [
        TensorSpec(name=OMZ_OUTPUT, shape=["N", 3], description="OMZ gaze vector, not unit"),
        TensorSpec(
            name=EMBEDDING_OUTPUT,
            shape=["N", embedding_dim],
            description="activation entering the gaze head",
        ),
    ]
    return inputs, outputs


# -- export --------------------------------------------------------------------------------


def _torch_to_onnx(model: GazeNet, opset: int) -> onnx.ModelProto:
    """torch.export-based ONNX (torch's default exporter; needs onnxscript) in memory."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "ONNX export needs onnxscript (torch's exporter uses it): "
            "pip install 'gazeloop[trainer]'"
        ) from exc
    example = (
        torch.zeros(2, 3, 60, 60),
        torch.zeros(2, 3, 60, 60),
        torch.zeros(2, 3),
    )
    batch = torch.export.Dim("N", min=1, max=1 << 16)
    with warnings.catch_warnings():
        # torch's exporter warns about internals (dim naming, pytree deprecations) that say
        # nothing about this model; real failures raise.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            None,
            dynamo=True,
            external_data=False,
            input_names=list(OMZ_INPUTS),
            output_names=[OMZ_OUTPUT, EMBEDDING_OUTPUT],
            opset_version=opset,
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _finalise(proto: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(
                f"exported initializer {t.name!r} lives in an external data file; "
                "GazeModel needs a single-file model"
            )
    # The oldest IR version the opsets allow, as fastpath.ir_onnx does, so the older
    # onnxruntime releases the project supports still load the file.
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    del proto.metadata_props[:]
    helper.set_model_props(proto, metadata)
    proto.producer_name = "gazeloop"
    proto.producer_version = EXPORT_BUILDER
    onnx.checker.check_model(proto, full_check=True)
    return proto


def parity_inputs(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed random crops (0-255) and head poses (±40 deg) for the parity check."""
    rng = np.random.default_rng(seed)
    left = rng.uniform(0, 255, (n, 3, 60, 60)).astype(np.float32)
    right = rng.uniform(0, 255, (n, 3, 60, 60)).astype(np.float32)
    head = rng.uniform(-40, 40, (n, 3)).astype(np.float32)
    return left, right, head


def parity_error(model: GazeNet, onnx_bytes: bytes, *, n: int = 4) -> float:
    """Max |onnxruntime − PyTorch| over gaze_vector and embedding, at batch n and batch 1
    (the fast path runs batch 1; a broken dynamic batch shows up there)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    left, right, head = parity_inputs(n)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = [
                t.detach().cpu().numpy()
                for t in model(
                    torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(head)
                )
            ]
    finally:
        model.train(was_training)
    worst = 0.0
    for sl in (slice(0, n), slice(0, 1)):
        feed = dict(zip(OMZ_INPUTS, (left[sl], right[sl], head[sl]), strict=True))
        outs = sess.run([OMZ_OUTPUT, EMBEDDING_OUTPUT], feed)
        for got, want in zip(outs, ref, strict=True):
            if got.shape != want[sl].shape:
                return float("inf")
            err = float(np.max(np.abs(got.astype(np.float64) - want[sl])))
            worst = max(worst, err if np.isfinite(err) else float("inf"))
    return worst


def _trainer_version() -> str:
    try:
        pkg = importlib.metadata.version("gazeloop")
    except importlib.metadata.PackageNotFoundError:
        pkg = "unknown"
    return f"gazeloop {pkg}; {MODEL_VERSION}"


def export_onnx(
    model: GazeNet,
    out_path: str | Path,
    *,
    opset: int = 17,
    card: dict[str, Any],
    tol: float = PARITY_TOL,
) -> Path:
    """Export `model` to `out_path` (single-file ONNX) and its card to
    `card_path_for(out_path)`; returns `out_path`.

    `card` gives at least `model_id`; optional `training_data`, `metrics`,
    `parent_model_id`, `notes`, `created`. Inputs/outputs, preprocessing, parity error,
    hashes and versions are filled in here. Raises ExportParityError (and writes nothing)
    when onnxruntime and PyTorch differ by more than `tol`.
    """
    out_path = Path(out_path)
    draft = _draft_card(model, card, opset)  # bad card input fails before the slow export
    cpu_model = _cpu_copy(model)
    metadata = _onnx_metadata(draft)
    proto = _finalise(_torch_to_onnx(cpu_model.eval(), opset), metadata)
    data = proto.SerializeToString()  # one blob: never an external-data side file

    err = parity_error(cpu_model, data)
    log.info("export parity %s: max |ort - torch| = %.3g", draft.model_id, err)
    if not err <= tol:
        raise ExportParityError(err, tol)

    final = draft.model_copy(
        update={
            "parity_max_error": err,
            "onnx_sha256": hashlib.sha256(data).hexdigest(),
            "onnx_bytes": len(data),
        }
    )
    _write_model_and_card(out_path, data, final)
    return out_path


def _draft_card(model: GazeNet, card: dict[str, Any], opset: int) -> ModelCard:
    """Everything the card can say before the export, so the export only adds what it
    measures (parity error, hash, size)."""
    fields = dict(card)
    inputs, outputs = _io_specs(model.embedding_dim)
    fields.setdefault("created", datetime.now(UTC))
    fields.update(
        version=None,  # the registry numbers versions
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(
            version=preprocessing_version(), descriptor=preprocessing_descriptor()
        ),
        opset=opset,
        model_version=MODEL_VERSION,
        architecture_digest=spec_digest(model.spec),
        io_convention=OMZ_IO_CONVENTION,
        builder=EXPORT_BUILDER,
    )
    return ModelCard.model_validate(fields)


def _cpu_copy(model: GazeNet) -> GazeNet:
    """A float32 CPU copy to export and check: the caller's model stays where it trains
    (e.g. bf16 on CUDA)."""
    cpu_model = GazeNet(model.spec)
    cpu_model.load_state_dict(
        {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    )
    return cpu_model


def _onnx_metadata(draft: ModelCard) -> dict[str, str]:
    """What the ONNX file says about itself, so the fast path can check a model without its
    card (the io convention above all)."""
    return {
        "gazeloop.model_id": draft.model_id,
        "gazeloop.io_convention": OMZ_IO_CONVENTION,
        "gazeloop.builder": EXPORT_BUILDER,
        "gazeloop.trainer_version": _trainer_version(),
        "gazeloop.model_version": MODEL_VERSION,
        "gazeloop.preprocessing": draft.preprocessing.version,
        "gazeloop.parent_model_id": draft.parent_model_id or "",
    }


def _write_model_and_card(out_path: Path, data: bytes, final: ModelCard) -> None:
    """Card after model, each written atomically: a card present means its model is
    complete (its hash says which)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    card_path = card_path_for(out_path)
    atomic_write_bytes(out_path, data)
    atomic_write_bytes(card_path, final.model_dump_json(indent=2).encode())


__all__ = [
    "EXPORT_BUILDER",
    "PARITY_TOL",
    "ExportParityError",
    "ModelCard",
    "Preprocessing",
    "TensorSpec",
    "TrainingData",
    "card_path_for",
    "export_onnx",
    "parity_error",
    "parity_inputs",
    "preprocessing_descriptor",
    "preprocessing_version",
    "read_card",
]
