"""Gemma's RMSNorm of bfloat16 CPU activations through our loop (decode_ops.cpp's `rms`, the one
a decode step's C++ block runs), for model-sized rows.

gemma.RMSNorm takes PyTorch's `rms_norm` on a float32 copy of x: a (268, 2048) prefill's norm
costs ~2.2 ms (2 threads, AMX Xeon) in its passes and temporaries, 37 of them ~80 ms of a
PaliGemma-3B-224 prefill (~8%). The loop reads each bfloat16 row once: squares summed in double
in order (four rows side by side), rsqrt(mean + eps) rounded to float32, then x * rstd * (1 + w)
in float32 and one rounding to bfloat16, rows spread over threads: 0.26 ms there. It differs
from PyTorch's float32 sums in the last bit of a few outputs (2-3 of the 548,864 in that norm);
tests/test_decode_ops.py bounds it against float64. Rows narrower than MIN_WIDTH (the tiny
test models, whose bfloat16 parity with the reference is bit for bit) keep PyTorch's op, as
does anything with autograd, another dtype or device.

`install_matvec_` (matvec.py) swaps the decoder's RMSNorm modules for CpuRMSNorm at load.
"""

from __future__ import annotations

import torch

from ..gemma import RMSNorm
from . import kernels as cpu_kernels

FAST_RMS = True  # model-sized bfloat16 CPU rows through decode_ops.cpp (False: PyTorch's op)
MIN_WIDTH = 1024  # ... of at least this many values (Gemma's 2,048 / 2,304 / 3,584)


def kernel_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """x (..., D) and the norm's weight go through the loop (module docstring); what decides is
    the same for every norm of a block (a decode step's C++ block asks it too)."""
    if not FAST_RMS or x.shape[-1] < MIN_WIDTH:
        return False
    if x.device.type != "cpu" or x.dtype != torch.bfloat16:
        return False
    if weight.dtype not in (torch.bfloat16, torch.float32) or not weight.is_contiguous():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return cpu_kernels.available()


class CpuRMSNorm(RMSNorm):
    """RMSNorm (the same weight, the same name) whose model-sized bfloat16 CPU rows go through
    decode_ops.cpp's loop (module docstring)."""

    @classmethod
    def of(cls, norm: RMSNorm) -> CpuRMSNorm:
        with torch.device("meta"):  # allocates nothing: the weight is the old one
            new = cls(norm.weight.shape[0], norm.eps)
        new.weight = norm.weight
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel_takes(x, self.weight):
            return torch.ops.paligemma_cpu.decode_rms(x.contiguous(), self.weight, self.eps)
        return super().forward(x)
