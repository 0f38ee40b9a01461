"""LoRA: low-rank adapters that wrap chosen linear layers.

`apply_lora_` replaces each matching linear module by name with `LoRALinear(base)`, which keeps
the base layer as its submodule `base` and adds

    lora_A float32[r, I], lora_B float32[O, r];   y = base(x) + B(A(dropout(x))) * alpha / r

B starts at zero, so a fresh adapter leaves the model unchanged. The base may be nn.Linear, the
CPU matrix-vector MatVecLinear or a quantised linear (QLoRA). `merge_lora_` replaces each wrapper
by its base with the adapter folded in (a quantised base becomes a float nn.Linear).

Names: the adapter's tensors are `<layer>.lora_A` / `.lora_B`, as before wrapping (training
checkpoints and PEFT files use these); the base's are `<layer>.base.*` while wrapped, and
`<layer>.*` again once merged.

Axes: I in features, O out features, r rank.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..quant.linear import Int4Linear, Int8Linear

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCOPES = {"decoder": ("decoder.",), "vision": ("vision.",), "all": ("decoder.", "vision.")}
BASES = (nn.Linear, Int8Linear, Int4Linear)  # what LoRA wraps (subclasses too: MatVecLinear)


class LoRALinear(nn.Module):
    """A linear layer `base` plus a low-rank update (module docstring)."""

    def __init__(
        self, base: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT; B = 0 keeps the model
        self.lora_rank, self.lora_alpha = rank, alpha
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., I) -> (..., O)."""
        out = self.base(x)
        a = self.lora_dropout(x).to(self.lora_A.dtype)
        delta = (a @ self.lora_A.T) @ self.lora_B.T * self.lora_scale  # (..., O)
        return out + delta.to(out.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base with the adapter folded into its weight (in place for a float base; a
        quantised base gives a new float nn.Linear from its dequantised weight)."""
        delta = (self.lora_B @ self.lora_A) * self.lora_scale  # (O, I)
        base = self.base
        if isinstance(base, nn.Linear):
            base.weight += delta.to(base.weight.dtype)
            return base
        w = base.dequantize()
        linear = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None)
        linear = linear.to(device=w.device, dtype=w.dtype)
        linear.weight.copy_(w + delta.to(w.dtype))
        if base.bias is not None:
            linear.bias.copy_(base.bias)
        return linear.train(self.training)


def _is_target(name: str, module: nn.Module, targets, scope: str) -> bool:
    in_scope = name.startswith(SCOPES[scope]) and name.rsplit(".", 1)[-1] in targets
    return in_scope and isinstance(module, BASES)


def wrap_(model: nn.Module, name: str, rank: int, alpha: float, dropout: float) -> LoRALinear:
    """In place: the layer `name` becomes LoRALinear(layer); returns the wrapper."""
    wrapper = LoRALinear(model.get_submodule(name), rank, alpha, dropout)
    model.set_submodule(name, wrapper)
    return wrapper


def apply_lora_(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    scope: str = "decoder",
) -> list[str]:
    """In place: LoRA on every linear named like `targets` (leaf names) within `scope`
    ("decoder", "vision" or "all"). Returns the adapted module names."""
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError("LoRA needs rank >= 1, alpha > 0 and 0 <= dropout < 1")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}")
    names = [n for n, m in model.named_modules() if _is_target(n, m, targets, scope)]
    if not names:
        raise ValueError(f"no linear layer named {list(targets)} in scope {scope!r}")
    for name in names:
        wrap_(model, name, rank, alpha, dropout)
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora_(model: nn.Module) -> None:
    """In place: every LoRALinear is replaced by its merged base (quantised bases become
    nn.Linear)."""
    for name, module in lora_modules(model).items():
        model.set_submodule(name, module.merged())
