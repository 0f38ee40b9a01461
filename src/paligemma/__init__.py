"""Native PyTorch PaliGemma 1 and 2."""

from .checkpoint import load_model, save_model
from .config import CONFIGS, TINY, ConfigError, PaliGemmaConfig, get_config
from .hf_config import from_hf_json, to_hf_json
from .kv_cache import KVCache
from .model import PaliGemma, make_attn_mask
from .weights import CheckpointError

__all__ = [
    "CONFIGS",
    "TINY",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "PaliGemma",
    "PaliGemmaConfig",
    "from_hf_json",
    "get_config",
    "load_model",
    "make_attn_mask",
    "save_model",
    "to_hf_json",
]
__version__ = "0.1.0"
