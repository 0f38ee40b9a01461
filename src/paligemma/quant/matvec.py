"""The CPU path of plain (float) linears: our kernels for decoding's rows and for prefill.

One row of activations on the CPU is a matrix-vector product, bound by reading the weight. A
bfloat16 row against a model-sized weight (MV_MIN_WEIGHTS) takes our kernel (bf16_mv.cpp:
float32 sums, one rounding; a 16,384 x 2,048 weight from memory on a 2-core AMD EPYC (Zen 5)
47.7-53.2 GB/s against torch.mv's 21.2 and F.linear's 30.3) on our kernels' vector paths
(OWN_MV), and so do 2..FEW_ROWS rows under `set_rows_alone_` (the server): its bits for a row do
not depend on the other rows. Elsewhere (float32, small weights, no kernels) with few threads
torch.mv runs a row faster than F.linear in bfloat16 (~1.6x on one thread, 16% from memory on
two; as fast in float32); with many, F.linear does (a 16-core Xeon, 16 threads: PaliGemma-3B-224
decoding 9.3-10.0 tok/s through F.linear against 6.0-6.5 through torch.mv). So such a row takes
torch.mv up to MV_MAX_THREADS threads (torch.get_num_threads()), F.linear above, except under
rows_alone, where it always takes torch.mv: torch.mv gives a row the bits that 2..16-row
products give it, F.linear's single-row product does not (its sums run in another order where
the inputs are many, e.g. Gemma's 16,384-wide down projection). More than FEW_ROWS rows and
at most MAX_ROWS in bfloat16 (a 224 px prefill) without autograd, where the CPU has AMX-BF16
(`cpu_kernels.amx_bf16()`, AMX_PREFILL) and the inputs are a multiple of 32: our tile GEMM
(dequant_amx.h's, the weight's rows copied into its panels: bf16_mm), float32 sums, the bias
added in float32, one rounding, each row's result independent of the other rows; oneDNN's
F.linear re-lays the weight out on every call, a cost that more rows amortise: from about 400
rows its GEMM is the faster one. Where the CPU has no fast bfloat16 GEMM at all
(`cpu_kernels.f32_prefill()`: no AMX-BF16, and PyTorch's oneDNN takes no bfloat16 here, e.g.
AVX2-only CPUs), F32_MIN_ROWS bfloat16 rows and more take float32 products instead (f32_mm:
our float32 GEMM, the weight widened as it is packed, one rounding at the end); under
`rows_alone` only more than FEW_ROWS rows (a prefill) and only on its vector paths, whose
rows' bits do not depend on the batch (PyTorch's float32 GEMM, the scalar path's, rounds by
row count).
`install_matvec_(model)` swaps every plain nn.Linear for a MatVecLinear and the decoder's tied
head for a MatVecHead, by name and sharing the very same parameters, so state dicts, LoRA and
quantize_ see the model as before (and the MLPs' GeluTanh for gelu.py's CpuGeluTanh, the patch
embedding's nn.Conv2d for a CpuConv2d, float32 products where f32_prefill); anything
else (2..FEW_ROWS rows, more than MAX_ROWS on AMX, float32, another device) takes F.linear, as the
core layers do.

Shapes: x (..., in features), weight (out features, in features); one row = x holds a single
vector (every leading axis 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import GeluTanh
from ..gemma import Attention as GemmaAttention
from ..gemma import Block, GemmaDecoder, RMSNorm, TiedHead
from ..siglip import Attention as SiglipAttention
from . import kernels as cpu_kernels
from .attention import attend
from .gelu import CpuGeluTanh
from .linear import F32_TILE, TILE  # output rows a thread takes at a time (AMX; float32)
from .malloc import keep_freed_blocks
from .rmsnorm import CpuRMSNorm

FEW_ROWS = 16  # up to this many rows F.linear (the server's batched = alone: torch.mv's bits)
# ... and past this many F.linear again: ours / F.linear GEMM time on PaliGemma-3B's shapes, 1
# thread: 0.93x at 260 rows, 0.99x at 384, 1.12x at 512, 1.2-1.4x at 1030 (benchmarks/RESULTS.md)
MAX_ROWS = 384
AMX_PREFILL = True  # more rows in bfloat16 on AMX-BF16: our GEMM (False: F.linear)
MV_MAX_THREADS = 4  # one row through torch.mv up to this many threads (measured at 2 and 16)
# One bfloat16 row (or up to FEW_ROWS under rows_alone) through our kernel (bf16_mv.cpp) where
# the weight has MV_MIN_WEIGHTS elements or more (smaller ones keep PyTorch's bits; the tiny
# models' parity with transformers is bit for bit). Measured: the module docstring's figures
# (benchmarks/results/zen5-bf16-mv-kernels-s42.json).
OWN_MV = True
MV_MIN_WEIGHTS = 2**18
# float32 products (cpu_kernels.f32_prefill()) from this many rows: a 2-core AMD EPYC (AVX2),
# 16384 x 2048 and 2048 x 16384 bfloat16 weights, f32_mm's time over F.linear's: 2 rows 1.1x,
# 3 rows 0.77x, 4 rows 0.62x, 8 rows 0.43x, 16 rows 0.26x (266 rows: ~1/7)
F32_MIN_ROWS = 3
# ... for weights of at least this many elements: smaller products gain nothing, and keep
# PyTorch's bits (its bfloat16 fallback's sums run in another order for some widths; the tiny
# models' parity with transformers in bfloat16 is bit for bit, tested)
F32_MIN_WEIGHTS = 2**18


# Prefill projections that read the same x (q, k, v) as one AMX call (MatVecLinear.together:
# bf16_mms; the int8 / int4 layers', together.py: dequant_mms; False: a call each)
TOGETHER = True


def own_mv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows_alone: bool
) -> bool:
    """bf16_mv.cpp's product for x's rows (module docstring): one bfloat16 row, or up to
    FEW_ROWS under rows_alone (its bits per row do not depend on the others), a weight of
    MV_MIN_WEIGHTS elements or more, our kernels' vector paths, OWN_MV."""
    rows = x.numel() // max(1, x.shape[-1])
    if not OWN_MV or not (rows == 1 or (rows_alone and 1 < rows <= FEW_ROWS)):
        return False
    if weight.numel() < MV_MIN_WEIGHTS or weight.dim() != 2 or weight.stride(-1) != 1:
        return False
    if not _bf16_inference(x, weight, bias) or not cpu_kernels.available():
        return False
    return cpu_kernels.isa() >= 1


def _matvec(x: torch.Tensor, rows_alone: bool = False) -> bool:
    """One row of x on the CPU, to go through torch.mv (module docstring)."""
    if x.device.type != "cpu" or x.numel() != x.shape[-1]:
        return False
    return rows_alone or torch.get_num_threads() <= MV_MAX_THREADS


def _bf16_inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """bfloat16 x and weight on the CPU, no gradient to record."""
    if x.device.type != "cpu" or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16:
        return False
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _f32_products(weight: torch.Tensor, rows_alone: bool, alone_ok: bool = False) -> bool:
    """Float32 products for a bfloat16 weight (module docstring): where the CPU has no fast
    bfloat16 GEMM, a weight of F32_MIN_WEIGHTS elements or more; under rows_alone (the
    server's bits) only where the caller allows it (`alone_ok`: a prefill's rows, a patch
    embedding's patches) and on our GEMM's vector paths, where a row's bits do not depend on
    the others (as the AMX path's)."""
    if weight.numel() < F32_MIN_WEIGHTS or not cpu_kernels.f32_prefill():
        return False
    return not rows_alone or (alone_ok and cpu_kernels.isa() >= 1)


def prefill_path(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows_alone: bool
) -> str | None:
    """ "amx" (bf16_mm), "f32" (f32_mm) or None (F.linear, torch.mv) for x's rows (module
    docstring)."""
    rows = x.numel() // max(1, x.shape[-1])
    if rows < F32_MIN_ROWS or not _bf16_inference(x, weight, bias):
        return None
    if not cpu_kernels.available():
        return None
    amx = AMX_PREFILL and FEW_ROWS < rows <= MAX_ROWS and x.shape[-1] % 32 == 0
    if amx and cpu_kernels.amx_bf16():
        return "amx"
    return "f32" if _f32_products(weight, rows_alone, rows > FEW_ROWS) else None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    rows_alone: bool = False,
) -> torch.Tensor:
    """x (..., in) @ weight (out, in).T (+ bias) -> (..., out); bfloat16 decoding rows through
    bf16_mv, other single CPU rows through torch.mv (with few threads, or `rows_alone`),
    bfloat16 prefill rows through our AMX-BF16 GEMM, or in float32 products where the CPU has no
    fast bfloat16 GEMM (module docstring)."""
    if own_mv(x, weight, bias, rows_alone):
        out = torch.ops.paligemma_cpu.bf16_mv(x.reshape(-1, x.shape[-1]), weight, cpu_kernels.isa())
        return (out if bias is None else out + bias).view(*x.shape[:-1], -1)  # (..., out)
    path = prefill_path(x, weight, bias, rows_alone)
    if path is not None:
        flat = x.reshape(-1, x.shape[-1])
        if path == "amx":
            b = None if bias is None else bias.float()
            out = torch.ops.paligemma_cpu.bf16_mm(flat, weight, b, TILE)
        else:
            out = torch.ops.paligemma_cpu.f32_mm(flat, weight, bias, F32_TILE, cpu_kernels.isa())
        return out.view(*x.shape[:-1], -1)  # (..., out)
    if not _matvec(x, rows_alone):
        return F.linear(x, weight, bias)
    out = torch.mv(weight, x.reshape(-1))  # (out,)
    return (out if bias is None else out + bias).view(*x.shape[:-1], -1)


class MatVecLinear(nn.Linear):
    """nn.Linear (same tensors, same names) whose CPU rows take `linear`'s paths."""

    rows_alone = False  # set by model.set_rows_alone_ (the server's bits: module docstring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.rows_alone)

    @staticmethod
    def together(layers, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Layers that read the same x (project: q, k, v) as one bf16_mms call where each takes
        the AMX GEMM (x re-laid out once, one parallel region over all their outputs): each
        output its layer's own bits. None where not, or with TOGETHER off (project steps aside
        for hooks)."""
        if not TOGETHER or type(layers[0]) is not MatVecLinear:
            return None
        if any(prefill_path(x, m.weight, m.bias, m.rows_alone) != "amx" for m in layers):
            return None
        biases = [None if m.bias is None else m.bias.float() for m in layers]
        flat = x.reshape(-1, x.shape[-1])
        outs = torch.ops.paligemma_cpu.bf16_mms(flat, [m.weight for m in layers], biases, TILE)
        return [out.view(*x.shape[:-1], -1) for out in outs]  # (..., out) each


class MatVecHead(TiedHead):
    """The tied output head, its CPU rows through `linear` (per decoded token the largest
    matrix read)."""

    rows_alone = False  # as MatVecLinear's

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return linear(h, weight, None, self.rows_alone)


class CpuConv2d(nn.Conv2d):
    """nn.Conv2d (same tensors, same names; SigLIP's patch embedding) that takes float32
    products for bfloat16 CPU inputs where the CPU has no fast bfloat16 GEMM
    (cpu_kernels.f32_prefill(), weights of F32_MIN_WEIGHTS elements and more, no gradient to
    record): PyTorch's bfloat16 convolution there is a slow loop (a 224 px patch embedding of
    SigLIP So400m on a 2-core AMD EPYC: 289 ms, against 6.6 ms widened to float32 and rounded
    back once). Under rows_alone (the server) a patch convolution (stride = kernel, no padding)
    takes f32_mm over its patches on our GEMM's vector paths instead, each patch's bits
    independent of the batch; any other convolution keeps PyTorch's bfloat16 one there."""

    rows_alone = False  # set by model.set_rows_alone_ (module docstring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if not _bf16_inference(x, w, b) or not _f32_products(w, self.rows_alone, True):
            return super().forward(x)
        if self.rows_alone:
            return self._patch_mm(x) if self._patches(x) else super().forward(x)
        wide = None if b is None else b.float()
        return self._conv_forward(x.float(), w.float(), wide).to(torch.bfloat16)

    def _patches(self, x: torch.Tensor) -> bool:
        """A patch embedding: non-overlapping kernel-sized patches tiling x (B, C, H, W)."""
        plain = self.padding in ((0, 0), "valid") and self.dilation == (1, 1) and self.groups == 1
        k = self.kernel_size
        fits = x.dim() == 4 and x.shape[2] % k[0] == 0 and x.shape[3] % k[1] == 0
        return plain and tuple(self.stride) == tuple(k) and fits

    def _patch_mm(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, O, H / kh, W / kw): f32_mm of the patches (rows, C * kh * kw)."""
        (kh, kw), (n, c, h, w) = self.kernel_size, x.shape
        gh, gw = h // kh, w // kw
        rows = x.reshape(n, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * kh * kw)
        weight = self.weight.reshape(self.out_channels, -1)
        out = torch.ops.paligemma_cpu.f32_mm(rows, weight, self.bias, F32_TILE, cpu_kernels.isa())
        return out.view(n, gh, gw, -1).permute(0, 3, 1, 2)


def _swapped(module: nn.Module) -> nn.Module | None:
    """The CPU twin of `module`, holding its parameters; None when it has none."""
    if type(module) is TiedHead:
        return MatVecHead()
    if type(module) is GeluTanh:
        return CpuGeluTanh()
    if type(module) is RMSNorm:
        return CpuRMSNorm.of(module)
    if type(module) is nn.Conv2d:
        return _conv_twin(module)
    if type(module) is not nn.Linear:
        return None
    with torch.device("meta"):  # allocates nothing: the parameters are the old ones
        new = MatVecLinear(module.in_features, module.out_features, module.bias is not None)
    new.weight, new.bias = module.weight, module.bias
    return new


def _conv_twin(module: nn.Conv2d) -> CpuConv2d:
    m = module
    with torch.device("meta"):  # allocates nothing: the parameters are the old ones
        new = CpuConv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
    new.weight, new.bias = m.weight, m.bias
    return new


def install_matvec_(model: nn.Module) -> nn.Module:
    """In place: every plain nn.Linear becomes a MatVecLinear, the tied head a MatVecHead, the
    tanh GELU a CpuGeluTanh (gelu.py), Gemma's RMSNorm a CpuRMSNorm (rmsnorm.py), every plain
    nn.Conv2d a CpuConv2d, every attention's `kernel` attention.attend (the AMX prefill
    attention), every decoder block a
    CpuDecodeBlock (decode_block.py: a decode step's block as one C++ call), the decoder a
    CpuDecoder (decode_layers.py: a quantised decode step's blocks as one call)."""
    from .decode_block import CpuDecodeBlock  # (it reads this module's paths)
    from .decode_layers import CpuDecoder

    keep_freed_blocks()  # a prefill's activations reuse freed blocks (malloc.py)
    twins = {Block: CpuDecodeBlock, GemmaDecoder: CpuDecoder}
    for name, module in list(model.named_modules()):
        twin = twins.get(type(module))
        new = twin.of(module) if twin else _swapped(module)
        if new is None:
            continue
        new.train(module.training)
        model.set_submodule(name, new)
    for module in model.modules():  # prefill attention: our AMX kernel where it applies
        if isinstance(module, (GemmaAttention, SiglipAttention)):
            module.kernel = attend
    return model
