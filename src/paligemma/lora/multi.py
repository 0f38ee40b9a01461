"""Many LoRA adapters on one base model, chosen per batch row (as S-LoRA / punica serve them).

`Adapters(model, {"detect": DIR, "ocr": DIR})` reads each adapter directory (ours or peft's:
peft.read_adapter) and wraps every layer any of them adapts in a `MultiLoRALinear`, which keeps
the one base layer and every adapter's A and B. Before a forward over a batch, the caller says
which adapter each row uses:

    adapters.select(["detect", None, "ocr", "detect"])   # one entry per row; None = the base
    logits = model(...)                                  # row r gets base(x_r) + its delta

A row's update is computed exactly as `LoRALinear` computes it (y = base(x) + (x A^T) B^T *
alpha / r, in float32, cast back), on the rows of each adapter in turn (a segmented gather:
one pair of matmuls per adapter present in the batch, none for base rows), so a row answers
as `paligemma.load(base, adapter=DIR)` does. The selection holds until the next `select`
(a fresh one: every row the base). Adapters on the vision tower need one image per row when
the rows mix adapters (the tower's batch is the images).

Axes: B rows, S tokens, I in features, O out features, r rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checkpoints.names import CheckpointError
from .layer import BASES
from .peft import read_adapter


@dataclass
class Selection:
    """The rows' adapters, shared by every wrapper: `uniform` when all rows use one (None: the
    base), else `groups` of (adapter, row indices long[k]) over `rows` rows."""

    uniform: str | None = None
    groups: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    rows: int = 0
    mixed: bool = False


@dataclass
class LowRank:
    """One adapter's update for one layer: A float32[r, I], B float32[O, r], scale alpha / r."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., I) -> (..., O) in float32, as LoRALinear.forward computes it."""
        return (x.to(self.A.dtype) @ self.A.T) @ self.B.T * self.scale


class MultiLoRALinear(nn.Module):
    """A base linear layer plus several adapters' low-rank updates, one per row (module doc)."""

    def __init__(self, base: nn.Module, selection: Selection) -> None:
        super().__init__()
        self.base, self.selection = base, selection
        self.in_features, self.out_features = base.in_features, base.out_features
        self.adapters: dict[str, LowRank] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, I) -> (B, S, O)."""
        out = self.base(x)
        sel = self.selection
        if not sel.mixed:
            update = self.adapters.get(sel.uniform) if sel.uniform is not None else None
            return out if update is None else out + update.delta(x).to(out.dtype)
        if x.shape[0] != sel.rows:
            raise ValueError(
                f"{x.shape[0]} rows reach an adapted layer but {sel.rows} were selected "
                "(per-row adapters on the vision tower need one image per row)"
            )
        for name, rows in sel.groups:
            if (update := self.adapters.get(name)) is not None:
                delta = update.delta(x[rows]).to(out.dtype)
                out = (
                    out.index_add(0, rows, delta)
                    if out.requires_grad
                    else out.index_add_(0, rows, delta)
                )
        return out


class Adapters:
    """Named LoRA adapters installed on one base model (module docstring)."""

    def __init__(self, model: nn.Module, dirs: dict[str, str | os.PathLike]) -> None:
        if not dirs:
            raise ValueError("Adapters needs at least one name -> adapter directory")
        self.model, self.selection = model, Selection()
        self.dirs = {name: str(d) for name, d in dirs.items()}
        self.layers: dict[str, MultiLoRALinear] = {}
        for name, d in dirs.items():
            self._add(name, d)

    @property
    def names(self) -> list[str]:
        return list(self.dirs)

    def _add(self, name: str, adapter_dir: str | os.PathLike) -> None:
        config, weights = read_adapter(adapter_dir, self.model.cfg)
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
        for module_name, pair in weights.items():
            layer = self._layer(module_name, adapter_dir)
            device = layer.base.weight.device
            a, b = pair["lora_A"], pair["lora_B"]
            if a.shape != (rank, layer.in_features) or b.shape != (layer.out_features, rank):
                raise CheckpointError(
                    f"{adapter_dir}: {module_name} adapter shapes do not match the model"
                )
            a, b = (t.to(device=device, dtype=torch.float32) for t in (a, b))
            layer.adapters[name] = LowRank(a, b, alpha / rank)

    def _layer(self, module_name: str, adapter_dir) -> MultiLoRALinear:
        """The wrapper on `module_name`, made on first use."""
        if module_name not in self.layers:
            module = self.model.get_submodule(module_name)
            if not isinstance(module, BASES):
                raise CheckpointError(f"{adapter_dir}: {module_name} is not a linear layer")
            wrapper = MultiLoRALinear(module, self.selection)
            self.model.set_submodule(module_name, wrapper)
            self.layers[module_name] = wrapper
        return self.layers[module_name]

    def select(self, row_adapters: list[str | None]) -> None:
        """The adapter of each row of the next forwards (None: the base alone)."""
        unknown = {a for a in row_adapters if a is not None and a not in self.dirs}
        if unknown:
            raise KeyError(f"unknown adapters {sorted(unknown)}; these are {self.names}")
        sel, distinct = self.selection, set(row_adapters)
        sel.rows, sel.mixed = len(row_adapters), len(distinct) > 1
        sel.uniform = next(iter(distinct)) if len(distinct) == 1 else None
        device = next(self.model.parameters()).device
        sel.groups = [
            (
                name,
                torch.tensor([i for i, a in enumerate(row_adapters) if a == name], device=device),
            )
            for name in sorted(a for a in distinct if a is not None)
        ]
