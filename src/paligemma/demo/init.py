"""The demo model as its training starts it: the random initialisation of the EMBEDDED model
(2D sin-cos position table, `<loc>` embeddings that start ordered) and the auxiliary dense head
that trains the image encoder beside it (thrown away after training).

Shapes: B batch, P patches, D vision width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PaliGemmaConfig
from ..model import PaliGemma
from . import synthetic


def sincos_2d(side: int, width: int) -> torch.Tensor:
    """float[side*side, width]: 2D sin-cos position features (MoCo v3 / big_vision 'sincos2d')."""
    quarter = width // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter) / quarter)
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ys = y.flatten()[:, None].float() * omega
    xs = x.flatten()[:, None].float() * omega
    return torch.cat([xs.sin(), xs.cos(), ys.sin(), ys.cos()], dim=1)


def sincos_1d(n: int, width: int) -> torch.Tensor:
    """float[n, width]: sin-cos features of 0..n-1, periods from 2n down to 2, std 1/sqrt(2)
    per column (so row k and row k+1 are near, row k and row k+n/2 far)."""
    half = width // 2
    omega = (2 * math.pi / (2 * n)) * n ** (torch.arange(half) / (half - 1))
    angle = torch.arange(n)[:, None].float() * omega
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def new_model(cfg: PaliGemmaConfig, seed: int, loc_ids: list[int] | None = None) -> PaliGemma:
    """Random init: linear / conv weights N(0, 0.02), zero biases, embeddings N(0, 0.02), unit
    norms, 2D sin-cos position table. `loc_ids` (the ids of <loc0000>..<loc1023>, in order):
    those embedding rows -- tied with the output head -- start as 1D sin-cos features of the
    coordinate, scaled to std 0.02, so that the decoder starts knowing which coordinates are
    near each other (without it, writing positions as tokens came ~2,000 steps later in one of
    two runs: see the model card)."""
    torch.manual_seed(seed)
    model = PaliGemma(cfg)
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    with torch.no_grad():
        side = cfg.image_size // cfg.vision.patch_size
        model.vision.pos_embed.copy_(sincos_2d(side, cfg.vision.width))
        if loc_ids is not None:
            embed = model.decoder.embed.weight
            table = sincos_1d(len(loc_ids), embed.shape[1]) * (0.02 / math.sqrt(0.5))
            embed.index_copy_(0, torch.tensor(loc_ids), table)
    return model


class AuxHead(nn.Module):
    """Training aid: per patch, shape x colour logits and the object's box (thrown away)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, synthetic.NUM_PATCH_CLASSES + 4)

    def loss(self, feats: torch.Tensor, classes: torch.Tensor, boxes: torch.Tensor):
        """feats float[B, P, D]; classes int[B, P]; boxes float[B, P, 4] in [0, 1]."""
        out = self.proj(feats).float()
        ce = F.cross_entropy(out[..., :-4].flatten(0, 1), classes.flatten())
        fg = classes > 0
        l1 = F.l1_loss(out[..., -4:][fg].sigmoid(), boxes[fg]) if fg.any() else out.sum() * 0
        return ce + 5 * l1
