"""Presets, parameter counts, and reading / writing transformers config.json (4.x and 5.x)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import paligemma
from paligemma import CONFIGS, ConfigError, PaliGemma, from_hf_json, to_hf_json

# Parameter counts of transformers 5.23 models built on the meta device (cross-checked with
# keras-hub's published counts for the 257152-row vocabulary).
PUBLISHED_COUNTS = {
    "paligemma-3b-224": 2_923_466_480,
    "paligemma-3b-448": 2_924_351_216,
    "paligemma-3b-896": 2_927_890_160,
    "paligemma2-3b-224": 3_032_242_416,
    "paligemma2-3b-448": 3_033_127_152,
    "paligemma2-3b-896": 3_036_666_096,
    "paligemma2-10b-224": 9_662_638_832,
    "paligemma2-10b-448": 9_663_523_568,
    "paligemma2-10b-896": 9_667_062_512,
    "paligemma2-28b-224": 27_650_487_024,
    "paligemma2-28b-448": 27_651_371_760,
    "paligemma2-28b-896": 27_654_910_704,
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_matches_transformers(name):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    cfg = CONFIGS[name]
    with torch.device("meta"):
        ours = PaliGemma(cfg)
        theirs = PaliGemmaForConditionalGeneration(PaliGemmaConfig(**to_hf_json(cfg)))
    assert count(ours) == count(theirs) == PUBLISHED_COUNTS[name]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_json_round_trip(name):
    """ours -> config.json -> ours, directly and through transformers' own (5.x) serialisation."""
    from transformers import PaliGemmaConfig

    cfg = CONFIGS[name]
    assert from_hf_json(to_hf_json(cfg)) == cfg
    assert from_hf_json(PaliGemmaConfig(**to_hf_json(cfg)).to_dict()) == cfg


# A config.json in the 4.x style of the published paligemma-3b-pt-224: missing keys (head_dim,
# rms_norm_eps, image_size, layer_norm_eps, ...) take transformers' class defaults.
CONFIG_4X = {
    "_name_or_path": "",
    "architectures": ["PaliGemmaForConditionalGeneration"],
    "bos_token_id": 2,
    "eos_token_id": 1,
    "hidden_size": 2048,
    "ignore_index": -100,
    "image_token_index": 257152,
    "model_type": "paligemma",
    "pad_token_id": 0,
    "projection_dim": 2048,
    "text_config": {
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "model_type": "gemma",
        "num_attention_heads": 8,
        "num_hidden_layers": 18,
        "num_image_tokens": 256,
        "num_key_value_heads": 1,
        "torch_dtype": "float32",
        "vocab_size": 257216,
    },
    "torch_dtype": "float32",
    "transformers_version": "4.41.0.dev0",
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "num_image_tokens": 256,
        "patch_size": 14,
        "projection_dim": 2048,
        "projector_hidden_act": "gelu_fast",
        "vision_use_head": False,
    },
}


def test_4x_config_layout():
    from transformers import PaliGemmaConfig

    assert from_hf_json(CONFIG_4X) == CONFIGS["paligemma-3b-224"]
    # transformers reads the same file the same way (its 5.x re-serialisation agrees).
    assert from_hf_json(PaliGemmaConfig(**CONFIG_4X).to_dict()) == CONFIGS["paligemma-3b-224"]


def test_4x_gemma2_config_with_old_spellings():
    cfg = to_hf_json(CONFIGS["paligemma2-10b-448"])
    text = cfg["text_config"]
    text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]
    text["sliding_window_size"] = text.pop("sliding_window")
    del text["layer_types"]
    text |= {"cache_implementation": "hybrid", "hidden_act": "gelu_pytorch_tanh"}
    assert from_hf_json(cfg) == CONFIGS["paligemma2-10b-448"]


def test_custom_layer_pattern_is_kept():
    cfg = to_hf_json(CONFIGS["paligemma2-3b-224"])
    types = ["full_attention"] * 26
    types[5] = "sliding_attention"
    cfg["text_config"]["layer_types"] = types
    parsed = from_hf_json(cfg)
    assert parsed.text.layer_is_local == tuple(i == 5 for i in range(26))
    assert to_hf_json(parsed)["text_config"]["layer_types"] == types


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("text_config", "num_experts", 8, "unknown key"),
        ("vision_config", "use_cls_token", True, "unknown key"),
        (None, "mm_tokens_per_image", 64, "unknown key"),
        ("text_config", "rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_scaling"),
        ("text_config", "attention_bias", True, "attention_bias"),
        ("text_config", "hidden_activation", "relu", "activation"),
        ("vision_config", "vision_use_head", True, "vision_use_head"),
        ("text_config", "model_type", "llama", "model_type"),
        (None, "projection_dim", 1024, "projection_dim"),
    ],
)
def test_architecture_changing_keys_are_errors(section, key, value, message):
    cfg = to_hf_json(CONFIGS["paligemma-3b-224"])
    (cfg if section is None else cfg[section])[key] = value
    with pytest.raises(ConfigError, match=message):
        from_hf_json(cfg)


def test_presets_and_derived_values():
    assert len(CONFIGS) == 12
    c = CONFIGS["paligemma2-28b-896"]
    assert c.num_image_tokens == 4096 and c.text.query_scale == 144**-0.5
    assert c.text.layer_is_local[:4] == (True, False, True, False)
    assert CONFIGS["paligemma-3b-448"].num_image_tokens == 1024
    assert not CONFIGS["paligemma-3b-224"].is_v2 and CONFIGS["paligemma2-3b-224"].is_v2
    with pytest.raises(ConfigError, match="unknown preset"):
        paligemma.get_config("paligemma3-1b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.image_size = 448
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        dataclasses.replace(c, image_size=450)
