"""The saved form of a quantised model: what quantization.json says, and the model it describes.

A quantised model is saved in our own layout (checkpoints/ writes and reads the files): its state
dict under our tensor names (integer codes as they are) beside QUANT_FILE, which holds

    {"mode": "int8" | "int4", "group": int | null, "modules": [quantised module names]}

`describe(model)` gives that dict (None for a float model); `build_(model, spec)` turns a float
skeleton (e.g. on the meta device) into one whose named modules are the quantised layers, ready
for `load_state_dict`. `decoder.head` names the quantised copy of the tied output head;
`decoder.embed`, an embedding that looks up the head's int8 codes (no tensor of its own; a
model saved without it keeps the float embedding, as int8 models did before).

Quantising a float checkpoint as it is read (checkpoints/ calls these; the whole model never
exists in 16 or 32 bits): `plan(skeleton, mode)` is the spec that `linear.quantize_` would
produce, and `entries(name, tensor, spec)` turns one float tensor into the tensors the quantised
model holds under that name (codes and scales; the embedding also yields the head's copy).
"""

from __future__ import annotations

import torch
from torch import nn

from ..gemma import TiedHead
from .codes import quantize_weight
from .linear import (
    LOOKUP_MODES,
    QUANTIZED,
    Int4Head,
    Int4Linear,
    Int8Embedding,
    Int8Head,
    Int8Linear,
    targets,
)

QUANT_FILE = "quantization.json"  # marks a checkpoint of a quantised model (our tensor names)
HEAD, EMBED = "decoder.head", "decoder.embed.weight"  # the tied head and the matrix it copies
LOOKUP = "decoder.embed"  # the embedding module; listed: it reads the int8 head's codes
MODES = {"int8": (Int8Linear, Int8Head), "int4": (Int4Linear, Int4Head)}  # (layer, head)


def describe(model: nn.Module) -> dict | None:
    """The QUANT_FILE contents for `model`; None when nothing in it is quantised."""
    quantized = {n: m for n, m in model.named_modules() if type(m) in QUANTIZED}
    if not quantized:
        return None
    lookups = [n for n, m in model.named_modules() if isinstance(m, Int8Embedding)]
    int4 = {isinstance(m, Int4Linear) for m in quantized.values()}
    if len(int4) > 1:
        raise ValueError("cannot save a model that mixes int8 and int4 layers")
    first = next(iter(quantized.values()))
    return {
        "mode": "int4" if int4 == {True} else "int8",
        "group": getattr(first, "group", None),
        "modules": sorted([*quantized, *lookups]),
    }


def build_(model: nn.Module, spec: dict) -> nn.Module:
    """In place: the modules `spec` names become empty quantised layers of the same shapes (a
    tied head: of the embedding matrix's shape beside it)."""
    if spec.get("mode") not in MODES:
        raise ValueError(f"{QUANT_FILE}: mode must be 'int8' or 'int4', got {spec.get('mode')!r}")
    layer_cls, head_cls = MODES[spec["mode"]]
    options = {"group": spec["group"]} if spec["mode"] == "int4" else {}
    for name in spec["modules"]:
        if name == LOOKUP:
            continue  # after the head it reads
        old = model.get_submodule(name)
        if isinstance(old, TiedHead):
            parent = model.get_submodule(name.rpartition(".")[0])
            vocab, width = parent.embed.weight.shape  # (V, D)
            new = head_cls(width, vocab, False, **options)
        else:
            new = layer_cls(old.in_features, old.out_features, old.bias is not None, **options)
        model.set_submodule(name, new)
    if LOOKUP in spec["modules"]:
        head = model.get_submodule(HEAD)
        if not isinstance(head, Int8Head):
            raise ValueError(f"{QUANT_FILE}: {LOOKUP!r} needs an int8 {HEAD!r} in the modules")
        model.set_submodule(LOOKUP, Int8Embedding(head))
    return model


def plan(model: nn.Module, mode: str, group: int = 64) -> dict:
    """The spec of `linear.quantize_(model, mode, group=group)` (defaults: the decoder's linears
    and the tied head), read from a float skeleton without touching a tensor."""
    if mode not in MODES:
        raise ValueError(f"quantize must be 'int8' or 'int4', got {mode!r}")
    names = targets(model)
    if isinstance(getattr(getattr(model, "decoder", None), "head", None), TiedHead):
        names += [HEAD, LOOKUP] if mode in LOOKUP_MODES else [HEAD]  # as quantize_ does
    return {"mode": mode, "group": group if mode == "int4" else None, "modules": sorted(names)}


def dropped(name: str, spec: dict | None) -> bool:
    """The float tensor `name` is read only to be quantised (entries() keeps none of it), so a
    loader may read it into a reused buffer."""
    module, _, leaf = name.rpartition(".")
    return spec is not None and leaf == "weight" and module in spec["modules"]


def entries(name: str, t: torch.Tensor, spec: dict | None) -> dict[str, torch.Tensor]:
    """The quantised model's tensors for the float tensor `name` (our tensor names): a quantised
    layer's weight becomes its codes and scale, the embedding gives the head's codes and scale
    (and stays, unless its lookups read those codes); anything else (or spec None) stays."""
    if spec is None:
        return {name: t}
    module = name.rpartition(".")[0]
    group = spec["group"] or 64
    if name == EMBED and HEAD in spec["modules"]:
        out = {} if dropped(name, spec) else {name: t}
        out[f"{HEAD}.weight"], out[f"{HEAD}.scale"] = quantize_weight(t, spec["mode"], group)
        return out
    if dropped(name, spec):
        codes, scale = quantize_weight(t, spec["mode"], group)
        return {name: codes, f"{module}.scale": scale}
    return {name: t}
