"""Architecture facts for every PaliGemma model, as frozen dataclasses.

A config holds only what fixes the computation (widths, depths, soft-caps, ...). Runtime choices
(dtype, device, cache length, quantisation) are function arguments elsewhere. Every published
architecture is written once in `CONFIGS`; `hf_config` translates transformers' config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_SEQ_LEN = 8192  # Gemma's max_position_embeddings: the longest sequence the weights know

# Attention over at least this many query tokens (every prefill of a published model: >= 256
# image tokens) goes through PyTorch's fused scaled_dot_product_attention unless a layer is set
# otherwise; shorter calls (decode steps, short text) keep the reference's eager float32 softmax,
# except decode steps in half precision on the CPU (`cpu_half`): there the eager products' oneDNN
# kernels are planned anew for every cache length (0.1-0.3 ms a product, measured), so fused.
FUSED_ATTENTION_MIN_TOKENS = 128


def use_fused_attention(setting: bool | None, queries: int, cpu_half: bool = False) -> bool:
    """A layer's `fused` setting (True, False, or None = by length) for `queries` query tokens
    per row; `cpu_half`: bfloat16 / float16 activations on the CPU."""
    if setting is not None:
        return setting
    return queries >= FUSED_ATTENTION_MIN_TOKENS or (cpu_half and queries == 1)


class ConfigError(ValueError):
    """A config.json (or config value) that does not describe a PaliGemma we can build exactly."""


@dataclass(frozen=True)
class SiglipConfig:
    """SigLIP ViT image encoder (no pooling head, no CLS token)."""

    width: int = 1152
    depth: int = 27
    num_heads: int = 16
    mlp_dim: int = 4304  # So400m; NOT transformers' fallback default 4096
    patch_size: int = 14
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


@dataclass(frozen=True)
class GemmaConfig:
    """Gemma (PaliGemma 1) or Gemma 2 (PaliGemma 2) decoder."""

    width: int = 2048
    depth: int = 18
    num_heads: int = 8
    num_kv_heads: int = 1  # 1 = multi-query (PaliGemma 1), >1 = grouped-query (Gemma 2)
    head_dim: int = 256
    mlp_dim: int = 16_384
    vocab_size: int = 257_216  # 256k text + 1024 <loc> + 128 <seg> + <image> + 63 pad rows
    norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    # Gemma 2 only; None / False means off.
    attn_softcap: float | None = None  # tanh(s / cap) * cap on attention scores (50)
    final_softcap: float | None = None  # same on the output logits (30)
    sliding_window: int | None = None  # local attention span (4096), window counts the query
    sliding_layers: tuple[bool, ...] | None = None  # None = alternate, starting with a local layer
    post_norms: bool = False  # RMSNorm on the attention and MLP outputs too
    query_pre_attn_scalar: float | None = None  # queries scaled by this ** -0.5 (default head_dim)

    @property
    def query_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def layer_is_local(self) -> tuple[bool, ...]:
        """Per layer: does it use sliding-window attention?"""
        if self.sliding_window is None:
            return (False,) * self.depth
        if self.sliding_layers is not None:
            return self.sliding_layers
        return tuple(i % 2 == 0 for i in range(self.depth))


@dataclass(frozen=True)
class PaliGemmaConfig:
    vision: SiglipConfig
    text: GemmaConfig
    image_size: int = 224
    image_token_id: int = 257_152

    def __post_init__(self) -> None:
        if self.image_size % self.vision.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of patch_size "
                f"{self.vision.patch_size}"
            )
        if (
            self.text.sliding_layers is not None
            and len(self.text.sliding_layers) != self.text.depth
        ):
            raise ConfigError("sliding_layers must have one entry per decoder layer")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.vision.patch_size) ** 2

    @property
    def is_v2(self) -> bool:
        return self.text.post_norms


# Where the two implementations of PaliGemma 2 compute differently (see `with_reference`).
REFERENCES = ("transformers", "big_vision")


def with_reference(cfg: PaliGemmaConfig, reference: str) -> PaliGemmaConfig:
    """`cfg` computing as `reference` does where transformers and big_vision differ.

    "transformers": the config as it is (Gemma 2: a sliding window on alternating layers and
    the logits soft-capped at 30). "big_vision", where PaliGemma 2 was trained: no sliding
    window (every layer attends globally) and no final soft-cap, as in big_vision's PaliGemma 2
    transfer configs (`final_logits_softcap = 0.0`, so its loss and every decoding step see
    uncapped logits). The attention soft-cap is kept: both apply it. A Gemma 1 decoder has
    neither, so both give the same model.
    """
    if reference not in REFERENCES:
        raise ConfigError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if reference == "transformers":
        return cfg
    text = replace(cfg.text, sliding_window=None, sliding_layers=None, final_softcap=None)
    return replace(cfg, text=text)


# ---------------------------------------------------------------------------------------------
# Presets: every published architecture, each number written once.

SO400M = SiglipConfig()
GEMMA_2B = GemmaConfig()  # PaliGemma 1 decoder
_GEMMA2 = dict(attn_softcap=50.0, final_softcap=30.0, sliding_window=4096, post_norms=True)
GEMMA2_2B = GemmaConfig(
    width=2304,
    depth=26,
    num_heads=8,
    num_kv_heads=4,
    head_dim=256,
    mlp_dim=9216,
    query_pre_attn_scalar=256,
    **_GEMMA2,
)
GEMMA2_9B = GemmaConfig(
    width=3584,
    depth=42,
    num_heads=16,
    num_kv_heads=8,
    head_dim=256,
    mlp_dim=14_336,
    query_pre_attn_scalar=256,
    **_GEMMA2,
)
GEMMA2_27B = GemmaConfig(
    width=4608,
    depth=46,
    num_heads=32,
    num_kv_heads=16,
    head_dim=128,
    mlp_dim=36_864,
    query_pre_attn_scalar=144,
    **_GEMMA2,  # 144 = 4608 / 32, not head_dim
)

_DECODERS = {
    "paligemma-3b": GEMMA_2B,
    "paligemma2-3b": GEMMA2_2B,
    "paligemma2-10b": GEMMA2_9B,
    "paligemma2-28b": GEMMA2_27B,
}
CONFIGS: dict[str, PaliGemmaConfig] = {
    f"{name}-{size}": PaliGemmaConfig(vision=SO400M, text=text, image_size=size)
    for name, text in _DECODERS.items()
    for size in (224, 448, 896)
}

# A few-kilobyte model for tests: 4 image tokens, both decoder flavours exercised elsewhere.
TINY = PaliGemmaConfig(
    vision=SiglipConfig(width=32, depth=2, num_heads=4, mlp_dim=64, patch_size=14),
    text=GemmaConfig(
        width=64, depth=2, num_heads=4, num_kv_heads=1, head_dim=16, mlp_dim=128, vocab_size=300
    ),
    image_size=28,
    image_token_id=299,
)

# The embedded demo model (not a published architecture): 96 px, patch 12 -> 64 image tokens,
# a 6-layer SigLIP and a 4-layer Gemma 1 decoder over a 1.5k-piece vocabulary, about 7M
# parameters. Trained here on synthetic scenes (see demo/train.py and assets/MODEL_CARD.md).
EMBEDDED = PaliGemmaConfig(
    vision=SiglipConfig(width=192, depth=6, num_heads=3, mlp_dim=768, patch_size=12),
    text=GemmaConfig(
        width=256,
        depth=4,
        num_heads=4,
        num_kv_heads=1,
        head_dim=64,
        mlp_dim=1024,
        vocab_size=1536,
    ),
    image_size=96,
    image_token_id=4,
)


def get_config(name: str) -> PaliGemmaConfig:
    """Preset by name, e.g. "paligemma2-3b-448"; a clear error lists the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(CONFIGS)}") from None
