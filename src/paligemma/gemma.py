"""Gemma (PaliGemma 1) and Gemma 2 (PaliGemma 2) decoders.

Axes: B batch, T query tokens, S key slots, D width, N query heads, K kv heads, G = N // K,
H head dim, F MLP width, V vocabulary.

Block, Gemma 1:                           Block, Gemma 2 (post_norms):
    x += attn(attn_norm(x))                   x += post_attn_norm(attn(attn_norm(x)))
    x += mlp(mlp_norm(x))                     x += post_mlp_norm(mlp(mlp_norm(x)))

RMSNorm scales by (1 + w) and computes in float32. Attention: RoPE (half-split rotation), queries
scaled by `query_scale`, Gemma 2 soft-caps the scores (tanh(s / cap) * cap) before masking, and its
local layers use the sliding-window mask; softmax in float32. The output head is the embedding
matrix (tied); Gemma 2 soft-caps the logits too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .activations import GeluTanh
from .config import GemmaConfig, use_fused_attention
from .kv_cache import KVCache
from .project import project


def _cpu_half(x: torch.Tensor) -> bool:
    """bfloat16 / float16 activations on the CPU (config.use_fused_attention)."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # stored as w; applied as (1 + w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused op, the same float32 arithmetic as x * rsqrt(mean(x^2) + eps) * (1 + w).
        y = F.rms_norm(x.float(), (x.shape[-1],), 1.0 + self.weight.float(), self.eps)
        return y.type_as(x)


def rope_angles(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, 1, T, H) for integer positions (B, T); angles in float32."""
    exponent = torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)  # (H/2,)
    angles = positions.float()[..., None] * inv_freq  # (B, T, H/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, H)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, N, T, H) by the angles; the two halves of H are the (real, imag) parts."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


# The CPU's fused attention groups query heads itself (enable_gqa) from this many queries; fewer
# (decode steps) are grouped here, G queries in one call: PyTorch's grouping reads K and V once
# per head. Measured (2-core AMD EPYC, bfloat16, 8 query heads on 1 kv head, 256 dims): 1 query
# on 280 keys 0.96 -> 0.17 ms, 8 rows of 1 query 7.2 -> 0.50 ms; 64 queries 2.2 -> 2.0 ms;
# 268 queries 5.9 vs 6.8 ms and 1034 queries 75 vs 123 ms in its favour.
GQA_MIN_QUERIES = 128
# GemmaDecoder.forward's `last` cuts the final block's rows from this many tokens (a prefill of
# an image: 256 image tokens and more); shorter inputs, such as the tiny test models', keep every
# row, and with them the reference's bits for the first token (tests/test_parity.py).
PRUNE_MIN_TOKENS = 128


class Attention(nn.Module):
    # PyTorch's fused scaled_dot_product_attention for layers without a soft-cap: None (default)
    # = for calls of at least FUSED_ATTENTION_MIN_TOKENS queries (prefill) and for decode steps in
    # half precision on the CPU (config.use_fused_attention), True / False = always / never
    # (`model.set_fused_attention_`). Fused is not bit-exact with the reference's eager softmax
    # (~1e-6 on float32 logits; benchmarks/RESULTS.md, "Prefill"); the eager path is. By default
    # a half-precision CPU decode step on a soft-capped layer (eager) takes its two products in
    # float32 (`wide`).
    fused: bool | None = None
    # Without autograd, each row of a batch gets the bits it gets alone (`model.set_rows_alone_`;
    # the server turns it on): padded prefill rows and decode rows attend over their own key
    # span only. Off by default: then a left-padded batch is bit-exact with transformers' batch.
    rows_alone: bool = False
    # A prefill's attention kernel asked before PyTorch's fused one: kernel(q, k, v, mask, scale)
    # -> (B, N, T, H), or None where it does not apply (the CPU's: quant/attention.attend).
    kernel = None

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.scale, self.softcap = cfg.query_scale, cfg.attn_softcap
        self.q_proj = nn.Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: KVCache | None,
        layer: int,
        start: int,
        last: int | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), mask bool (B, 1, T, S) -> (B, T, D). With a cache, S = start + T.
        last: the outputs of the last `last` positions only, (B, last, D); every position's
        keys and values are still computed (and written to the cache)."""
        b, t, _ = x.shape
        n, kv, h = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)
        q = q.view(b, t, n, h).transpose(1, 2)  # (B, N, T, H)
        k = k.view(b, t, kv, h).transpose(1, 2)  # (B, K, T, H)
        v = v.view(b, t, kv, h).transpose(1, 2)  # (B, K, T, H)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.write(layer, start, k, v)  # (B, K, S, H)
        if last is not None and last < t:  # (B, N, last, H) queries, (B, 1, last, S) mask
            q, mask, t = q[:, :, -last:], mask[:, :, -last:], last
        rows = self.rows_alone and not torch.is_grad_enabled()
        if rows and t == 1:
            out = self._one_query_rows(q, k, v, mask)
        elif rows and t == k.shape[2]:  # a prefill from slot 0
            out = self._prefill_rows(q, k, v, mask)
        else:
            out = self._attend(q, k, v, mask, self._use_fused(t, q))
        return self.o_proj(out.transpose(1, 2).reshape(b, t, n * h))

    def _one_query_rows(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """A decode step of several rows, q (B, N, 1, H): each row attends over its own keys
        only, when they are one contiguous span (its prompt and tokens so far, or its window),
        so its sums run over exactly the keys it has alone, whatever padding or pool slots
        surround them in the batch: the bits it gets alone (the server's guarantee)."""
        allowed = mask[:, 0, 0]  # (B, S)
        s = allowed.shape[-1]
        first = allowed.int().argmax(-1)  # (B,)
        end = s - allowed.flip(-1).int().argmax(-1)
        count = allowed.sum(-1)
        fused = self._use_fused(1, q)
        if not bool(((end - first) == count).all()):
            return self._attend(q, k, v, mask, fused)
        out = torch.empty_like(q)
        for row, (a, z) in enumerate(zip(first.tolist(), end.tolist(), strict=True)):
            r = slice(row, row + 1)
            out[r] = self._attend(q[r], k[r, :, a:z], v[r, :, a:z], mask[r, :, :, a:z], fused)
        return out

    def _use_fused(self, queries: int, q: torch.Tensor) -> bool:
        return self.softcap is None and use_fused_attention(self.fused, queries, _cpu_half(q))

    def _prefill_rows(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """A prefill (from slot 0), row by row where rows carry left padding: q (B, N, T, H),
        k, v (B, K, T, H), mask (B, 1, T, T) -> (B, N, T, H). Softmax and fused-kernel sums
        depend on where the real keys start, so a padded row runs on its real span alone, fused
        or eager as that span's length decides: each row then gets the bits it gets alone (the
        server's batching guarantee). Padding queries' outputs are zeros."""
        t = q.shape[2]
        lead = (~mask[:, 0].any(1)).int().cumprod(-1).sum(-1).tolist()  # leading pad keys, (B,)
        if not any(lead):
            return self._attend(q, k, v, mask, self._use_fused(t, q))
        out = q.new_zeros(q.shape)
        for row, p in enumerate(lead):
            r, span = slice(row, row + 1), slice(p, None)
            keys = (k[r, :, span], v[r, :, span])
            out[r, :, span] = self._attend(
                q[r, :, span], *keys, mask[r, :, span, span], self._use_fused(t - p, q)
            )
        return out

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, fused: bool
    ) -> torch.Tensor:
        """q (B, N, T, H), k, v (B, K, S, H), mask (B, 1, T, S) -> (B, N, T, H), fused or eager."""
        b, n, t, h = q.shape
        kv = k.shape[1]
        if fused and q.device.type == "cpu" and (kv == n or t >= GQA_MIN_QUERIES):
            # a prefill: the CPU kernel groups the heads itself: no (B, 1, G*T, S) mask copy,
            # the same bits (measured: 19 vs 27 ms a 448 px layer)
            gqa = kv != n
            out = self.kernel(q, k, v, mask, self.scale) if self.kernel is not None else None
            if out is not None:  # (our CPU kernel, where it applies: quant/attention.py)
                return out
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa
            )
        # Kv head g serves query heads g*G ... g*G+G-1: group the queries instead of copying k, v
        # (a decode step: the G queries in one call, K and V read once).
        q = q.reshape(b, kv, (n // kv) * t, h)  # (B, K, G*T, H)
        if fused:  # (B, 1, G*T, S): row g*T + t is query t (one query: the mask broadcasts)
            rows = mask if t == 1 else mask.repeat(1, 1, n // kv, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=rows, scale=self.scale)
        else:  # (B, K, G*T, H)
            out = self._eager(q, k, v, mask, self.fused is None and t == 1 and _cpu_half(q))
        return out.view(b, n, t, h)

    def _eager(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, wide: bool
    ) -> torch.Tensor:
        """The reference's arithmetic: q (B, K, G*T, H), k, v (B, K, S, H), mask (B, 1, T, S)
        -> (B, K, G*T, H). Scores in the model dtype, softmax in float32. The scale and the mask
        are applied in place (autograd allows it), the soft-cap too without autograd: the same
        values with fewer (B, N, T, S) temporaries. `wide`: both products in float32, each
        rounded to the model dtype as the reference's are (only their sums' order differs)."""
        b, t, s = mask.shape[0], mask.shape[2], k.shape[2]
        if wide:
            scores = (q.float() @ k.float().transpose(-1, -2)).to(q.dtype)
        else:
            scores = q @ k.transpose(-1, -2)
        scores = scores.view(b, -1, t, s).mul_(self.scale)  # (B, N, T, S)
        if self.softcap is not None and torch.is_grad_enabled():
            scores = torch.tanh(scores / self.softcap) * self.softcap
        elif self.softcap is not None:
            scores.div_(self.softcap).tanh_().mul_(self.softcap)
        scores = scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        probs = probs.view(b, k.shape[1], -1, s)
        if wide:
            return (probs.float() @ v.float()).to(v.dtype)
        return probs @ v  # (B, K, G*T, H)


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.width, bias=False)
        self.act = GeluTanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An activation that offers `geglu(x, gate_proj, up_proj)` (the CPU prefill's fused
        # kernel) computes act(gate(x), up(x)) in one call where it applies (None where not),
        # bit for bit the same.
        geglu = getattr(self.act, "geglu", None)
        h = geglu(x, self.gate_proj, self.up_proj) if geglu is not None else None
        if h is None:
            gate, up = project(x, self.gate_proj, self.up_proj)  # (B, T, F) each
            h = self.act(gate, up)
        return self.down_proj(h)


class Block(nn.Module):
    def __init__(self, cfg: GemmaConfig, local: bool) -> None:
        super().__init__()
        self.local = local  # sliding-window layer?
        self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = MLP(cfg)
        if cfg.post_norms:
            self.post_attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
            self.post_mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        else:
            self.post_attn_norm = self.post_mlp_norm = nn.Identity()

    def forward(self, x, rope, masks, cache, layer, start, last=None):
        """x (B, T, D) -> (B, T, D), or (B, last, D): the last `last` positions only (their
        keys and values still from all T; see Attention.forward)."""
        mask = masks[1] if self.local else masks[0]
        h = self.attn(self.attn_norm(x), rope, mask, cache, layer, start, last)
        x = (x if last is None else x[:, -last:]) + self.post_attn_norm(h)
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class TiedHead(nn.Module):
    """The output head: logits through the tied embedding matrix. It holds no tensor of its own
    (the state dict has only `embed.weight`); features replace it by name with modules called
    the same way, e.g. a quantised copy of the matrix that ignores the float one."""

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """h (B, T, D), weight (V, D) -> logits (B, T, V)."""
        # As rows (B*T, D): given a strided h (such as the slice of the last position), F.linear
        # takes a batched product that copies the whole (V, D) matrix (1 GB for Gemma's
        # vocabulary) whenever the weight does not require grad (frozen, or inference).
        return F.linear(h.reshape(-1, h.shape[-1]), weight).view(*h.shape[:-1], -1)


class GemmaDecoder(nn.Module):
    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)  # also the output head (tied)
        self.blocks = nn.ModuleList(Block(cfg, local) for local in cfg.layer_is_local)
        self.final_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.head = TiedHead()  # features swap it by name (quantised copy, CPU matrix-vector)
        self.checkpointing = False  # recompute block activations in backward (training only)

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype: the embedding's (features may swap it for one that has no
        `weight`, such as quant.linear.Int8Embedding, which gives its `dtype`)."""
        embed = self.embed
        return embed.weight.dtype if isinstance(embed, nn.Embedding) else embed.dtype

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """int[B, T] -> float[B, T, D]; scaled by sqrt(D) rounded to the weight dtype."""
        rows = self.embed(ids)  # (B, T, D)
        return rows * torch.tensor(self.cfg.width**0.5, dtype=rows.dtype)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        masks: tuple[torch.Tensor, torch.Tensor | None],
        cache: KVCache | None = None,
        start: int = 0,
        last: int | None = None,
    ) -> torch.Tensor:
        """Embeddings (B, T, D), positions int (B, T), (global, local) bool masks (B, 1, T, S)
        -> final-normed hidden states (B, T, D), or (B, last, D) for the last `last` positions
        only (a prefill for its next token): then the final block, whose other positions'
        outputs nothing reads, computes its queries, attention output and MLP for those rows
        alone (its keys and values for all; PaliGemma-3B, paired on a 2 vCPU AMX Xeon: the
        prefill 0.975x / 0.955x at 224 px in two sessions, at 448 px 0.938x / 1.000x, inside
        that host's noise; benchmarks/ab_prefill.py). Inputs under PRUNE_MIN_TOKENS tokens run
        every row in every block, then give their last `last`."""
        t = x.shape[1]
        cut = last if last is not None and last < t and t >= PRUNE_MIN_TOKENS else None
        rope = rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, block in enumerate(self.blocks):
            keep = cut if i == len(self.blocks) - 1 else None
            if self.checkpointing and self.training and cache is None:
                x = checkpoint(block, x, rope, masks, cache, i, start, keep, use_reentrant=False)
            else:
                x = block(x, rope, masks, cache, i, start, keep)
        return self.final_norm(x if last is None else x[:, -last:])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, V) through the tied embedding, soft-capped for Gemma 2."""
        logits = self.head(h, getattr(self.embed, "weight", None))  # a quantised head: its own
        if self.cfg.final_softcap is not None:
            cap = self.cfg.final_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits
