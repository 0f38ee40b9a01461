"""Preallocated key/value cache for the decoder, passed explicitly to the model.

Axes (the package's legend): B batch, K kv heads, S cache slots, H head dim, T new tokens;
the leading axis of k and v is the decoder's layer (depth).

One cache per request (or per batch of requests): the model holds no state, so two generations
can share one model. Slots are filled left to right; slot index is the "raw position" that the
sliding window and the causal order are measured in (left padding included, as in the reference).
Beside keys and values the cache keeps, per slot, whether it holds a real token (`key_mask`) and
whether that token belongs to the bidirectional prefix (`key_prefix`), so every later call can
build its attention mask from `make_attn_mask` alone.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (depth, B, K, S, H)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (depth, B, K, S, H)
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # (B, S)
        self.key_prefix = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # (B, S)
        self.num_real = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) real tokens
        self.length = 0  # slots filled so far

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def reserve(self, input_mask: torch.Tensor, is_prefix: torch.Tensor) -> int:
        """Claim slots for T new tokens (input_mask, is_prefix: bool[B, T]); return the first."""
        batch, t = input_mask.shape
        if batch != self.batch:
            raise ValueError(f"cache holds {self.batch} rows, got a batch of {batch}")
        start = self.length
        if start + t > self.max_len:
            raise ValueError(f"cache of {self.max_len} slots cannot take {start} + {t} tokens")
        self.key_mask[:, start : start + t] = input_mask
        self.key_prefix[:, start : start + t] = is_prefix & input_mask
        self.num_real += input_mask.sum(1)
        self.length = start + t
        return start

    def write(
        self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, H) at slots [start, start+T); return views of slots [0, start+T).
        A tensor start int64[1] (a step replayed from a CUDA graph, decode_graph.py) returns
        every slot instead: the shapes must not depend on how full the cache is."""
        if isinstance(start, torch.Tensor):
            slots = start + torch.arange(k.shape[2], device=k.device)  # (T,)
            self.k[layer].index_copy_(2, slots, k)
            self.v[layer].index_copy_(2, slots, v)
            return self.k[layer], self.v[layer]  # (B, K, max_len, H)
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, K, S, H)

    def reorder_(self, rows: torch.Tensor) -> None:
        """In place: row i becomes old row rows[i]; rows int64[B'] may also grow the batch
        (to fan a prefilled prompt out into beams) or shrink it."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)
        self.key_mask = self.key_mask.index_select(0, rows)
        self.key_prefix = self.key_prefix.index_select(0, rows)
        self.num_real = self.num_real.index_select(0, rows)

    def narrow(self, rows: int) -> KVCache:
        """The first `rows` rows as a cache that shares this one's tensors (what a model call
        writes lands here too). Its `length` is its own: copy it back after the call."""
        view = object.__new__(KVCache)
        view.k, view.v = self.k[:, :rows], self.v[:, :rows]  # (depth, rows, K, S, H)
        view.key_mask, view.key_prefix = self.key_mask[:rows], self.key_prefix[:rows]
        view.num_real, view.length = self.num_real[:rows], self.length
        return view
