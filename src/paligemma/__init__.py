"""Native PyTorch PaliGemma 1 and 2."""

from .checkpoints.hf_config import from_hf_json, to_hf_json
from .checkpoints.load import load_model, save_model
from .checkpoints.names import CheckpointError
from .config import CONFIGS, TINY, ConfigError, PaliGemmaConfig, get_config
from .generate import GenerationConfig
from .kv_cache import KVCache
from .model import PaliGemma, make_attn_mask
from .pipeline import Pipeline, PromptTooLongError, Result, load
from .processor import ImageError, Processor, load_image
from .tasks.objects import (
    DetectedObject,
    ObjectList,
    loc_string,
    mask_to_rle,
    objects_to_suffix,
    parse_objects,
    rle_to_mask,
    seg_string,
)
from .tasks.vqvae import MaskVAE, load_mask_vae, mask_to_codes
from .tokenizer import Tokenizer, TokenizerError

__all__ = [
    "CONFIGS",
    "TINY",
    "CheckpointError",
    "ConfigError",
    "DetectedObject",
    "GenerationConfig",
    "ImageError",
    "KVCache",
    "MaskVAE",
    "ObjectList",
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
    "load_mask_vae",
    "load_model",
    "loc_string",
    "make_attn_mask",
    "mask_to_codes",
    "mask_to_rle",
    "objects_to_suffix",
    "parse_objects",
    "rle_to_mask",
    "save_model",
    "seg_string",
    "to_hf_json",
]
__version__ = "0.1.0"
