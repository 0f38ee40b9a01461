"""LoRA adapters: `LoRALinear(base)` wrappers, applied and merged by swapping modules
(layer.py), and PEFT adapter files that transformers + peft load too (peft.py). Imports: the
core, quant/ (a quantised base) and checkpoints/ (transformers' module names) only."""

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
