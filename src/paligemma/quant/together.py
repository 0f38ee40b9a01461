"""Quantised layers that read the same x (project: attention's q, k, v; GeGLU's gate, up) as one
kernel call, each output its layer's own call bit for bit (`_QuantizedLinear.together`):

    decoding rows (the dot kernels'): one int4_dots / int8_dots call, x quantised once, one
        parallel region;
    prefill rows on AMX-BF16 (dequant_mm's AMX GEMM for every layer): one dequant_mms call, x
        re-laid out once, the threads taking spans of all the layers' outputs.

Elsewhere (no kernel for these rows, a bias, layers of different kinds) None: the caller runs
the layers one by one.
"""

from __future__ import annotations

import torch

from . import kernels as cpu_kernels
from . import matvec
from .linear import TILE, _on_cpu_inference


def together(layers, x: torch.Tensor) -> list[torch.Tensor] | None:
    """The layers' outputs for x (..., in) from one call, or None (module docstring)."""
    if any(m.bias is not None for m in layers) or not _on_cpu_inference(x):
        return None
    first, kind = layers[0], layers[0]._dot_kind()
    rows = first._dot_rows(x, kind)
    if not rows:
        return _prefill(layers, x)
    if any(m._dot_kind() != kind for m in layers):
        return None
    bits, group, _ = kind
    op = torch.ops.paligemma_cpu.int4_dots if bits == 4 else torch.ops.paligemma_cpu.int8_dots
    flat, weights = x.reshape(rows, -1), [m.weight for m in layers]
    outs = op(
        flat,
        weights,
        [m.scale for m in layers],
        group,
        *cpu_kernels.dot_path(rows),
        dtype=x.dtype,
    )
    return [out.view(*x.shape[:-1], -1) for out in outs]


def _prefill(layers, x: torch.Tensor) -> list[torch.Tensor] | None:
    """Prefill rows where every layer's product is dequant_mm's AMX GEMM (`amx_prefill`: one
    bits / group, one scale dtype) and matvec.TOGETHER is on: one dequant_mms call."""
    if not matvec.TOGETHER:
        return None
    spec, dtype = layers[0].amx_prefill(x), layers[0].scale.dtype
    if spec is None or any(m.amx_prefill(x) != spec or m.scale.dtype != dtype for m in layers):
        return None
    flat = x.reshape(-1, x.shape[-1])
    weights, scales = [m.weight for m in layers], [m.scale for m in layers]
    outs = torch.ops.paligemma_cpu.dequant_mms(flat, weights, scales, *spec, TILE)
    return [out.view(*x.shape[:-1], -1) for out in outs]  # (..., out) each
