"""Preparing a model for a fine-tuning mode: which parameters train (full, optionally with
the vision tower / projector frozen; the decoder's attention; LoRA adapters over a float or
quantised decoder), gradient checkpointing, and another image resolution (SigLIP's position
table resampled)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..lora import apply_lora_, lora_modules
from ..pipeline import Pipeline
from ..quant.linear import quantize_
from ..siglip import resample_pos_embed


def prepare_(pipe: Pipeline, cfg: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze / adapt the model for `cfg.mode`; returns the trainable parameters by name."""
    model = pipe.model
    if cfg.image_size is not None and cfg.image_size != model.cfg.image_size:
        resize_images_(pipe, cfg.image_size)
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.mode == "qlora":
        quantize_(
            model, cfg.quantize, head=False
        )  # the head stays float: gradients flow through it
    if cfg.mode in ("lora", "qlora"):
        apply_lora_(
            model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, cfg.lora_scope
        )
        for m in lora_modules(model).values():
            m.lora_A.requires_grad_(True)
            m.lora_B.requires_grad_(True)
    elif cfg.mode == "attention":
        for name, p in model.named_parameters():
            if name.startswith("decoder.blocks.") and ".attn." in name:
                p.requires_grad_(True)
    else:
        for name, p in model.named_parameters():
            frozen = (cfg.freeze_vision and name.startswith("vision.")) or (
                cfg.freeze_projector and name.startswith("projector.")
            )
            p.requires_grad_(not frozen)
    model.decoder.checkpointing = model.vision.checkpointing = cfg.checkpointing
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train with these settings")
    return trainable


def resize_images_(pipe: Pipeline, size: int) -> None:
    """In place: run the model at `size` px, resampling SigLIP's position table."""
    model = pipe.model
    new_cfg = dataclasses.replace(model.cfg, image_size=size)
    side = size // model.cfg.vision.patch_size
    with torch.no_grad():
        model.vision.pos_embed = torch.nn.Parameter(
            resample_pos_embed(model.vision.pos_embed, side)
        )
    model.cfg = new_cfg
    pipe.processor.transform = dataclasses.replace(pipe.processor.transform, size=size)
    pipe.processor.num_image_tokens = new_cfg.num_image_tokens
