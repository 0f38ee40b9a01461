"""The tanh GELU that SigLIP's MLP and Gemma's GeGLU share, as a module of its own, so that a
faster kernel can take its place on the CPU (quant/gelu.py's, installed at load) without the
model files knowing.

    act = GeluTanh()
    h = act(gate, up)  # gelu_tanh(gate) * up, (..., F) each; act(x): gelu_tanh(x)

With autograd the functional ops; without it the same arithmetic in place, in the first
argument's buffer (no third (..., F) buffer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeluTanh(nn.Module):
    """gelu(x, approximate="tanh"), times `up` when given (each step rounded to x's dtype)."""

    def forward(self, x: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
        if torch.is_grad_enabled():
            y = F.gelu(x, approximate="tanh")
            return y if up is None else y * up
        y = torch.ops.aten.gelu_(x, approximate="tanh")
        return y if up is None else y.mul_(up)
