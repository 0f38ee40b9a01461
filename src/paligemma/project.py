"""Layers that read the same x (attention's q, k, v; GeGLU's gate, up), applied together where
their class offers it: shared by Gemma's and SigLIP's blocks."""

from __future__ import annotations

import torch
from torch import nn


def project(x: torch.Tensor, *layers: nn.Module) -> list[torch.Tensor]:
    """Each layer applied to x. Layers of one class that offers `together(layers, x)` (the
    quantised decoding kernels: x read and quantised once for all) run in one call where it
    applies (it returns None where not); the results are the layers' own, bit for bit. Layers
    with forward hooks are always called, so that their hooks run."""
    kind = type(layers[0])
    together = getattr(kind, "together", None)
    same = together is not None and all(type(m) is kind for m in layers)
    if same and not any(m._forward_hooks or m._forward_pre_hooks for m in layers):
        out = together(layers, x)
        if out is not None:
            return out
    return [m(x) for m in layers]
