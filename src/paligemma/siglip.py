"""SigLIP ViT image encoder as PaliGemma uses it (So400m/14: no CLS token, no pooling head).

Axes (the package's legend): B images, R image side in pixels, L patches (= image tokens),
D width, N heads, H head dim, F MLP width.

    pixels (B, 3, R, R) -> conv patch embed (B, D, R/p, R/p) -> (B, L, D) + learned position table
    -> depth x pre-LN blocks [x += attn(LN(x)); x += mlp(LN(x))] -> final LayerNorm -> (B, L, D)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .activations import GeluTanh
from .config import SiglipConfig, use_fused_attention
from .project import project


class Attention(nn.Module):
    """Bidirectional multi-head attention; softmax in float32 as the reference does."""

    # PyTorch's fused attention: None (default) = for at least FUSED_ATTENTION_MIN_TOKENS patches
    # (every published model: 256 and more), True / False = always / never (see gemma.Attention).
    fused: bool | None = None
    kernel = None  # asked before PyTorch's fused attention (see gemma.Attention.kernel)

    def __init__(self, cfg: SiglipConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.o_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, seq, _ = x.shape  # seq = L
        shape = (b, seq, self.num_heads, self.head_dim)
        q, k, v = (
            t.view(shape).transpose(1, 2)  # (B, N, L, H)
            for t in project(x, self.q_proj, self.k_proj, self.v_proj)
        )
        scale = self.head_dim**-0.5
        if use_fused_attention(self.fused, seq):  # our CPU kernel where it applies, else PyTorch's
            out = self.kernel(q, k, v, None, scale) if self.kernel is not None else None
            if out is None:
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:  # the reference's arithmetic; the scale in place (autograd allows it)
            scores = (q @ k.transpose(-1, -2)).mul_(scale)  # (B, N, L, L)
            out = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, seq, -1))  # (B, L, D)


class MLP(nn.Module):
    def __init__(self, cfg: SiglipConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)
        self.act = GeluTanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An activation that offers `linear_gelu(x, fc1)` (the CPU prefill's fused kernel)
        # computes act(fc1(x)) in one call where it applies (None where not), bit for bit.
        fused = getattr(self.act, "linear_gelu", None)
        h = fused(x, self.fc1) if fused is not None else None
        return self.fc2(self.act(self.fc1(x)) if h is None else h)  # h: (B, L, F)


class Block(nn.Module):
    def __init__(self, cfg: SiglipConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class SiglipEncoder(nn.Module):
    """float[B, 3, R, R] pixels in [-1, 1] -> float[B, L, D] features (after the final norm)."""

    def __init__(self, cfg: SiglipConfig, image_size: int) -> None:
        super().__init__()
        num_patches = (image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(num_patches, cfg.width))  # (P, D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.checkpointing = False  # recompute block activations in backward (training only)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, D, R/p, R/p)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, L, D), patch index = row * W + col
        # The sum keeps the convolution's (B, D, L) memory order, and every residual add after it
        # would too: each LayerNorm copied it and each add ran strided (27 layers of a 448 px
        # image: ~150 ms of a 3.9 s prefill, 2 threads). One copy here; the values are the same.
        x = x.contiguous()
        for block in self.blocks:
            use = self.checkpointing and self.training and torch.is_grad_enabled()
            x = checkpoint(block, x, use_reentrant=False) if use else block(x)
        return self.final_norm(x)


def resample_pos_embed(pos: torch.Tensor, side: int) -> torch.Tensor:
    """Learned position table (L, D) on a sqrt(L) grid -> (side * side, D), bilinear, for
    fine-tuning at another resolution (e.g. 224 -> 448 px: 16 x 16 -> 32 x 32)."""
    old = math.isqrt(pos.shape[0])
    if old * old != pos.shape[0]:
        raise ValueError(f"{pos.shape[0]} positions do not form a square grid")
    grid = pos.detach().float().T.reshape(1, -1, old, old)  # (1, D, old, old)
    grid = F.interpolate(
        grid, size=(side, side), mode="bilinear", align_corners=False, antialias=side < old
    )
    return grid.reshape(pos.shape[1], side * side).T.to(pos.dtype).contiguous()
