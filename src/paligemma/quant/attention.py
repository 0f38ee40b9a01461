"""Prefill attention on AMX-BF16 tiles (attend_amx.cpp) for the CPU's bfloat16 inference.

`install_matvec_` gives every SigLIP and Gemma attention module this module's `attend` as its
`kernel`; the core modules ask it first where they would call PyTorch's fused attention
(`F.scaled_dot_product_attention`) and fall back to that when it answers None. It answers
where our kernel runs and was measured faster: on the CPU, bfloat16 q, k, v, no gradient to
record, a CPU with AMX-BF16 (`cpu_kernels.amx_bf16()`), ATTENTION on, at least MIN_QUERIES
queries and a head dim of at most 512 (the fused path itself starts at 128 queries:
config.FUSED_ATTENTION_MIN_TOKENS). What it computes (an
online softmax in float32, probabilities rounded to bfloat16 for the second product, as
PyTorch's CPU flash attention does) is in attend_amx.cpp's head; it is not bit-exact with
PyTorch's kernel (tests/test_attend_amx.py bounds both against a float64 softmax).

Measured against PyTorch's fused kernel (2 threads of an AMX Xeon, one call, medians;
benchmarks/bench_prefill_attention.py, results/amx-prefill-attention-s40.json): Gemma's prefill
(8 heads, 1 kv head, head dim 256) 0.50x at 268 tokens, 0.54x at 1,036 and 4,108; SigLIP's
(16 heads of 72) 0.87x at 256 patches, 0.83x at 1,024 and 4,096.

Shapes: q (B, N, T, H), k, v (B, K, S, H), mask bool (B, 1, T, S) or None -> (B, N, T, H).
"""

from __future__ import annotations

import torch

from . import kernels as cpu_kernels

ATTENTION = True  # False: PyTorch's fused attention everywhere
MIN_QUERIES = 64
MAX_HEAD_DIM = 512  # (attend_amx's limit)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor | None:
    """softmax(scale q k^T, mask) v on our AMX kernel, or None where it does not apply (the
    module docstring)."""
    if not ATTENTION or q.device.type != "cpu" or not _taken_shape(q):
        return None
    tensors = (q, k, v)
    if any(t.dtype != torch.bfloat16 or t.stride(-1) != 1 for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if not cpu_kernels.available() or not cpu_kernels.amx_bf16():
        return None
    return torch.ops.paligemma_cpu.attend_amx(q, k, v, mask, scale)


def _taken_shape(q: torch.Tensor) -> bool:
    return q.shape[-2] >= MIN_QUERIES and q.shape[-1] <= MAX_HEAD_DIM
