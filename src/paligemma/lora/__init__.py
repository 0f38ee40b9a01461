"""LoRA adapters: `LoRALinear(base)` wrappers, applied and merged by swapping modules
(layer.py), PEFT adapter files that transformers + peft load too (peft.py), and many adapters
on one base chosen per batch row (multi.py: `Adapters`). Imports: the
core, quant/ (a quantised base) and checkpoints/ (transformers' module names) only."""

from .layer import DEFAULT_TARGETS, LoRALinear, apply_lora_, lora_modules, merge_lora_
from .multi import Adapters, MultiLoRALinear
from .peft import load_adapter_, read_adapter, save_adapter

__all__ = [
    "DEFAULT_TARGETS",
    "Adapters",
    "LoRALinear",
    "MultiLoRALinear",
    "apply_lora_",
    "load_adapter_",
    "lora_modules",
    "merge_lora_",
    "read_adapter",
    "save_adapter",
]
