"""A registered model's card: what it is, where it came from and how good it is (JSON).

Apart from the exporter so that reading cards needs no torch: the registry lists, promotes
and rolls back on a laptop that installed no trainer extra (`gazeloop models list` ended in
a torch traceback there, and so did `run` once a registry folder existed)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gazeloop.fastpath.ir_onnx import OMZ_IO_CONVENTION

EXPORT_BUILDER = "gazeloop.trainer.export/1"
CARD_FORMAT = "gazeloop.model_card"
CARD_SCHEMA_VERSION = 1
# The network definition `trainer.model` builds, which a card names. Bump when the spec
# format, module naming or forward semantics change: checkpoints of another version are
# refused rather than loaded into a different network.
MODEL_VERSION = "gazeloop.trainer.gazenet/1"
# Directory-name safe: model ids become registry folders.
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int | str]
    dtype: str = "float32"
    description: str = ""


class Preprocessing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    descriptor: dict[str, Any] = Field(default_factory=dict)


class TrainingData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary: dict[str, Any] = Field(default_factory=dict)  # sessions, persons, frames, ...
    sha256: str | None = None  # of the training set's manifest, as the trainer computes it


class ModelCard(BaseModel):
    """What a registered model is, where it came from and how good it is (JSON, no pickle)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["gazeloop.model_card"] = CARD_FORMAT
    schema_version: Literal[1] = CARD_SCHEMA_VERSION
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    version: int | None = Field(default=None, ge=1)  # the registry's, set on register()
    created: datetime
    model_version: str = MODEL_VERSION  # the network definition (trainer.model)
    architecture_digest: str | None = None
    io_convention: str = OMZ_IO_CONVENTION
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing
    training_data: TrainingData = Field(default_factory=TrainingData)
    metrics: dict[str, float] = Field(default_factory=dict)
    # The promotion gate's decision and numbers (trainer.gate.GateResult as JSON), when the
    # model went through it; whether it is served is the registry's pointer, not this.
    evaluation: dict[str, Any] | None = None
    parity_max_error: float | None = None
    parent_model_id: str | None = None
    opset: int
    onnx_sha256: str | None = None
    onnx_bytes: int | None = None
    # The checkpoint it was exported from: the ONNX file names its parent, so the same
    # weights exported again after a promotion are other bytes but the same model.
    weights_sha256: str | None = None
    builder: str = EXPORT_BUILDER
    notes: str = ""


def card_path_for(onnx_path: str | Path) -> Path:
    """Where export_onnx writes the card: `<name>.card.json` beside the model."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".card.json")


def read_card(path: str | Path) -> ModelCard:
    return ModelCard.model_validate_json(Path(path).read_bytes())
