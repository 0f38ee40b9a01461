"""Checkpoint translation: transformers and big_vision tensor names -> ours, by tables.

Our parameter tree (see STYLE):
    vision.{patch_embed, pos_embed, final_norm,
            blocks.i.{attn_norm, attn.{q,k,v,o}_proj, mlp_norm, mlp.{fc1,fc2}}}
    projector
    decoder.{embed, final_norm, blocks.i.{attn_norm, attn.{q,k,v,o}_proj, post_attn_norm,
                                          mlp_norm, mlp.{gate,up,down}_proj, post_mlp_norm}}

transformers layouts seen in the wild are first brought to the "legacy" file layout of the
published checkpoints (`vision_tower.vision_model.*`, `multi_modal_projector.*`,
`language_model.model.*`), then renamed by one table that is also used, inverted, for saving.
big_vision `.npz` files hold flax paths with layers stacked on axis 0 and einsum-shaped kernels;
each key has a transform that yields per-layer `nn.Linear` weights. Files written unscanned hold
one array per layer (`encoderblock_{i}/...`, `llm/layers/{i}/...`): each is read as a stack of
one. q, k and v come as q_einsum + kv_einsum, or fused in one qkv_einsum.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator

import torch

from ..config import CONFIGS, ConfigError, GemmaConfig, PaliGemmaConfig, SiglipConfig


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: missing, unexpected or misshapen tensors."""


# ---------------------------------------------------------------------------------------------
# transformers <-> ours

# Other transformers layouts -> the legacy file layout. First match wins.
_HF_PREFIXES = [
    ("model.vision_tower.vision_model.", "vision_tower.vision_model."),  # 4.52-5.5 in memory
    ("model.vision_tower.", "vision_tower.vision_model."),  # >= 5.7 in memory
    ("vision_tower.vision_model.", "vision_tower.vision_model."),  # published files, <= 4.57
    ("vision_tower.", "vision_tower.vision_model."),  # files saved by >= 5.7
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),  # 5.x (no inner ".model.")
    ("lm_head.", "language_model.lm_head."),
]
_V = "vision_tower.vision_model."
_L = "language_model.model.layers.{i}."
# (transformers legacy name, our name). {i}: layer, {p}: weight|bias, {proj}: projection name.
_HF_TABLE = [
    (_V + "embeddings.patch_embedding.{p}", "vision.patch_embed.{p}"),
    (_V + "embeddings.position_embedding.weight", "vision.pos_embed"),
    (_V + "encoder.layers.{i}.layer_norm1.{p}", "vision.blocks.{i}.attn_norm.{p}"),
    (_V + "encoder.layers.{i}.self_attn.out_proj.{p}", "vision.blocks.{i}.attn.o_proj.{p}"),
    (_V + "encoder.layers.{i}.self_attn.{proj}.{p}", "vision.blocks.{i}.attn.{proj}.{p}"),
    (_V + "encoder.layers.{i}.layer_norm2.{p}", "vision.blocks.{i}.mlp_norm.{p}"),
    (_V + "encoder.layers.{i}.mlp.{proj}.{p}", "vision.blocks.{i}.mlp.{proj}.{p}"),
    (_V + "post_layernorm.{p}", "vision.final_norm.{p}"),
    ("multi_modal_projector.linear.{p}", "projector.{p}"),
    ("language_model.model.embed_tokens.weight", "decoder.embed.weight"),
    ("language_model.model.norm.weight", "decoder.final_norm.weight"),
    (_L + "self_attn.{proj}.weight", "decoder.blocks.{i}.attn.{proj}.weight"),
    (_L + "mlp.{proj}.weight", "decoder.blocks.{i}.mlp.{proj}.weight"),
    (_L + "input_layernorm.weight", "decoder.blocks.{i}.attn_norm.weight"),
]
# The same transformers name means different norms in Gemma 1 and Gemma 2.
_HF_TABLE_V1 = [
    # Gemma 1's "post_attention_layernorm" is the norm *before* the MLP.
    (_L + "post_attention_layernorm.weight", "decoder.blocks.{i}.mlp_norm.weight"),
]
_HF_TABLE_V2 = [
    (_L + "post_attention_layernorm.weight", "decoder.blocks.{i}.post_attn_norm.weight"),
    (_L + "pre_feedforward_layernorm.weight", "decoder.blocks.{i}.mlp_norm.weight"),
    (_L + "post_feedforward_layernorm.weight", "decoder.blocks.{i}.post_mlp_norm.weight"),
]
_HF_TIED_HEAD = "language_model.lm_head.weight"
_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "proj": r"(?P<proj>[a-z0-9_]+)"}


@functools.cache
def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern + "$")


def _rename_table(v2: bool) -> list[tuple[str, str]]:
    return _HF_TABLE + (_HF_TABLE_V2 if v2 else _HF_TABLE_V1)


def _translate(name: str, table: list[tuple[str, str]], reverse: bool) -> str | None:
    for hf, ours in table:
        src, dst = (ours, hf) if reverse else (hf, ours)
        m = _compile(src).match(name)
        if m:
            return dst.format(**m.groupdict())
    return None


def hf_name_to_ours(name: str, cfg: PaliGemmaConfig) -> str | None:
    """Our name for a transformers tensor name (any layout); None for the tied output head."""
    for old, new in _HF_PREFIXES:
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    if name == _HF_TIED_HEAD:
        return None
    ours = _translate(name, _rename_table(cfg.is_v2), reverse=False)
    if ours is None:
        raise CheckpointError(f"unexpected tensor {name!r} in the checkpoint")
    return ours


def our_name_to_hf(name: str, cfg: PaliGemmaConfig) -> str:
    """The published (legacy) transformers file name of one of our parameters."""
    hf = _translate(name, _rename_table(cfg.is_v2), reverse=True)
    if hf is None:
        raise CheckpointError(f"no transformers name for parameter {name!r}")
    return hf


# ---------------------------------------------------------------------------------------------
# big_vision .npz -> ours

Array = torch.Tensor  # a whole npz array as a (CPU) tensor, layers stacked on axis 0
Transform = Callable[[Array, PaliGemmaConfig], Iterator[tuple[str, torch.Tensor]]]
_ENC = "img/Transformer/encoderblock/"
_MHA = _ENC + "MultiHeadDotProductAttention_0/"


def _per_layer(ours: str, fn: Callable[[torch.Tensor], torch.Tensor] = lambda w: w) -> Transform:
    """A stacked array (L, ...) -> one tensor per layer, named `ours` with {i} filled in."""

    def transform(a: Array, cfg: PaliGemmaConfig) -> Iterator[tuple[str, torch.Tensor]]:
        for i in range(a.shape[0]):
            yield ours.format(i=i), fn(a[i])

    return transform


def _single(ours: str, fn: Callable[[torch.Tensor], torch.Tensor] = lambda w: w) -> Transform:
    def transform(a: Array, cfg: PaliGemmaConfig) -> Iterator[tuple[str, torch.Tensor]]:
        yield ours, fn(a)

    return transform


def _flat_heads_in(w: torch.Tensor) -> torch.Tensor:
    """Flax DenseGeneral kernel (D, N, H) -> nn.Linear weight (N*H, D)."""
    return w.reshape(w.shape[0], -1).T


def _heads_in(projs: tuple[str, ...]) -> Transform:
    """Stacked einsum kernels (L, len(projs), N, D, H), one per projection -> (N*H, D) each."""

    def transform(a: Array, cfg: PaliGemmaConfig) -> Iterator[tuple[str, torch.Tensor]]:
        for i in range(a.shape[0]):
            for j, proj in enumerate(projs):
                w = a[i, j].permute(0, 2, 1)  # (N, H, D)
                yield f"decoder.blocks.{i}.attn.{proj}.weight", w.reshape(-1, w.shape[-1])

    return transform


def _gating_einsum(a: Array, cfg: PaliGemmaConfig) -> Iterator[tuple[str, torch.Tensor]]:
    # (L, 2, D, F): [gate, up]. Some big_vision checkpoints store (L, 2, F, D) (their
    # `_maybe_transpose_gating_einsum`); the width tells which.
    if a.shape[-1] == cfg.text.width and a.shape[-2] == cfg.text.mlp_dim != cfg.text.width:
        a = a.transpose(-1, -2)
    for i in range(a.shape[0]):
        yield f"decoder.blocks.{i}.mlp.gate_proj.weight", a[i, 0].T
        yield f"decoder.blocks.{i}.mlp.up_proj.weight", a[i, 1].T


def _embedding(a: Array, cfg: PaliGemmaConfig) -> Iterator[tuple[str, torch.Tensor]]:
    # big_vision keeps 257152 rows; transformers pads to 257216 (rows never produced by the
    # tokenizer). Pad with zeros so the model has the config's vocabulary.
    extra = cfg.text.vocab_size - a.shape[0]
    if extra < 0:
        raise CheckpointError(
            f"npz vocabulary {a.shape[0]} exceeds the config's {cfg.text.vocab_size}"
        )
    if extra:
        a = torch.cat([a, a.new_zeros(extra, a.shape[1])])
    yield "decoder.embed.weight", a


_NPZ_TABLE: dict[str, Transform] = {
    "img/embedding/kernel": _single("vision.patch_embed.weight", lambda w: w.permute(3, 2, 0, 1)),
    "img/embedding/bias": _single("vision.patch_embed.bias"),
    "img/pos_embedding": _single("vision.pos_embed", lambda w: w.reshape(-1, w.shape[-1])),
    _ENC + "LayerNorm_0/scale": _per_layer("vision.blocks.{i}.attn_norm.weight"),
    _ENC + "LayerNorm_0/bias": _per_layer("vision.blocks.{i}.attn_norm.bias"),
    _ENC + "LayerNorm_1/scale": _per_layer("vision.blocks.{i}.mlp_norm.weight"),
    _ENC + "LayerNorm_1/bias": _per_layer("vision.blocks.{i}.mlp_norm.bias"),
    _ENC + "MlpBlock_0/Dense_0/kernel": _per_layer("vision.blocks.{i}.mlp.fc1.weight", torch.t),
    _ENC + "MlpBlock_0/Dense_0/bias": _per_layer("vision.blocks.{i}.mlp.fc1.bias"),
    _ENC + "MlpBlock_0/Dense_1/kernel": _per_layer("vision.blocks.{i}.mlp.fc2.weight", torch.t),
    _ENC + "MlpBlock_0/Dense_1/bias": _per_layer("vision.blocks.{i}.mlp.fc2.bias"),
    **{
        _MHA + f"{name}/kernel": _per_layer(
            f"vision.blocks.{{i}}.attn.{proj}.weight", _flat_heads_in
        )
        for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
    },
    **{
        _MHA + f"{name}/bias": _per_layer(f"vision.blocks.{{i}}.attn.{proj}.bias", torch.flatten)
        for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
    },
    # (N, H, D) -> (D, N*H)
    _MHA + "out/kernel": _per_layer(
        "vision.blocks.{i}.attn.o_proj.weight", lambda w: w.reshape(-1, w.shape[-1]).T
    ),
    _MHA + "out/bias": _per_layer("vision.blocks.{i}.attn.o_proj.bias"),
    "img/Transformer/encoder_norm/scale": _single("vision.final_norm.weight"),
    "img/Transformer/encoder_norm/bias": _single("vision.final_norm.bias"),
    "img/head/kernel": _single("projector.weight", torch.t),
    "img/head/bias": _single("projector.bias"),
    "llm/embedder/input_embedding": _embedding,
    # (N, D, H) -> (N*H, D)
    "llm/layers/attn/q_einsum/w": _per_layer(
        "decoder.blocks.{i}.attn.q_proj.weight",
        lambda w: w.permute(0, 2, 1).reshape(-1, w.shape[1]),
    ),
    "llm/layers/attn/kv_einsum/w": _heads_in(("k_proj", "v_proj")),  # (L, 2, K, D, H)
    # Fused, when there are as many kv heads as heads (big_vision's qkv_einsum): (L, 3, N, D, H)
    "llm/layers/attn/qkv_einsum/w": _heads_in(("q_proj", "k_proj", "v_proj")),
    # (N, H, D) -> (D, N*H)
    "llm/layers/attn/attn_vec_einsum/w": _per_layer(
        "decoder.blocks.{i}.attn.o_proj.weight",
        lambda w: w.permute(2, 0, 1).reshape(w.shape[2], -1),
    ),
    "llm/layers/mlp/gating_einsum": _gating_einsum,
    "llm/layers/mlp/linear": _per_layer("decoder.blocks.{i}.mlp.down_proj.weight", torch.t),
    # All norm scales use the same (1 + w) convention as ours: copied as they are.
    "llm/layers/pre_attention_norm/scale": _per_layer("decoder.blocks.{i}.attn_norm.weight"),
    "llm/layers/pre_ffw_norm/scale": _per_layer("decoder.blocks.{i}.mlp_norm.weight"),
    "llm/layers/post_attention_norm/scale": _per_layer("decoder.blocks.{i}.post_attn_norm.weight"),
    "llm/layers/post_ffw_norm/scale": _per_layer("decoder.blocks.{i}.post_mlp_norm.weight"),
    "llm/final_norm/scale": _single("decoder.final_norm.weight"),
}


def npz_key(key: str) -> str:
    """Strip the optional leading `params/` of big_vision checkpoints."""
    return key.removeprefix("params/")


# Unscanned files (big_vision's scan=False) hold one array per layer under these names.
_UNSCANNED = (
    (re.compile(r"img/Transformer/encoderblock_(\d+)/(.+)"), _ENC),
    (re.compile(r"llm/layers/(\d+)/(.+)"), "llm/layers/"),
)


def _scanned_key(key: str) -> tuple[str, int | None]:
    """(scanned key, layer) of a per-layer key; (key, None) for any other key."""
    key = npz_key(key)
    for pattern, stem in _UNSCANNED:
        m = pattern.fullmatch(key)
        if m:
            return stem + m.group(2), int(m.group(1))
    return key, None


def npz_to_ours(key: str, array: Array, cfg: PaliGemmaConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Our (name, tensor) pairs held by one npz array (views; the caller copies them)."""
    scanned, layer = _scanned_key(key)
    transform = _NPZ_TABLE.get(scanned)
    if transform is None:
        raise CheckpointError(f"unexpected array {key!r} in the npz checkpoint")
    if layer is None:
        yield from transform(array, cfg)
        return
    for name, t in transform(array[None], cfg):  # a stack of one layer: block 0 is `layer`
        yield name.replace(".blocks.0.", f".blocks.{layer}.", 1), t


def _scanned_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes as a scanned file would hold them: per-layer arrays counted into a depth axis."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        scanned, layer = _scanned_key(key)
        if layer is None:
            out[scanned] = tuple(shape)
        else:
            depth = max(out.get(scanned, (0,))[0], layer + 1)
            out[scanned] = (depth, *shape)
    return out


def _attention_shape(s: dict[str, tuple[int, ...]]) -> tuple[int, int, int, int, int]:
    """(depth, heads, kv heads, width, head dim) of the decoder, fused qkv or not."""
    if "llm/layers/attn/qkv_einsum/w" in s:  # as many kv heads as heads
        depth, _, heads, width, head_dim = s["llm/layers/attn/qkv_einsum/w"]
        return depth, heads, heads, width, head_dim
    depth, heads, width, head_dim = s["llm/layers/attn/q_einsum/w"]
    return depth, heads, s["llm/layers/attn/kv_einsum/w"][2], width, head_dim


def infer_npz_config(shapes: dict[str, tuple[int, ...]]) -> PaliGemmaConfig:
    """The architecture of a big_vision checkpoint from its array shapes alone.

    Shapes fix every width and depth. Gemma 2's soft-caps, window and query scale are not in the
    shapes; they are taken from the published preset with the same decoder shapes, if any.
    """
    s = _scanned_shapes(shapes)
    try:
        depth_v, width_v, heads_v, _ = s[_MHA + "query/kernel"]
        mlp_v = s[_ENC + "MlpBlock_0/Dense_0/kernel"][2]
        patch = s["img/embedding/kernel"][0]
        side = math.isqrt(s["img/pos_embedding"][1])
        depth, heads, kv_heads, width, head_dim = _attention_shape(s)
        mlp = s["llm/layers/mlp/linear"][1]
        vocab = s["llm/embedder/input_embedding"][0]
    except KeyError as e:
        raise CheckpointError(f"npz checkpoint lacks {e.args[0]!r}; is it a PaliGemma?") from None
    if vocab not in (257_152, 257_216):
        raise ConfigError(f"cannot infer the image token of a {vocab}-row vocabulary; pass config=")
    text = GemmaConfig(
        width=width,
        depth=depth,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        mlp_dim=mlp,
        vocab_size=257_216,
    )
    if "llm/layers/post_attention_norm/scale" in s:  # Gemma 2
        known = [c.text for c in CONFIGS.values() if c.is_v2]
        match = [
            t
            for t in known
            if (t.width, t.depth, t.num_heads, t.mlp_dim) == (width, depth, heads, mlp)
        ]
        if not match:
            raise ConfigError(
                "a Gemma 2 decoder of unpublished shape: its soft-caps and window "
                "are not in the tensors; pass config="
            )
        text = match[0]
    vision = SiglipConfig(
        width=width_v, depth=depth_v, num_heads=heads_v, mlp_dim=mlp_v, patch_size=patch
    )
    return PaliGemmaConfig(vision=vision, text=text, image_size=side * patch)


def check_keys(expected: dict[str, torch.Size], got: dict[str, torch.Tensor]) -> None:
    """Raise naming every missing, unexpected or misshapen tensor."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k} {tuple(got[k].shape)} != {tuple(expected[k])}"
        for k in set(expected) & set(got)
        if got[k].shape != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"wrong shape: {'; '.join(wrong[:8])}")
    if problems:
        raise CheckpointError("checkpoint does not match the model: " + " | ".join(problems))
