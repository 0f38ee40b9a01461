"""The tanh GELU of bfloat16 CPU activations through our kernel (gelu.cpp), GeGLU's product fused.

PyTorch's CPU kernel for `gelu(x, approximate="tanh")` takes ~3 ns an element a thread in
bfloat16, ~10% of a 224 px prefill. gelu.cpp computes the same function as x / (1 + exp(-2u))
in float32 vectors (AVX-512, AVX2, scalar: the same bits) and rounds as PyTorch does (gelu
rounded to bfloat16, then times `up`, rounded again): 2.2 vs 7.1 ms on 266 x 16384 values, 3.2
vs 8.2 ms with the product (2 threads, Xeon). Every bfloat16 input gives the exact GELU
correctly rounded (-0 where it is under 1e-37, as PyTorch's); PyTorch's kernel differs in 150
of the 65,536, all at x <= -2.98 where its 1 + tanh(u) cancels (by at most 1.5e-5).

`install_matvec_` (matvec.py) swaps the models' GeluTanh modules for CpuGeluTanh at load; the
kernel takes the place of GeluTanh's in-place branch (autograd off) for bfloat16 CPU tensors,
everything else keeps GeluTanh's ops. Where a prefill takes the AMX GEMM, the GELU also runs
inside it: Gemma's MLP asks `geglu` (gate, up and the product in one call), SigLIP's `linear_gelu`
(fc1 and its GELU); both give the unfused ops' bits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..activations import GeluTanh
from ..project import hooked
from . import kernels as cpu_kernels
from .linear import TILE, Int4Linear, Int8Linear  # TILE: output rows a thread takes at a time

FAST_GELU = True  # bfloat16 CPU activations through gelu.cpp (False: PyTorch's kernel)
# Gemma's MLP prefill on AMX as one call (bf16_geglu: GeGLU's GELU and product applied to the
# GEMMs' float32 sums before they leave the thread; False: two bf16_mm calls and gelu_tanh_)
FUSED_GEGLU = True
# SigLIP's fc1 prefill on AMX with its GELU applied in the GEMM's store (bf16_mm gelu=True;
# False: bf16_mm, then gelu_tanh_)
FUSED_GELU = True


def _kernel_takes(x: torch.Tensor, up: torch.Tensor | None) -> bool:
    """Contiguous bfloat16 CPU tensors (up shaped like x) where GeluTanh works in place: with
    autograd off."""
    if not FAST_GELU or torch.is_grad_enabled():
        return False
    tensors = (x,) if up is None else (x, up)
    if any(t.device.type != "cpu" or t.dtype != torch.bfloat16 for t in tensors):
        return False
    if not all(t.is_contiguous() for t in tensors) or (up is not None and up.shape != x.shape):
        return False
    return cpu_kernels.available()


class CpuGeluTanh(GeluTanh):
    """GeluTanh whose bfloat16 CPU activations go through gelu.cpp, in place; for Gemma's MLP
    also `geglu`, its hidden layer in one call where the prefill takes our AMX GEMM."""

    def forward(self, x: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
        if _kernel_takes(x, up):
            return torch.ops.paligemma_cpu.gelu_tanh_(x, up, cpu_kernels.isa())
        return super().forward(x, up)

    def geglu(self, x: torch.Tensor, gate: nn.Module, up: nn.Module) -> torch.Tensor | None:
        """gelu_tanh(gate(x)) * up(x) (..., out) in one call, bit for bit what the two
        projections and this module's forward give, where both projections are plain
        MatVecLinears whose rows take the AMX GEMM (matvec's "amx" path: bf16_geglu) or int8 /
        int4 layers of one kind whose rows take dequant_mm's AMX GEMM (`amx_prefill`:
        dequant_geglu), without bias, no hooks are set on them, on this module or for every
        module, autograd is off (forward's condition for gelu.cpp), and FAST_GELU and
        FUSED_GEGLU are on; else None (the caller runs the three)."""
        from .matvec import MatVecLinear, prefill_path  # (matvec imports this module)

        if not _fusing(FUSED_GEGLU):
            return None
        kind = type(gate)  # (a wrapped layer, e.g. LoRA's, has none of these kinds' tensors)
        if kind not in (MatVecLinear, Int8Linear, Int4Linear) or type(up) is not kind:
            return None
        if gate.bias is not None or up.bias is not None or gate.weight.shape != up.weight.shape:
            return None
        if hooked(self, gate, up):
            return None
        flat = x.reshape(-1, x.shape[-1])
        ops = torch.ops.paligemma_cpu
        if kind is MatVecLinear:
            if gate.weight.dtype != up.weight.dtype or any(
                prefill_path(x, m.weight, None, m.rows_alone) != "amx" for m in (gate, up)
            ):
                return None
            out = ops.bf16_geglu(flat, gate.weight, up.weight, TILE)
        else:
            spec = gate.amx_prefill(x)
            if spec is None or spec != up.amx_prefill(x) or gate.scale.dtype != up.scale.dtype:
                return None
            w = (gate.weight, gate.scale, up.weight, up.scale)
            out = ops.dequant_geglu(flat, *w, *spec, TILE)
        return out.view(*x.shape[:-1], -1)  # (..., out)

    def linear_gelu(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor | None:
        """gelu_tanh(layer(x)) (..., out) in one call (bf16_mm gelu=True), bit for bit what the
        layer and this module's forward give, where the layer is a plain MatVecLinear whose rows
        take the AMX GEMM (matvec's "amx" path), no hooks are set on it, on this module or for
        every module, autograd is off, and FAST_GELU and FUSED_GELU are on; else None (the
        caller runs both)."""
        from .matvec import MatVecLinear, prefill_path  # (matvec imports this module)

        if not _fusing(FUSED_GELU) or type(layer) is not MatVecLinear or hooked(self, layer):
            return None
        if prefill_path(x, layer.weight, layer.bias, layer.rows_alone) != "amx":
            return None
        bias = None if layer.bias is None else layer.bias.float()
        out = torch.ops.paligemma_cpu.bf16_mm(
            x.reshape(-1, x.shape[-1]), layer.weight, bias, TILE, True
        )
        return out.view(*x.shape[:-1], -1)  # (..., out)


def _fusing(switch: bool) -> bool:
    """A fused call may stand in for the GELU: FAST_GELU and its own switch on, and autograd off
    (with it on, forward takes PyTorch's GELU: other bits)."""
    return FAST_GELU and switch and not torch.is_grad_enabled()
