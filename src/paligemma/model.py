"""PaliGemma = SigLIP image encoder + linear projector + Gemma decoder, with the prefix-LM mask.

Axes: B batch, T new tokens, S key slots, I images, L image tokens per image, D text width,
V vocabulary.

Input sequence of one row (left padding first):

    [pad ...] [<image> x L per image] <bos> prompt "\n" | suffix <eos>
     type 0    type 0 ------------------------------->  | type 1 (and every generated token)
     mask 0    mask 1 -------------------------------------------------------------------->

Image and prefix tokens (token type 0) attend to each other bidirectionally; suffix tokens are
causal and see the whole prefix; padding is never attended. `make_attn_mask` is the one place
that builds these patterns.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PaliGemmaConfig
from .gemma import Attention as TextAttention
from .gemma import GemmaDecoder
from .kv_cache import KVCache
from .siglip import Attention as VisionAttention
from .siglip import SiglipEncoder


def make_attn_mask(
    key_mask: torch.Tensor,
    key_prefix: torch.Tensor,
    query_prefix: torch.Tensor,
    start: int | torch.Tensor = 0,
    window: int | None = None,
) -> torch.Tensor:
    """bool[B, 1, T, S]: may query i (at slot start+i) attend to key slot j?

    key_mask bool[B, S] marks real (non-padding) keys, key_prefix bool[B, S] keys in the prefix
    block, query_prefix bool[B, T] queries in the prefix block. Slots count raw positions, left
    padding included. A query attends to a key iff the key is real and either

    * the key is not later than the query (and, with `window`, less than `window` slots before
      it: the window counts the query itself), or
    * both query and key are in the prefix block (bidirectional, whatever the window).

    Example, one row "p p x x | s s" (2 pads, 2 prefix tokens, 2 suffix tokens), no window::

        key_mask   = [0 0 1 1 1 1]      query (row) -> allowed keys (columns)
        key_prefix = [0 0 1 1 0 0]      x: [0 0 1 1 0 0]   prefix sees the prefix, not the future
                                        x: [0 0 1 1 0 0]
                                        s: [0 0 1 1 1 0]   suffix is causal
                                        s: [0 0 1 1 1 1]

    With window=2 the last row becomes [0 0 1 1 1 1] & (j > 5 - 2) = [0 0 0 0 1 1]; the prefix
    rows are unchanged (the prefix block is OR-ed in after the window). Pad queries get
    arbitrary rows; their outputs are never used. `start` may be an int64[1] tensor (a step
    replayed from a CUDA graph, where no Python int may depend on the step).
    """
    s = key_mask.shape[1]
    t = query_prefix.shape[1]
    q_slot = (start + torch.arange(t, device=key_mask.device))[:, None]  # (T, 1)
    k_slot = torch.arange(s, device=key_mask.device)[None, :]  # (1, S)
    allowed = k_slot <= q_slot  # (T, S) causal
    if window is not None:
        allowed = allowed & (k_slot > q_slot - window)
    allowed = allowed[None] | (query_prefix[:, :, None] & key_prefix[:, None, :])  # (B, T, S)
    return (allowed & key_mask[:, None, :])[:, None]  # (B, 1, T, S)


class PaliGemma(nn.Module):
    def __init__(self, cfg: PaliGemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = SiglipEncoder(cfg.vision, cfg.image_size)
        self.projector = nn.Linear(cfg.vision.width, cfg.text.width)
        self.decoder = GemmaDecoder(cfg.text)

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.projector.weight.device

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache for `batch` rows and up to `max_len` tokens, in the model's dtype."""
        t = self.cfg.text
        return KVCache(
            t.depth,
            batch,
            t.num_kv_heads,
            max_len,
            t.head_dim,
            dtype=self.dtype,
            device=self.device,
        )

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """float[I, 3, S, S] in [-1, 1] -> float[I, L, D] image token embeddings (unscaled)."""
        return self.projector(self.vision(pixel_values)).to(self.decoder.dtype)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """int[B, T] ids in [0, V) -> float[B, T, D]: embedding * sqrt(D), the factor rounded to
        the weight dtype (as the reference does). Image embeddings are not scaled."""
        vocab = self.cfg.text.vocab_size
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise ValueError(
                f"input_ids must lie in [0, {vocab}), "
                f"got {int(input_ids.min())}..{int(input_ids.max())}"
            )
        return self.decoder.embed_tokens(input_ids)  # (B, T, D)

    def embed_inputs(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        """int[B, T] ids (with `image_token_id` placeholders) -> float[B, T, D].

        Text rows are `embed_text`; the k-th run of placeholders in the batch (row-major) is
        filled with image k's tokens (`embed_image`).
        """
        image_id, vocab = self.cfg.image_token_id, self.cfg.text.vocab_size
        is_image = input_ids == image_id  # (B, T)
        # A placeholder id outside the embedding table is looked up as 0 (its row is overwritten).
        x = self.embed_text(input_ids.masked_fill(is_image, 0) if image_id >= vocab else input_ids)
        num_slots = int(is_image.sum())
        if pixel_values is None:
            if num_slots:
                raise ValueError(f"input_ids hold {num_slots} image tokens but no pixel_values")
            return x
        image = self.embed_image(pixel_values)  # (I, L, D)
        if num_slots != image.shape[0] * image.shape[1]:
            raise ValueError(
                f"input_ids hold {num_slots} image tokens, but {image.shape[0]} image(s) give "
                f"{image.shape[0]} x {image.shape[1]}"
            )
        return x.masked_scatter(is_image[..., None], image.reshape(-1, image.shape[-1]))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        local_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        num_logits: int | None = None,
    ) -> torch.Tensor:
        """Logits float[B, T, V] (or for the last `num_logits` positions only); see `hidden`."""
        h = self.hidden(
            input_ids,
            pixel_values,
            attention_mask,
            token_type_ids,
            inputs_embeds=inputs_embeds,
            mask=mask,
            local_mask=local_mask,
            cache=cache,
            positions=positions,
            last=num_logits,
        )  # (B, num_logits or T, D)
        return self.logits(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float[B, T, D] hidden states (from `hidden`) -> float[B, T, V] logits: the tied
        embedding as output head, soft-capped when the config has `final_softcap` (Gemma 2).
        V counts the padded rows too (257,216 for published checkpoints): ids at or above the
        tokenizer's vocabulary are padding, never to be generated (see GenerationConfig)."""
        return self.decoder.logits(hidden)

    def hidden(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        local_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        last: int | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states float[B, T, D], before the output head (`logits`); with
        `last`, of the last `last` positions only, float[B, last, D] (GemmaDecoder.forward).

        Inputs, either: input_ids int[B, T] (with image placeholders) and pixel_values
        float[I, 3, S, S]; or inputs_embeds float[B, T, D], embedded by the caller (e.g.
        `embed_image` and `embed_text` concatenated; text scaled by sqrt(D), images not).

        The default mask comes from attention_mask int/bool[B, T] (1 = real token, 0 = left
        padding; default all real) and token_type_ids int[B, T] (0 = image/prefix,
        bidirectional; 1 = suffix, causal; default all prefix, i.e. a prompt); see
        `make_attn_mask`. `mask` bool[B, 1, T, S] (True = query t may attend to key slot s)
        replaces it; S = T without a cache, S = tokens already in the cache + T with one. A
        given mask is used as it is on every layer, Gemma 2's sliding-window layers included
        (as transformers does with a custom 4-D mask): pass `local_mask` bool[B, 1, T, S] for
        those layers to keep a window, e.g. `make_attn_mask(..., window=sliding_window)`.
        attention_mask and token_type_ids still set the default positions and what the cache
        records for later calls without `mask`.

        With `cache`, the tokens are appended after what it holds and their keys and values
        stored there. positions int[B, T] default to the count of real tokens so far
        (1-based), so a row gets the same positions alone or left-padded in a batch.
        """
        x = self._embed(input_ids, pixel_values, inputs_embeds)  # (B, T, D)
        b, t = x.shape[:2]
        input_mask = (
            torch.ones(b, t, dtype=torch.bool, device=x.device)
            if attention_mask is None
            else attention_mask.to(torch.bool)
        )
        is_prefix = torch.ones_like(input_mask) if token_type_ids is None else token_type_ids == 0
        s = t + (0 if cache is None else cache.length)
        mask, local_mask = _given_masks(mask, local_mask, (b, 1, t, s))  # before cache.reserve
        if cache is not None:
            past_real = cache.num_real.clone()
            start = cache.reserve(input_mask, is_prefix)
            key_mask, key_prefix = cache.key_mask[:, : start + t], cache.key_prefix[:, : start + t]
        else:
            past_real = torch.zeros(b, dtype=torch.long, device=x.device)
            start, key_mask, key_prefix = 0, input_mask, is_prefix & input_mask
        if positions is None:
            positions = past_real[:, None] + input_mask.long().cumsum(1)  # (B, T)
        if mask is None:
            mask, local_mask = self.default_masks(key_mask, key_prefix, is_prefix, start)
        return self.decoder(x, positions, (mask, local_mask), cache, start, last)  # (B, T, D)

    def default_masks(
        self,
        key_mask: torch.Tensor,
        key_prefix: torch.Tensor,
        query_prefix: torch.Tensor,
        start: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(global, local) bool[B, 1, T, S]: the prefix-LM pattern (`make_attn_mask`), and for
        Gemma 2's local layers the same with the sliding window (the global one where there is
        no window)."""
        mask = make_attn_mask(key_mask, key_prefix, query_prefix, start)
        window = self.cfg.text.sliding_window
        if not window:
            return mask, mask
        return mask, make_attn_mask(key_mask, key_prefix, query_prefix, start, window)

    def _embed(
        self,
        input_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        """float[B, T, D] from exactly one of input_ids (+ pixel_values) or inputs_embeds."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            return self.embed_inputs(input_ids, pixel_values)
        if input_ids is not None or pixel_values is not None:
            raise ValueError(
                "pass either inputs_embeds or input_ids/pixel_values, not both "
                "(embed the image yourself with embed_image)"
            )
        width = self.cfg.text.width
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != width:
            raise ValueError(
                f"inputs_embeds must be float[B, T, {width}], got {tuple(inputs_embeds.shape)}"
            )
        return inputs_embeds.to(self.decoder.dtype)


def _given_masks(
    mask: torch.Tensor | None, local_mask: torch.Tensor | None, shape: tuple[int, ...]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The caller's (global, local) masks, checked against `shape` (B, 1, T, S); a lone mask
    serves both; (None, None) when none is given."""
    if mask is None:
        if local_mask is not None:
            raise ValueError("local_mask needs mask (the one for global layers) too")
        return None, None
    local_mask = mask if local_mask is None else local_mask
    for name, m in (("mask", mask), ("local_mask", local_mask)):
        if m.dtype != torch.bool or tuple(m.shape) != shape:
            raise ValueError(
                f"{name} must be bool[B, 1, T, S] = {list(shape)} (S = cached + new tokens), "
                f"got {str(m.dtype).removeprefix('torch.')}{list(m.shape)}"
            )
    return mask, local_mask


def set_rows_alone_(model: nn.Module, on: bool = True) -> nn.Module:
    """In place: without autograd, every row of a batch gets exactly the bits it gets alone
    (the server's "batched = alone" guarantee): a left-padded prefill row and every decode row
    attend over their own key span only, not over padding or pool slots whose masked zeros
    still move the softmax's and the kernels' summation order. Off (the default), a
    left-padded batch is bit-exact with transformers' batched computation instead. The matrix
    products must give a row the same bits in any batch too: true in bfloat16 on the CPU
    (torch.mv for one row, as `load_model` installs, and 2..16-row products agree), and in our
    own float32 GEMM (dequant.cpp's f32_mm on its vector paths), not in PyTorch's float32 ones
    (MKL's products round by row count). Every module that declares `rows_alone` gets the
    setting: the decoder's attention, the CPU linears that choose torch.mv for a single row
    (quant/matvec.py), the quantised linears and the patch convolution (CpuConv2d); where they
    would take float32 products (cpu_kernels.f32_prefill), the linears then take them only for
    prefills (more than 16 rows) on our GEMM, and the patch convolution our GEMM over its
    patches."""
    for m in model.modules():
        if isinstance(m, TextAttention) or hasattr(m, "rows_alone"):
            m.rows_alone = on
    return model


def set_fused_attention_(model: nn.Module, on: bool | None = True) -> nn.Module:
    """In place: attention through PyTorch's fused `scaled_dot_product_attention` (SigLIP, and
    the decoder's layers without a soft-cap) always (True), never (False: the reference's eager
    float32 softmax, bit for bit), or by length (None, the default: calls of at least
    `config.FUSED_ATTENTION_MIN_TOKENS` query tokens, i.e. prefill). Fused is ~1e-6 off on
    float32 logits and never builds the (N, T, S) score matrix, which matters at 448 / 896 px."""
    for m in model.modules():
        if isinstance(m, (TextAttention, VisionAttention)):
            m.fused = on
    return model
