"""Layers that read the same x (attention's q, k, v; GeGLU's gate, up), applied together where
their class offers it: shared by Gemma's and SigLIP's blocks."""

from __future__ import annotations

import torch
from torch import nn


def project(x: torch.Tensor, *layers: nn.Module) -> list[torch.Tensor]:
    """Each layer applied to x. Layers of one class that offers `together(layers, x)` (the
    CPU kernels: the quantised decoding kernels read and quantise x once for all, the bfloat16
    prefill runs one AMX call) run in one call where it applies (it returns None where not);
    the results are the layers' own, bit for bit. Layers with forward hooks, or any hook set
    for every module, are always called, so that the hooks run."""
    kind = type(layers[0])
    together = getattr(kind, "together", None)
    same = together is not None and all(type(m) is kind for m in layers)
    if same and not hooked(*layers):
        out = together(layers, x)
        if out is not None:
            return out
    return [m(x) for m in layers]


def hooked(*modules: nn.Module) -> bool:
    """Forward hooks that a fused call would skip: on any of `modules`, or registered for every
    module (torch.nn.modules.module's globals)."""
    from torch.nn.modules import module as m

    if m._global_forward_hooks or m._global_forward_pre_hooks:
        return True
    return any(k._forward_hooks or k._forward_pre_hooks for k in modules)
