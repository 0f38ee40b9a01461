"""Test helper: write a transformers PaliGemma state dict as a big_vision ``.npz`` checkpoint.

Independent re-implementation of the big_vision (Kaggle) layout, as transformers'
convert_paligemma_weights_to_hf.py reads it: ``/``-joined flax paths, scanned layers stacked on
axis 0, every transform the exact inverse of that script's HF-from-npz transform. The embedding
matrix is written with as many rows as it has (slice the state dict first to mimic the
257152-row files).
Two rarer layouts of big_vision's own code on request: q, k, v fused in one
``qkv_einsum`` (3, N, D, H) when kv heads == heads, and unscanned layers (``scan=False``), one
array per layer under ``img/Transformer/encoderblock_{i}/...`` and ``llm/layers/{i}/...``.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

_VIS = "vision_tower.vision_model."
_LLM = "language_model.model."

# SigLIP per-layer HF name -> (flax path under img/Transformer/encoderblock/, kind)
_VIS_LAYER = {
    "layer_norm1.weight": ("LayerNorm_0/scale", "copy"),
    "layer_norm1.bias": ("LayerNorm_0/bias", "copy"),
    "layer_norm2.weight": ("LayerNorm_1/scale", "copy"),
    "layer_norm2.bias": ("LayerNorm_1/bias", "copy"),
    "mlp.fc1.weight": ("MlpBlock_0/Dense_0/kernel", "t"),
    "mlp.fc1.bias": ("MlpBlock_0/Dense_0/bias", "copy"),
    "mlp.fc2.weight": ("MlpBlock_0/Dense_1/kernel", "t"),
    "mlp.fc2.bias": ("MlpBlock_0/Dense_1/bias", "copy"),
    "self_attn.q_proj.weight": ("MultiHeadDotProductAttention_0/query/kernel", "qkv_kernel"),
    "self_attn.k_proj.weight": ("MultiHeadDotProductAttention_0/key/kernel", "qkv_kernel"),
    "self_attn.v_proj.weight": ("MultiHeadDotProductAttention_0/value/kernel", "qkv_kernel"),
    "self_attn.q_proj.bias": ("MultiHeadDotProductAttention_0/query/bias", "qkv_bias"),
    "self_attn.k_proj.bias": ("MultiHeadDotProductAttention_0/key/bias", "qkv_bias"),
    "self_attn.v_proj.bias": ("MultiHeadDotProductAttention_0/value/bias", "qkv_bias"),
    "self_attn.out_proj.weight": ("MultiHeadDotProductAttention_0/out/kernel", "out_kernel"),
    "self_attn.out_proj.bias": ("MultiHeadDotProductAttention_0/out/bias", "copy"),
}

# Gemma per-layer norms: HF name -> flax path under llm/layers/
_NORMS_V1 = {
    "input_layernorm.weight": "pre_attention_norm/scale",
    "post_attention_layernorm.weight": "pre_ffw_norm/scale",  # Gemma-1: the pre-FFN norm
}
_NORMS_V2 = {
    "input_layernorm.weight": "pre_attention_norm/scale",
    "post_attention_layernorm.weight": "post_attention_norm/scale",
    "pre_feedforward_layernorm.weight": "pre_ffw_norm/scale",
    "post_feedforward_layernorm.weight": "post_ffw_norm/scale",
}
_LLM_PROJ = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
_LAYER_RE = re.compile(r"(\d+)\.(.+)")


def _legacy_name(key: str) -> str | None:
    """Map any transformers naming (4.x file / 5.x file / in-memory) to the legacy file name."""
    if key in ("lm_head.weight", "language_model.lm_head.weight"):
        return None  # tied to embed_tokens
    if key.startswith("model.language_model."):
        return _LLM + key[len("model.language_model.") :]
    if key.startswith("model.multi_modal_projector."):
        return key[len("model.") :]
    for prefix in ("model.vision_tower.", "vision_tower."):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest.startswith("vision_model."):
                rest = rest[len("vision_model.") :]
            return _VIS + rest
    return key


def _stack(layers: dict[int, dict[str, torch.Tensor]], name: str, what: str) -> torch.Tensor:
    """Stack per-layer tensors on a new axis 0 (scanned layout); every layer must have ``name``."""
    n = max(layers) + 1
    if sorted(layers) != list(range(n)):
        raise ValueError(f"{what}: layer indices are not 0..{n - 1}: {sorted(layers)}")
    missing = [i for i in range(n) if name not in layers[i]]
    if missing:
        raise ValueError(f"{what}: layers {missing} lack {name!r}")
    return torch.stack([layers[i][name] for i in range(n)])


def _to_numpy(t: torch.Tensor, bf16_as_void: bool) -> np.ndarray:
    if bf16_as_void:
        raw = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        return raw.view("V2")  # big_vision stores bf16 as raw 2-byte void
    return t.to(torch.float32).contiguous().numpy()


def write_bigvision_npz(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    gemma2: bool,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    vision_heads: int,
    bf16_as_void: bool = False,
    params_prefix: bool = False,
    fused_qkv: bool = False,
    scanned: bool = True,
) -> None:
    """Write ``state_dict`` (HF PaliGemma weights) to ``path`` in big_vision's npz layout.

    Raises ``ValueError`` on a key with no big_vision counterpart or on missing per-layer tensors.
    """
    vis_top: dict[str, torch.Tensor] = {}
    vis_layers: dict[int, dict[str, torch.Tensor]] = {}
    llm_top: dict[str, torch.Tensor] = {}
    llm_layers: dict[int, dict[str, torch.Tensor]] = {}
    proj: dict[str, torch.Tensor] = {}
    norms = _NORMS_V2 if gemma2 else _NORMS_V1

    for key, value in state_dict.items():
        name = _legacy_name(key)
        if name is None:
            continue
        t = value.detach().cpu()
        if name.startswith(_VIS + "encoder.layers."):
            m = _LAYER_RE.fullmatch(name[len(_VIS + "encoder.layers.") :])
            if m is None or m.group(2) not in _VIS_LAYER:
                raise ValueError(f"unexpected vision key {key!r}")
            vis_layers.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif name.startswith(_VIS):
            vis_top[name[len(_VIS) :]] = t
        elif name.startswith("multi_modal_projector."):
            proj[name[len("multi_modal_projector.") :]] = t
        elif name.startswith(_LLM + "layers."):
            m = _LAYER_RE.fullmatch(name[len(_LLM + "layers.") :])
            if m is None or (m.group(2) not in _LLM_PROJ and m.group(2) not in norms):
                raise ValueError(f"unexpected language-model key {key!r} (gemma2={gemma2})")
            llm_layers.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif name.startswith(_LLM):
            llm_top[name[len(_LLM) :]] = t
        else:
            raise ValueError(f"unexpected key {key!r}")

    out: dict[str, torch.Tensor] = {}

    # ---- SigLIP (img/...) ----
    vis_expected = {
        "embeddings.patch_embedding.weight",
        "embeddings.patch_embedding.bias",
        "embeddings.position_embedding.weight",
        "post_layernorm.weight",
        "post_layernorm.bias",
    }
    if set(vis_top) != vis_expected:
        raise ValueError(f"vision top-level keys {sorted(vis_top)} != {sorted(vis_expected)}")
    patch_w = vis_top["embeddings.patch_embedding.weight"]  # [D, 3, P, P] (OIHW)
    out["img/embedding/kernel"] = patch_w.permute(2, 3, 1, 0)  # [P, P, 3, D] (HWIO)
    out["img/embedding/bias"] = vis_top["embeddings.patch_embedding.bias"]  # [D]
    pos = vis_top["embeddings.position_embedding.weight"]  # [N, D]
    out["img/pos_embedding"] = pos.unsqueeze(0)  # [1, N, D]
    out["img/Transformer/encoder_norm/scale"] = vis_top["post_layernorm.weight"]  # [D]
    out["img/Transformer/encoder_norm/bias"] = vis_top["post_layernorm.bias"]  # [D]
    if not vis_layers:
        raise ValueError("no vision encoder layers in the state dict")
    d_vis = patch_w.shape[0]
    vis_hd = d_vis // vision_heads
    for hf_name, (flax, kind) in _VIS_LAYER.items():
        w = _stack(vis_layers, hf_name, "vision")
        if kind == "t":  # Linear [out, in] -> Dense kernel [in, out]
            w = w.transpose(1, 2)  # [L, in, out]
        elif kind == "qkv_kernel":  # [L, D_out, D_in] -> [L, D_in, heads, hd]
            w = w.transpose(1, 2).reshape(-1, d_vis, vision_heads, vis_hd)
        elif kind == "qkv_bias":  # [L, D] -> [L, heads, hd]
            w = w.reshape(-1, vision_heads, vis_hd)
        elif kind == "out_kernel":  # [L, D_out, D_in] -> [L, heads, hd, D_out]
            w = w.transpose(1, 2).reshape(-1, vision_heads, vis_hd, d_vis)
        out["img/Transformer/encoderblock/" + flax] = w

    # ---- projector (img/head) ----
    if set(proj) != {"linear.weight", "linear.bias"}:
        raise ValueError(f"projector keys {sorted(proj)} != ['linear.bias', 'linear.weight']")
    out["img/head/kernel"] = proj["linear.weight"].T  # [D_vis, D_text]
    out["img/head/bias"] = proj["linear.bias"]  # [D_text]

    # ---- Gemma (llm/...) ----
    if set(llm_top) != {"embed_tokens.weight", "norm.weight"}:
        raise ValueError(f"language-model top keys {sorted(llm_top)} != embed_tokens, norm")
    emb = llm_top["embed_tokens.weight"]  # [V, D]
    d = emb.shape[1]
    out["llm/embedder/input_embedding"] = emb  # [V, D]
    out["llm/final_norm/scale"] = llm_top["norm.weight"]  # [D]
    if not llm_layers:
        raise ValueError("no language-model layers in the state dict")
    h, kv, hd = num_heads, num_kv_heads, head_dim

    q = _stack(llm_layers, "self_attn.q_proj.weight", "llm")  # [L, H*hd, D]
    out["llm/layers/attn/q_einsum/w"] = q.reshape(-1, h, hd, d).transpose(2, 3)  # [L, H, D, hd]
    k = _stack(llm_layers, "self_attn.k_proj.weight", "llm")  # [L, KV*hd, D]
    v = _stack(llm_layers, "self_attn.v_proj.weight", "llm")  # [L, KV*hd, D]
    kv_w = torch.stack([k, v], dim=1)  # [L, 2, KV*hd, D]
    out["llm/layers/attn/kv_einsum/w"] = kv_w.reshape(-1, 2, kv, hd, d).transpose(3, 4)
    # ^ [L, 2, KV, D, hd]
    o = _stack(llm_layers, "self_attn.o_proj.weight", "llm")  # [L, D, H*hd]
    out["llm/layers/attn/attn_vec_einsum/w"] = o.reshape(-1, d, h, hd).permute(0, 2, 3, 1)
    # ^ [L, H, hd, D]
    gate = _stack(llm_layers, "mlp.gate_proj.weight", "llm")  # [L, F, D]
    up = _stack(llm_layers, "mlp.up_proj.weight", "llm")  # [L, F, D]
    out["llm/layers/mlp/gating_einsum"] = torch.stack([gate, up], dim=1).transpose(2, 3)
    # ^ [L, 2, D, F]
    down = _stack(llm_layers, "mlp.down_proj.weight", "llm")  # [L, D, F]
    out["llm/layers/mlp/linear"] = down.transpose(1, 2)  # [L, F, D]
    for hf_name, flax in norms.items():
        out["llm/layers/" + flax] = _stack(llm_layers, hf_name, "llm")  # [L, D], (1+w) as-is

    if fused_qkv:
        if kv != h:
            raise ValueError(f"a fused qkv_einsum needs as many kv heads as heads ({kv} != {h})")
        q_w = out.pop("llm/layers/attn/q_einsum/w")  # [L, H, D, hd]
        kv_w = out.pop("llm/layers/attn/kv_einsum/w")  # [L, 2, H, D, hd]
        out["llm/layers/attn/qkv_einsum/w"] = torch.cat([q_w[:, None], kv_w], 1)  # [L, 3, H, D, hd]
    if not scanned:
        out = _unscan(out)

    prefix = "params/" if params_prefix else ""
    arrays = {prefix + k: _to_numpy(t, bf16_as_void) for k, t in out.items()}
    np.savez(path, **arrays)


_UNSCANNED = {
    "img/Transformer/encoderblock/": "img/Transformer/encoderblock_{i}/",
    "llm/layers/": "llm/layers/{i}/",
}


def _unscan(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scanned arrays [L, ...] -> one array [...] per layer, under the scan=False names."""
    result = {}
    for key, t in out.items():
        stem = next((s for s in _UNSCANNED if key.startswith(s)), None)
        if stem is None:
            result[key] = t
            continue
        for i in range(t.shape[0]):
            result[_UNSCANNED[stem].format(i=i) + key[len(stem) :]] = t[i]
    return result
