"""From a finished run to the registry: export the best checkpoint, judge it against its
parent with the promotion gate, register it with the gate's evaluation, promote it only if
the gate says so.

The parent is what the candidate would replace: the registry's promoted version of the model
id when there is one (what the fast path serves now), else the model the run started from
(`init`, or the stock network). Every candidate is registered, promoted or not, so a person
can still look at it and promote it by hand (`gazeloop models promote`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from gazeloop.fastpath.models import sha256_file
from gazeloop.trainer.config import TrainConfig
from gazeloop.trainer.export import export_onnx
from gazeloop.trainer.gate import GateResult, judge
from gazeloop.trainer.model import load_checkpoint, read_checkpoint_info
from gazeloop.trainer.registry import ModelRegistry, ServedChanged

log = logging.getLogger(__name__)

STOCK_ID = "gaze-estimation-adas-0002-onnx"


def card_metrics(best_checkpoint: Path) -> dict[str, float]:
    """The validation numbers of the exported (best) checkpoint, not of the last epoch."""
    extra = read_checkpoint_info(best_checkpoint).get("extra", {})
    out = {}
    for key, name in (
        ("val_px", "val_error_px"),
        ("val_pct_diag", "val_error_pct_diag"),
        ("val_baseline_pct_diag", "val_baseline_pct_diag"),
        ("val_deg", "val_error_deg"),
        ("step", "best_step"),
    ):
        v = extra.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            out[name] = float(v)
    return out


def parent_model(
    cfg: TrainConfig, registry: ModelRegistry, model_id: str
) -> tuple[Path, str, str, int | None]:
    """(ONNX path, description, parent model id, the registry version served then: None
    when nothing is) of what the candidate must beat."""
    entry = registry.promoted(model_id) if (registry.root / model_id).is_dir() else None
    if entry is not None:
        return entry.onnx_path, f"{model_id} v{entry.version} (promoted)", model_id, entry.version
    if cfg.init is not None:
        out = Path(cfg.out_dir) / "gate" / "parent.onnx"
        export_onnx(load_checkpoint(cfg.init), out, card={"model_id": "parent"})
        return out, f"the run's init {cfg.init}", "parent", None
    from gazeloop.fastpath import models

    path = models.resolve_gaze_onnx(cfg.fastpath.gaze_model)
    return path, f"the stock model ({path})", STOCK_ID, None


def ship(
    cfg: TrainConfig,
    best_checkpoint: Path,
    registry_root: Path,
    model_id: str,
    *,
    training_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, judge, register, maybe promote; what happened as a JSON-ready dict."""
    registry = ModelRegistry(registry_root)
    weights = sha256_file(best_checkpoint)
    same = already_registered(registry, model_id, weights)
    if same is not None:
        return same
    parent, parent_desc, parent_id, judged_against = parent_model(cfg, registry, model_id)
    card = {
        "model_id": model_id,
        "parent_model_id": parent_id,
        "weights_sha256": weights,
        "metrics": card_metrics(best_checkpoint),
        "training_data": {"summary": training_summary or {}},
    }
    onnx = export_onnx(
        load_checkpoint(best_checkpoint), best_checkpoint.with_suffix(".onnx"), card=card
    )
    try:
        gate: GateResult = judge(
            parent,
            onnx,
            cfg.holdout,
            cfg.fastpath,
            z=cfg.gate_z,
            min_gain_pct=cfg.gate_min_gain_pct,
        )
    except (ValueError, OSError) as e:  # a held-out session that cannot be scored
        gate = GateResult(promoted=False, reason=f"could not judge: {e}", candidate=str(onnx))
    gate = gate.model_copy(update={"parent": parent_desc, "parent_version": judged_against})
    from gazeloop.trainer.card import card_path_for, read_card

    final = read_card(card_path_for(onnx)).model_copy(
        update={"evaluation": gate.model_dump(mode="json")}
    )
    entry = registry.register(onnx, final)
    promoted, not_promoted = gate.promoted, None
    if promoted:
        try:
            registry.promote(
                entry.version, model_id, reason=f"gate: {gate.reason}", expected=judged_against
            )
        except ServedChanged as e:
            log.warning("%s; to serve it anyway: gazeloop models promote %d", e, entry.version)
            promoted, not_promoted = False, str(e)
    served = registry.promoted(model_id)
    out = {
        "onnx": str(onnx),
        "registered": str(entry.onnx_path),
        "version": entry.version,
        "promoted": promoted,
        "served_version": None if served is None else served.version,
        "gate": gate.model_dump(mode="json"),
    }
    if not_promoted is not None:
        out["not_promoted"] = not_promoted
    return out


def already_registered(registry: ModelRegistry, model_id: str, weights: str) -> dict | None:
    """What `ship` returns for a model the registry already holds, by the sha256 of the
    checkpoint it was exported from (a `--resume --export` relaunch of a run that had
    finished; its ONNX bytes differ once the gate promoted the first export, which became
    the parent it names): no second version, and no second gate run that could decide
    otherwise on the same weights. None when it is new."""
    if not (registry.root / model_id).is_dir():
        return None
    entry = next((e for e in registry.list(model_id) if e.card.weights_sha256 == weights), None)
    if entry is None:
        return None
    gate = dict(entry.card.evaluation or {"promoted": False, "reason": "not judged"})
    finished = _finish_promotion(registry, model_id, entry.version, gate)
    served = registry.promoted(model_id)
    gate["reason"] = (
        f"already registered as v{entry.version} (the same checkpoint), not registered or "
        f"judged again; its gate said: {gate.get('reason') or 'nothing'}{finished}"
    )
    return {
        "onnx": str(entry.onnx_path),
        "registered": str(entry.onnx_path),
        "version": entry.version,
        "already_registered": True,
        "promoted": served is not None and served.version == entry.version,
        "served_version": None if served is None else served.version,
        "gate": gate,
    }


def _finish_promotion(registry: ModelRegistry, model_id: str, version: int, gate: dict) -> str:
    """A version its gate passed but that was never promoted (the run was stopped between
    registering and promoting it) is promoted now, if what it was judged against is still
    what is served; → what was done, for the gate's reason ("" when nothing was to do)."""
    if not gate.get("promoted") or any(
        h.get("version") == version and not h.get("rollback") for h in registry.promotions(model_id)
    ):
        return ""  # refused, or promoted once (and maybe rolled back by a person since)
    if "parent_version" not in gate:  # registered before that was recorded
        return f"; never promoted (to serve it: gazeloop models promote {version})"
    try:
        registry.promote(
            version,
            model_id,
            reason=f"gate: {gate.get('reason')} (promoted on a relaunch)",
            expected=gate["parent_version"],
        )
    except ServedChanged as e:
        return f"; not promoted on this relaunch either ({e}; gazeloop models promote {version})"
    return "; it had not been promoted, and is now"


__all__ = ["already_registered", "card_metrics", "parent_model", "ship"]
