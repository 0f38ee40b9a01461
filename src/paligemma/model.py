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
from .gemma import GemmaDecoder
from .kv_cache import KVCache
from .siglip import SiglipEncoder


def make_attn_mask(
    key_mask: torch.Tensor,
    key_prefix: torch.Tensor,
    query_prefix: torch.Tensor,
    start: int = 0,
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
    arbitrary rows; their outputs are never used.
    """
    s = key_mask.shape[1]
    t = query_prefix.shape[1]
    q_slot = torch.arange(start, start + t, device=key_mask.device)[:, None]  # (T, 1)
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
        return self.projector(self.vision(pixel_values)).to(self.decoder.embed.weight.dtype)

    def embed_inputs(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        """int[B, T] ids (with `image_token_id` placeholders) -> float[B, T, D].

        Text rows are embedding * sqrt(D); the k-th run of placeholders in the batch (row-major)
        is filled with image k's tokens.
        """
        image_id, vocab = self.cfg.image_token_id, self.cfg.text.vocab_size
        is_image = input_ids == image_id  # (B, T)
        # A placeholder id outside the embedding table is looked up as 0 (its row is overwritten).
        ids = input_ids.masked_fill(is_image, 0) if image_id >= vocab else input_ids
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(
                f"input_ids must lie in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}"
            )
        x = self.decoder.embed_tokens(ids)  # (B, T, D)
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
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
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
            cache=cache,
            positions=positions,
        )
        if num_logits is not None:
            h = h[:, -num_logits:]
        return self.decoder.logits(h)

    def hidden(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states float[B, T, D], before the output head.

        input_ids int[B, T]; pixel_values float[I, 3, S, S]; attention_mask int/bool[B, T]
        (1 = real token, 0 = left padding; default all real); token_type_ids int[B, T]
        (0 = image/prefix, bidirectional; 1 = suffix, causal; default all prefix, i.e. a
        prompt). With `cache`, the tokens are appended after what it holds and their keys and
        values stored there. Positions default to the count of real tokens so far (1-based), so
        a row gets the same positions alone or left-padded in a batch.
        """
        b, t = input_ids.shape
        input_mask = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.to(torch.bool)
        )
        is_prefix = torch.ones_like(input_mask) if token_type_ids is None else token_type_ids == 0
        x = self.embed_inputs(input_ids, pixel_values)  # (B, T, D)

        if cache is not None:
            past_real = cache.num_real.clone()
            start = cache.reserve(input_mask, is_prefix)
            key_mask, key_prefix = cache.key_mask[:, : start + t], cache.key_prefix[:, : start + t]
        else:
            past_real = torch.zeros(b, dtype=torch.long, device=input_ids.device)
            start, key_mask, key_prefix = 0, input_mask, is_prefix & input_mask
        if positions is None:
            positions = past_real[:, None] + input_mask.long().cumsum(1)  # (B, T)

        window = self.cfg.text.sliding_window
        masks = (
            make_attn_mask(key_mask, key_prefix, is_prefix, start),
            make_attn_mask(key_mask, key_prefix, is_prefix, start, window) if window else None,
        )
        return self.decoder(x, positions, masks, cache, start)  # (B, T, D)
