"""transformers `config.json` <-> our config, in both the 4.x and 5.x layouts.

The only module that knows transformers' field names (`hidden_size`, `num_hidden_layers`, ...).
Missing keys take the defaults of transformers' own config classes, as transformers does; keys we
do not know and cannot prove harmless are an error, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from ..config import MAX_SEQ_LEN, ConfigError, GemmaConfig, PaliGemmaConfig, SiglipConfig

# Keys every transformers config may carry that do not change the computation.
_GENERIC_KEYS = frozenset(
    """_name_or_path architectures transformers_version dtype torch_dtype output_hidden_states
    output_attentions return_dict use_return_dict torchscript chunk_size_feed_forward
    is_encoder_decoder is_decoder add_cross_attention cross_attention_hidden_size
    tie_encoder_decoder id2label label2id problem_type finetuning_task tokenizer_class prefix
    bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id
    task_specific_params pruned_heads max_length min_length do_sample early_stopping num_beams
    num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty
    length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
    num_return_sequences output_scores return_dict_in_generate forced_bos_token_id
    forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
    begin_suppress_tokens tf_legacy_loss use_bfloat16 initializer_range use_cache
    cache_implementation _attn_implementation_autoset attention_dropout""".split()  # noqa: SIM905
)
# Known, and irrelevant to the computation for the reason given.
_IGNORED = {
    "top": {
        "hidden_size",  # top-level copy; only transformers <= 4.44 read it (for scaling)
        "vocab_size",  # the text config's vocab_size is the one the weights have
        "ignore_index",  # training-loss setting
        "image_seq_length",
        "_vocab_size",  # early 4.x private copy of vocab_size
    },
    "vision": {
        "projection_dim",  # copied from the top level
        "projector_hidden_act",  # the projector is one linear layer; this field is unused
        "num_image_tokens",  # derived from image_size / patch_size
        "vocab_size",
        "model_type",
    },
    "text": {
        "num_image_tokens",
        "max_position_embeddings",  # RoPE has no table; nothing is sized by it
        "use_bidirectional_attention",  # the mask comes from token types, not from this flag
        "model_type",
    },
}
_GELU_TANH = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast"}


def _check_keys(section: str, data: dict[str, Any], used: set[str]) -> None:
    unknown = set(data) - used - _GENERIC_KEYS - _IGNORED[section]
    if unknown:
        raise ConfigError(
            f"config.json {section} config has unknown key(s) {sorted(unknown)} that may change "
            "the architecture; refusing to guess"
        )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _vision_from_hf(d: dict[str, Any]) -> tuple[SiglipConfig, int]:
    d = dict(d)
    # Missing keys take transformers' SiglipVisionConfig defaults, as transformers does.
    get = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": True,
    }
    get.update({k: d[k] for k in get if k in d})
    _require(
        d.get("model_type", "siglip_vision_model") == "siglip_vision_model",
        f"vision_config.model_type {d.get('model_type')!r} is not siglip_vision_model",
    )
    _require(not get["vision_use_head"], "vision_use_head=true: PaliGemma's SigLIP has no head")
    _require(get["num_channels"] == 3, "vision num_channels must be 3")
    _require(
        get["hidden_act"] in _GELU_TANH, f"vision hidden_act {get['hidden_act']!r} unsupported"
    )
    _check_keys("vision", d, set(get))
    cfg = SiglipConfig(
        width=get["hidden_size"],
        depth=get["num_hidden_layers"],
        num_heads=get["num_attention_heads"],
        mlp_dim=get["intermediate_size"],
        patch_size=get["patch_size"],
        norm_eps=float(get["layer_norm_eps"]),
    )
    return cfg, get["image_size"]


# transformers' GemmaConfig / Gemma2Config defaults, for keys a config.json leaves out.
_GEMMA_DEFAULTS = {
    "vocab_size": 256_000,
    "hidden_size": 3072,
    "intermediate_size": 24_576,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 256,
}
_GEMMA2_DEFAULTS = {
    "vocab_size": 256_000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "layer_types": None,
}
_COMMON_DEFAULTS = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 10_000.0,
    "rope_parameters": None,
    "rope_scaling": None,
    "hidden_act": None,
    "hidden_activation": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
}


def _rope_theta(get: dict[str, Any]) -> float:
    """RoPE base from either layout (4.x `rope_theta`, 5.x `rope_parameters`); refuse scaling."""
    theta = float(get["rope_theta"])
    if get["rope_parameters"] is not None:  # 5.x layout
        rp = get["rope_parameters"]
        _require(rp.get("rope_type", "default") == "default", f"rope {rp} unsupported")
        theta = float(rp.get("rope_theta", theta))
    _require(get["rope_scaling"] in (None, {}), f"rope_scaling {get['rope_scaling']} unsupported")
    return theta


def _check_text_semantics(get: dict[str, Any]) -> None:
    """Settings that would change what the weights compute: refuse all but Gemma's."""
    for act in (get["hidden_act"], get["hidden_activation"]):
        # 5.x coerces Gemma's "gelu" to the tanh approximation, which is what the weights want.
        _require(
            act is None or act in _GELU_TANH | {"gelu"}, f"text activation {act!r} unsupported"
        )
    _require(not get["attention_bias"], "attention_bias=true: Gemma has no biases")
    _require(bool(get["tie_word_embeddings"]), "tie_word_embeddings=false: PaliGemma ties them")


def _gemma2_fields(get: dict[str, Any]) -> dict[str, Any]:
    """Our Gemma 2 fields (soft-caps, window, local layers, post-norms, query scale)."""
    depth = get["num_hidden_layers"]
    sliding = None
    if get["layer_types"] is not None:
        types = list(get["layer_types"])
        _require(
            len(types) == depth and set(types) <= {"sliding_attention", "full_attention"},
            f"layer_types {types} do not match {depth} layers",
        )
        sliding = tuple(t == "sliding_attention" for t in types)
        if sliding == tuple(i % 2 == 0 for i in range(depth)):
            sliding = None  # the default pattern: keep configs comparable
    return dict(
        attn_softcap=get["attn_logit_softcapping"],
        final_softcap=get["final_logit_softcapping"],
        sliding_window=get["sliding_window"],
        sliding_layers=sliding,
        post_norms=True,
        query_pre_attn_scalar=get["query_pre_attn_scalar"],
    )


def _text_from_hf(d: dict[str, Any]) -> GemmaConfig:
    d = dict(d)
    kind = d.get("model_type", "gemma")
    _require(kind in ("gemma", "gemma2"), f"text_config.model_type {kind!r} is not gemma/gemma2")
    v2 = kind == "gemma2"
    get = dict(_GEMMA2_DEFAULTS if v2 else _GEMMA_DEFAULTS) | _COMMON_DEFAULTS
    if v2 and "sliding_window_size" in d and "sliding_window" not in d:  # older spelling
        d["sliding_window"] = d.pop("sliding_window_size")
    elif v2 and "sliding_window_size" in d:
        d.pop("sliding_window_size")
    get.update({k: d[k] for k in get if k in d})
    theta = _rope_theta(get)
    _check_text_semantics(get)
    _check_keys("text", d, set(get))
    return GemmaConfig(
        width=get["hidden_size"],
        depth=get["num_hidden_layers"],
        num_heads=get["num_attention_heads"],
        num_kv_heads=get["num_key_value_heads"],
        head_dim=get["head_dim"],
        mlp_dim=get["intermediate_size"],
        vocab_size=get["vocab_size"],
        norm_eps=float(get["rms_norm_eps"]),
        rope_theta=theta,
        **(_gemma2_fields(get) if v2 else {}),
    )


def from_hf_json(data: dict[str, Any]) -> PaliGemmaConfig:
    """Our config from a transformers PaliGemma config.json dict (4.x or 5.x layout).

    Missing keys take transformers' defaults for the sub-config's class; keys we do not know and
    cannot prove harmless are an error (`ConfigError`), never silently dropped.
    """
    _require(
        data.get("model_type") == "paligemma",
        f"config.json model_type is {data.get('model_type')!r}, not 'paligemma'",
    )
    # transformers' PaliGemmaConfig fallbacks when a sub-config is missing entirely.
    vision = data.get("vision_config") or {
        "intermediate_size": 4096,
        "hidden_size": 1152,
        "patch_size": 14,
        "image_size": 224,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "vision_use_head": False,
    }
    text = data.get("text_config") or {
        "hidden_size": 2048,
        "num_hidden_layers": 18,
        "intermediate_size": 16_384,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "vocab_size": 257_152,
    }
    vision_cfg, image_size = _vision_from_hf(vision)
    text_cfg = _text_from_hf(text)
    image_token = data.get("image_token_index", data.get("image_token_id", 256_000))
    projection_dim = data.get("projection_dim", 2048)
    _require(
        projection_dim == text_cfg.width,
        f"projection_dim {projection_dim} != text hidden_size {text_cfg.width}",
    )
    _require(data.get("tie_word_embeddings", True), "tie_word_embeddings=false is not PaliGemma")
    used = {
        "model_type",
        "vision_config",
        "text_config",
        "image_token_index",
        "image_token_id",
        "projection_dim",
        "tie_word_embeddings",
    }
    _check_keys("top", data, used)
    return PaliGemmaConfig(
        vision=vision_cfg, text=text_cfg, image_size=image_size, image_token_id=image_token
    )


_SPECIAL_IDS = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}


def _text_to_hf(cfg: PaliGemmaConfig) -> dict[str, Any]:
    t = cfg.text
    text: dict[str, Any] = {
        "model_type": "gemma2" if t.post_norms else "gemma",
        "vocab_size": t.vocab_size,
        "hidden_size": t.width,
        "intermediate_size": t.mlp_dim,
        "num_hidden_layers": t.depth,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "head_dim": t.head_dim,
        "rms_norm_eps": t.norm_eps,
        "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "tie_word_embeddings": True,
        "num_image_tokens": cfg.num_image_tokens,
        "max_position_embeddings": MAX_SEQ_LEN,
        **_SPECIAL_IDS,
    }
    if t.post_norms:
        text |= {
            "query_pre_attn_scalar": t.query_pre_attn_scalar or t.head_dim,
            "sliding_window": t.sliding_window,
            "layer_types": [
                "sliding_attention" if local else "full_attention" for local in t.layer_is_local
            ],
            "attn_logit_softcapping": t.attn_softcap,
            "final_logit_softcapping": t.final_softcap,
        }
    return text


def _vision_to_hf(cfg: PaliGemmaConfig) -> dict[str, Any]:
    v = cfg.vision
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": v.width,
        "intermediate_size": v.mlp_dim,
        "num_hidden_layers": v.depth,
        "num_attention_heads": v.num_heads,
        "num_channels": 3,
        "image_size": cfg.image_size,
        "patch_size": v.patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": v.norm_eps,
        "vision_use_head": False,
        "projection_dim": cfg.text.width,
    }


def to_hf_json(cfg: PaliGemmaConfig, dtype: str | None = None) -> dict[str, Any]:
    """transformers config.json dict (5.x layout, also read by 4.x) describing `cfg`."""
    t = cfg.text
    if not t.post_norms and (t.attn_softcap or t.final_softcap or t.sliding_window):
        raise ConfigError("a Gemma 1 decoder with soft-caps or sliding windows has no HF layout")
    out: dict[str, Any] = {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "image_token_index": cfg.image_token_id,
        "projection_dim": t.width,
        "hidden_size": t.width,
        "vocab_size": t.vocab_size,
        "tie_word_embeddings": True,
        **_SPECIAL_IDS,
        "text_config": _text_to_hf(cfg),
        "vision_config": _vision_to_hf(cfg),
    }
    if dtype is not None:
        out["dtype"] = out["torch_dtype"] = dtype
    return out
