"""The quantiser: a float weight's integer codes and scales (int8 per output row, int4 per group
of inputs), as linear.py's layers hold them. On the CPU, quantize.cpp does it in one pass with
the same arithmetic; elsewhere (or without the kernels) a block of rows at a time in PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels as cpu_kernels


def quantize_weight(
    w: torch.Tensor, mode: str, group: int = 64, elements: int = 2**18
) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer codes and scales (in w's dtype) of a float weight w (O, I), a block of rows
    of about `elements` weights at a time, so the float32 working copies stay small and in cache
    (quantising at load never holds a whole matrix in float32).
    int8: (int8[O, I], [O]); int4: (uint8[O, I / 2], [O, I / group])."""
    o, i = w.shape
    cpu = w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16)
    if cpu and cpu_kernels.available():  # one pass in C++, the same arithmetic
        bits = 8 if mode == "int8" else 4
        codes, scale = torch.ops.paligemma_cpu.quantize_isa(w, bits, group, cpu_kernels.isa())
        return codes, scale.to(w.dtype)
    rows = max(1, elements // i)
    if mode == "int8":
        codes = torch.empty(o, i, dtype=torch.int8, device=w.device)
        scale = torch.empty(o, dtype=w.dtype, device=w.device)
    else:
        codes = torch.empty(o, i // 2, dtype=torch.uint8, device=w.device)
        scale = torch.empty(o, i // group, dtype=w.dtype, device=w.device)
    for start in range(0, o, rows):
        part = w[start : start + rows].float()
        if mode == "int8":
            s = part.abs().amax(1).clamp(min=1e-12) / 127  # (rows,)
            c = torch.round(part / s[:, None]).clamp(-127, 127).to(torch.int8)
        else:
            c, s = int4_codes(part.view(len(part), i // group, group))
            c = c.view(len(part), i)
            c = c[:, 0::2] | (c[:, 1::2] << 4)
        codes[start : start + rows], scale[start : start + rows] = c, s.to(w.dtype)
    return codes, scale


# int4: the scales tried per group, times max |w| / 7. Five: with (1.0, 0.9, 0.8) or max |w| / 7
# alone the embedded model's int4 scores fell more than 1 point below bfloat16's (its mask
# and <loc> tokens are sensitive; benchmarks/results/embedded_eval.json has these five's)
CLIP = (1.0, 0.95, 0.9, 0.85, 0.8)


def int4_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int4 codes (uint8 0..15, value + 8) and scale (float32) of float32 groups w
    (R, G, N): per group, of the scales s = max(amax, 1e-12) * r / 7 for r in CLIP (the values
    beyond 7.5 s clipped), the one whose codes clamp(round(y), -8, 7), y = w * (1 / s), give
    the least squared error s^2 * sum((y - code)^2), summed in halves (`_halving_sum`; the
    first on a tie), as quantize.cpp's quantize_isa does it bit for bit."""
    amax = w.abs().amax(-1).clamp(min=1e-12)  # (R, G)
    best_err = best_c = best_s = None
    for r in CLIP:
        s = amax * r / 7
        y = w * (1 / s)[..., None]
        c = torch.round(y).clamp(-8, 7)  # (R, G, N)
        d = y - c
        err = _halving_sum(d * d) * (s * s)  # (R, G)
        if best_err is None:
            best_err, best_c, best_s = err, c, s
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_c = torch.where(better[..., None], c, best_c)
        best_s = torch.where(better, s, best_s)
    return (best_c + 8).to(torch.uint8), best_s


def _halving_sum(x: torch.Tensor) -> torch.Tensor:
    """x (..., N) summed over its last axis in a fixed order (zero-padded to a power of two,
    then the first half plus the second, until one is left): what vector code can match."""
    n = 1 << (x.shape[-1] - 1).bit_length()
    x = F.pad(x, (0, n - x.shape[-1]))
    while n > 1:
        n //= 2
        x = x[..., :n] + x[..., n:]
    return x[..., 0]
