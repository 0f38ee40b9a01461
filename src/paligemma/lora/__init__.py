"""LoRA adapters: the wrapper layer and its surgery (layer.py), PEFT adapter files (peft.py)."""

from .layer import DEFAULT_TARGETS, LoRALinear, apply_lora_, lora_modules, merge_lora_
from .peft import load_adapter_, save_adapter

__all__ = [
    "DEFAULT_TARGETS",
    "LoRALinear",
    "apply_lora_",
    "load_adapter_",
    "lora_modules",
    "merge_lora_",
    "save_adapter",
]
