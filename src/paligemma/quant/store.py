"""The saved form of a quantised model: what quantization.json says, and the model it describes.

A quantised model is saved in our own layout (checkpoints/ writes and reads the files): its state
dict under our tensor names (integer codes as they are) beside QUANT_FILE, which holds

    {"mode": "int8" | "int4", "group": int | null, "modules": [quantised module names]}

`describe(model)` gives that dict (None for a float model); `build_(model, spec)` turns a float
skeleton (e.g. on the meta device) into one whose named modules are the quantised layers, ready
for `load_state_dict`. `decoder.head` names the quantised copy of the tied output head.
"""

from __future__ import annotations

from torch import nn

from ..gemma import TiedHead
from .linear import QUANTIZED, Int4Head, Int4Linear, Int8Head, Int8Linear

QUANT_FILE = "quantization.json"  # marks a checkpoint of a quantised model (our tensor names)
MODES = {"int8": (Int8Linear, Int8Head), "int4": (Int4Linear, Int4Head)}  # (layer, head)


def describe(model: nn.Module) -> dict | None:
    """The QUANT_FILE contents for `model`; None when nothing in it is quantised."""
    quantized = {n: m for n, m in model.named_modules() if type(m) in QUANTIZED}
    if not quantized:
        return None
    int4 = {isinstance(m, Int4Linear) for m in quantized.values()}
    if len(int4) > 1:
        raise ValueError("cannot save a model that mixes int8 and int4 layers")
    first = next(iter(quantized.values()))
    return {
        "mode": "int4" if int4 == {True} else "int8",
        "group": getattr(first, "group", None),
        "modules": sorted(quantized),
    }


def build_(model: nn.Module, spec: dict) -> nn.Module:
    """In place: the modules `spec` names become empty quantised layers of the same shapes (a
    tied head: of the embedding matrix's shape beside it)."""
    if spec.get("mode") not in MODES:
        raise ValueError(f"{QUANT_FILE}: mode must be 'int8' or 'int4', got {spec.get('mode')!r}")
    layer_cls, head_cls = MODES[spec["mode"]]
    options = {"group": spec["group"]} if spec["mode"] == "int4" else {}
    for name in spec["modules"]:
        old = model.get_submodule(name)
        if isinstance(old, TiedHead):
            parent = model.get_submodule(name.rpartition(".")[0])
            vocab, width = parent.embed.weight.shape  # (V, D)
            new = head_cls(width, vocab, False, **options)
        else:
            new = layer_cls(old.in_features, old.out_features, old.bias is not None, **options)
        model.set_submodule(name, new)
    return model
