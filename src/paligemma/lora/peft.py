"""LoRA adapters in PEFT's file format: `adapter_config.json` + `adapter_model.safetensors` with
transformers' module names, so transformers + peft load ours and we load theirs (plain LoRA)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.names import CheckpointError, hf_name_to_ours, our_name_to_hf
from ..config import PaliGemmaConfig
from .layer import BASES, lora_modules, wrap_


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


def read_adapter(
    adapter_dir: str | os.PathLike, cfg: PaliGemmaConfig
) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """A PEFT LoRA adapter directory (written by us or by peft) -> (its adapter_config.json,
    {our module name: {"lora_A": [r, I], "lora_B": [O, r]}}), checked but applied to nothing."""
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
        ours = hf_name_to_ours(stem + ".weight", cfg)
        if ours is None:
            raise CheckpointError(f"{d}: adapter on the output head is not supported")
        weights.setdefault(ours.removesuffix(".weight"), {})[kind] = value
    for name, pair in weights.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{d}: {name} lacks lora_A or lora_B")
    return config, weights


def load_adapter_(model: nn.Module, adapter_dir: str | os.PathLike) -> list[str]:
    """In place: apply the PEFT LoRA adapter in `adapter_dir` (written by us or by peft)."""
    d = Path(adapter_dir)
    config, weights = read_adapter(d, model.cfg)
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    for name, pair in weights.items():
        if not isinstance(model.get_submodule(name), BASES):
            raise CheckpointError(f"{d}: {name} is not a linear layer")
        module = wrap_(model, name, rank, alpha, float(config.get("lora_dropout", 0.0)))
        if (
            pair["lora_A"].shape != module.lora_A.shape
            or pair["lora_B"].shape != module.lora_B.shape
        ):
            raise CheckpointError(f"{d}: {name} adapter shapes do not match the model")
        with torch.no_grad():
            module.lora_A.copy_(pair["lora_A"])
            module.lora_B.copy_(pair["lora_B"])
    return sorted(weights)
