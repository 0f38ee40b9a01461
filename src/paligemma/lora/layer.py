"""LoRA: low-rank adapters on chosen linear layers, in PEFT's file format.

`apply_lora_` turns matching linear modules into LoRA modules *in place*: the module keeps its
class's own tensors (so `weight` keeps its name and a base checkpoint still loads) and gains

    lora_A float32[r, in], lora_B float32[out, r];   y = base(x) + B(A(dropout(x))) * alpha / r

B starts at zero, so a fresh adapter leaves the model unchanged. The base may be nn.Linear or a
quantised linear (QLoRA). Adapters save as PEFT does (`adapter_config.json` +
`adapter_model.safetensors` with transformers' module names), so transformers + peft load them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.names import CheckpointError, hf_name_to_ours, our_name_to_hf
from ..config import PaliGemmaConfig
from ..quant.linear import QUANTIZED

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCOPES = {"decoder": ("decoder.",), "vision": ("vision.",), "all": ("decoder.", "vision.")}


class LoRAMixin:
    """Mixed into the class of an existing linear module by `apply_lora_`."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def init_lora(self, rank: int, alpha: float, dropout: float) -> None:
        device = self.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT; B = 0 keeps the model
        self.lora_rank, self.lora_alpha = rank, alpha
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        a = self.lora_dropout(x).to(self.lora_A.dtype)
        delta = (a @ self.lora_A.T) @ self.lora_B.T * self.lora_scale
        return out + delta.to(out.dtype)


_LORA_CLASSES: dict[type, type] = {}


def _lora_class(base: type) -> type:
    if base not in _LORA_CLASSES:
        _LORA_CLASSES[base] = type(f"LoRA{base.__name__}", (LoRAMixin, base), {})
    return _LORA_CLASSES[base]


def _is_target(name: str, module: nn.Module, targets, scope: str) -> bool:
    linear = type(module) is nn.Linear or type(module) in QUANTIZED
    return linear and name.startswith(SCOPES[scope]) and name.rsplit(".", 1)[-1] in targets


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
        module = model.get_submodule(name)
        module.__class__ = _lora_class(type(module))
        module.init_lora(rank, alpha, dropout)
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRAMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRAMixin)}


def merge_lora_(model: nn.Module) -> None:
    """In place: fold every adapter into its weight (quantised bases become nn.Linear)."""
    for name, module in lora_modules(model).items():
        base_cls = type(module).__mro__[2]  # LoRA<Base> -> (LoRAMixin, Base)
        delta = (module.lora_B @ module.lora_A) * module.lora_scale  # (O, I)
        if base_cls in QUANTIZED:
            w = module.dequantize()
            linear = nn.Linear(
                module.in_features, module.out_features, bias=module.bias is not None
            )
            linear = linear.to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                linear.weight.copy_(w + delta.to(w.dtype))
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, linear)
            continue
        with torch.no_grad():
            module.weight += delta.to(module.weight.dtype)
        for attr in ("lora_A", "lora_B", "lora_dropout"):
            delattr(module, attr)
        module.__class__ = base_cls


# ---------------------------------------------------------------------------------------------
# PEFT files


def _hf_module(name: str, cfg: PaliGemmaConfig) -> str:
    """Our module name -> transformers 5.x module path (what PEFT's keys are made of)."""
    legacy = our_name_to_hf(name + ".weight", cfg).removesuffix(".weight")
    for old, new in (
        ("language_model.model.", "model.language_model."),
        ("vision_tower.vision_model.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ):
        if legacy.startswith(old):
            return new + legacy[len(old) :]
    return legacy


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, base: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors, as `peft` writes them."""
    from ..checkpoints.safetensors_io import write_atomic, write_safetensors

    modules = lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA adapters")
    first = next(iter(modules.values()))
    paths = {n: _hf_module(n, model.cfg) for n in modules}
    tensors = {}
    for name, m in modules.items():
        tensors[f"base_model.model.{paths[name]}.lora_A.weight"] = (
            m.lora_A.detach().cpu().contiguous()
        )
        tensors[f"base_model.model.{paths[name]}.lora_B.weight"] = (
            m.lora_B.detach().cpu().contiguous()
        )
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "r": first.lora_rank,
        "lora_alpha": first.lora_alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(paths.values()),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(
        out / "adapter_model.safetensors", lambda p: write_safetensors(tensors, p, {"format": "pt"})
    )
    text = json.dumps(config, indent=2) + "\n"
    write_atomic(out / "adapter_config.json", lambda p: p.write_text(text))


def load_adapter_(model: nn.Module, adapter_dir: str | os.PathLike) -> list[str]:
    """In place: apply the PEFT LoRA adapter in `adapter_dir` (written by us or by peft)."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file() or not (d / "adapter_model.safetensors").is_file():
        raise CheckpointError(
            f"{d} is not a LoRA adapter (adapter_config.json + adapter_model.safetensors)"
        )
    config = json.loads((d / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
        raise CheckpointError(f"{d}: only plain LoRA adapters are supported")
    if (
        config.get("rank_pattern")
        or config.get("alpha_pattern")
        or config.get("bias", "none") != "none"
    ):
        raise CheckpointError(f"{d}: per-module ranks, alphas or biases are not supported")
    tensors = load_file(str(d / "adapter_model.safetensors"))
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        stem, _, kind = (
            key.removeprefix("base_model.model.").removesuffix(".weight").rpartition(".")
        )
        if kind not in ("lora_A", "lora_B") or not stem:
            raise CheckpointError(f"{d}: unexpected tensor {key!r}")
        ours = hf_name_to_ours(stem + ".weight", model.cfg)
        if ours is None:
            raise CheckpointError(f"{d}: adapter on the output head is not supported")
        weights.setdefault(ours.removesuffix(".weight"), {})[kind] = value
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    for name, pair in weights.items():
        module = model.get_submodule(name)
        if type(module) is not nn.Linear and type(module) not in QUANTIZED:
            raise CheckpointError(f"{d}: {name} is not a linear layer")
        if set(pair) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{d}: {name} lacks lora_A or lora_B")
        module.__class__ = _lora_class(type(module))
        module.init_lora(rank, alpha, float(config.get("lora_dropout", 0.0)))
        if (
            pair["lora_A"].shape != module.lora_A.shape
            or pair["lora_B"].shape != module.lora_B.shape
        ):
            raise CheckpointError(f"{d}: {name} adapter shapes do not match the model")
        with torch.no_grad():
            module.lora_A.copy_(pair["lora_A"])
            module.lora_B.copy_(pair["lora_B"])
    return sorted(weights)
