"""Which layers a run trains (`TrainConfig.tune`): all of them, the last block and the head,
or only the head. The rest is frozen by `requires_grad`, so the optimizer never sees it, and
the checkpoint and the ONNX export still hold the whole network.

The groups are read from the network's own program (`GazeNet.spec`), not from a list of
names:
- `head`: every learned module downstream of the last spatial (k > 1) convolution: the fully
  connected part that merges the two eye towers with the head pose. On
  gaze-estimation-adas-0002: conv14 (515 → 320), conv15 (320 → 80), the folded batch norm
  of the 80-d embedding (scale9, shift9) and the gaze output conv16 (80 → 3), all 1×1
  convolutions in the IR.
- `last`: the head plus the last convolution block: the nodes from the second-to-last
  spatial convolution to the last one (conv12 → ReLU → scale8/shift8 → conv13, 64 → 256 →
  512 channels).
- `all`: every parameter (the input normalisation is a buffer and never trains).

The training loss fits its ridge map on the embedding that enters conv16, so with screen
labels only (session folders, label stores) conv16 gets no gradient under any choice; it is
listed in the head because it is one, and it trains where there are gaze-vector labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # torch-free at import: the CLI reads TUNE_CHOICES without the extra
    from torch import nn

Tune = Literal["all", "last", "head"]
TUNE_CHOICES: tuple[str, ...] = get_args(Tune)


def _module(node: dict[str, Any]) -> str | None:
    return node.get("module") or node.get("const")


def _spatial_convs(spec: dict[str, Any]) -> list[int]:
    mods = spec["modules"]
    return [
        i
        for i, n in enumerate(spec["nodes"])
        if n["op"] == "conv" and any(int(k) > 1 for k in mods[n["module"]]["kernel_size"])
    ]


def _ancestors(nodes: list[dict[str, Any]], index: int) -> set[int]:
    """Node indices that feed node `index`, itself included."""
    by_output = {n["output"]: i for i, n in enumerate(nodes)}
    seen, todo = {index}, [index]
    while todo:
        for key in nodes[todo.pop()]["inputs"]:
            j = by_output.get(key)
            if j is not None and j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def _learned(spec: dict[str, Any], indices: set[int]) -> list[str]:
    mods = spec["modules"]
    out = []
    for i in sorted(indices):
        m = _module(spec["nodes"][i])
        if m is not None and mods[m]["type"] != "buffer" and m not in out:
            out.append(m)
    return out


def tuned_modules(spec: dict[str, Any], tune: str) -> list[str]:
    """The learned modules (`GazeNet.layers` names) that `tune` trains, in graph order."""
    if tune not in TUNE_CHOICES:
        raise ValueError(f"tune must be one of {', '.join(TUNE_CHOICES)}, got {tune!r}")
    nodes = spec["nodes"]
    everything = set(range(len(nodes)))
    if tune == "all":
        return _learned(spec, everything)
    spatial = _spatial_convs(spec)
    if len(spatial) < 2:
        raise ValueError("the network has fewer than two spatial convolutions: no backbone")
    backbone = _ancestors(nodes, spatial[-1])
    head = everything - backbone
    if tune == "last":
        block = (backbone - _ancestors(nodes, spatial[-2])) | {spatial[-2]}
        head |= block
    mods = _learned(spec, head)
    if spec.get("head_module") not in mods:
        raise ValueError(f"the gaze head {spec.get('head_module')!r} is not in the {tune} group")
    return mods


def apply_tune(model: nn.Module, tune: str) -> dict[str, Any]:
    """Freeze every parameter outside `tune`'s group (requires_grad); what was chosen, for
    the summary. The model must be a `GazeNet` (its `spec` names the layers)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("tune needs a GazeNet (a model with a spec)")
    names = tuned_modules(spec, tune)
    trained = {f"layers.{m}" for m in names}
    n_trained = n_frozen = 0
    for name, p in model.named_parameters():
        on = name in trained or name.rsplit(".", 1)[0] in trained
        p.requires_grad_(on)
        if on:
            n_trained += p.numel()
        else:
            n_frozen += p.numel()
    return {
        "tune": tune,
        "trained_modules": names,
        "trained_parameters": n_trained,
        "frozen_parameters": n_frozen,
    }


__all__ = ["TUNE_CHOICES", "Tune", "apply_tune", "tuned_modules"]
