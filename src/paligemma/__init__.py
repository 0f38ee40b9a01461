"""Native PyTorch PaliGemma 1 and 2."""

from .checkpoint import load_model, save_model
from .config import CONFIGS, TINY, ConfigError, PaliGemmaConfig, get_config
from .generate import GenerationConfig
from .hf_config import from_hf_json, to_hf_json
from .kv_cache import KVCache
from .model import PaliGemma, make_attn_mask
from .pipeline import Pipeline, PromptTooLongError, Result, load
from .processor import ImageError, Processor, load_image
from .tokenizer import Tokenizer, TokenizerError
from .weights import CheckpointError

__all__ = [
    "CONFIGS",
    "TINY",
    "CheckpointError",
    "ConfigError",
    "GenerationConfig",
    "ImageError",
    "KVCache",
    "PaliGemma",
    "PaliGemmaConfig",
    "Pipeline",
    "Processor",
    "PromptTooLongError",
    "Result",
    "Tokenizer",
    "TokenizerError",
    "from_hf_json",
    "get_config",
    "load",
    "load_image",
    "load_model",
    "make_attn_mask",
    "save_model",
    "to_hf_json",
]
__version__ = "0.1.0"
