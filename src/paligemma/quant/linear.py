"""Weight-only quantisation of linear layers: int8 per output channel, int4 in groups.

`quantize_(model, "int8" | "int4", ...)` swaps `nn.Linear` modules by name for quantised ones
that keep the same names for their tensors (`weight` holds the integer codes, `scale` the
float scales), so a quantised model's state dict saves and loads like any other; the decoder's
tied head (gemma.TiedHead) becomes a quantised copy of the embedding matrix (Int8Head /
Int4Head, tensors `decoder.head.weight` and `.scale`), and in int8 the embedding lookups read
that copy's codes (Int8Embedding). store.py says how such a model is saved.

Which matrix product runs, on the CPU without autograd (decoding reads 1 or 0.5 byte per weight,
never an expanded copy):
    up to DOT_ROWS rows of x in an INT8_ACTIVATIONS dtype (bfloat16, float16: decoding): our
        int4 / int8 x int8-activation kernels (int4_dot.cpp: x quantised per row and group,
        integer dot products, one pass over the saved weight for all rows, no copy; int8 from
        2 rows, where its float kernel turns compute-bound, or from 1 where the CPU runs
        int8_dot's AVX2 one-row loop: cpu_kernels.int8_dot_from()); the output in x's dtype, and
        layers that read the same x (project: q, k, v; gate, up) in one call
        (`together`: int4_dots / int8_dots, x quantised once, one parallel region;
        prefill rows on AMX likewise, dequant_mms: together.py);
    up to KERNEL_ROWS rows of x: our kernels (kernels.cpp, float32 accumulation; int4 when the
        group is a multiple of 32), when they could be built; up to PACKED_ROWS rows: PyTorch's
        packed int8 / int4 kernels (bfloat16 activations);
    more rows (prefill, training batches): bfloat16 x where the CPU has AMX-BF16
        (cpu_kernels.amx_bf16(), AMX_PREFILL): our tile GEMM with the codes dequantised straight
        into its tiles (dequant_amx.h); else TILE output rows at a time are dequantised to the
        activation dtype by our C++ (dequant.cpp) into one reused buffer feeding a dense GEMM
        (bfloat16 on AMX: oneDNN), so the whole float matrix never exists; to float32 (holding
        the same bfloat16 values) feeding float32 GEMMs where PyTorch has no fast bfloat16 GEMM
        (cpu_kernels.f32_prefill(): AVX2-only CPUs); without the kernels,
        CHUNK rows at a time in Python.
Elsewhere (GPU, autograd for QLoRA) the weight is dequantised to the activation dtype.

    int8: w ~= q * scale[o],            q int8[O, I],          scale float[O]
    int4: w ~= q * scale[o, g],         q uint8[O, I / 2] (two 4-bit codes, low nibble first,
                                        values 0..15 for -8..7), scale float[O, I / group]
    int8's scale is max |w| / 127 per row; int4's, per group, the one of max |w| * r / 7 for r
    in CLIP with the least squared error (codes.py: clipping the largest values often costs
    less than the coarser steps of the unclipped scale).
"""

from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

from ..gemma import TiedHead
from . import kernels as cpu_kernels
from .codes import quantize_weight

KERNEL_ROWS = 8  # our kernels: at most this many rows of x (they stream the weight once)
DOT_ROWS = 16  # int4_dot / int8_dot: at most this many rows (one pass over the weight for all)
INT8_DOT_GROUP = 64  # int8_dot: inputs per activation scale (int4_dot uses the weight's group)
# Activation dtypes that the dot kernels quantise to int8: they carry 8 significant bits at most,
# as int8 does per group; float32 activations keep float products (exact to float32 rounding).
INT8_ACTIVATIONS = (torch.bfloat16, torch.float16)
PACKED_ROWS = 16  # PyTorch's packed kernels: at most this many (they slow down past it)
CHUNK = 4096  # output rows dequantised at a time for larger inputs (in Python)
TILE = 256  # ... in C++ (dequant.cpp), per GEMM call: the fastest measured (bench_quant_prefill)
F32_TILE = 128  # ... in float32 (cpu_kernels.f32_prefill()): 0.9-1.0x 256's time, 2-core EPYC
_TILED = {torch.float32, torch.bfloat16}  # the dtypes dequant.cpp reads and writes
AMX_PREFILL = True  # bfloat16 x on AMX-BF16: the fused GEMM (False: the tiles feeding oneDNN)


class _QuantizedLinear(nn.Module):
    """What Int8Linear and Int4Linear share: the choice of matrix product (module docstring).
    Subclasses give `dequantize(start, end)` and `_few_rows(flat)` (a kernel's product for up to
    PACKED_ROWS rows, or None when none applies)."""

    in_features: int
    out_features: int
    bias: nn.Parameter | None
    rows_alone = False  # set by model.set_rows_alone_: float32 tiles only on our GEMM (isa >= 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _on_cpu_inference(x):
            return _finish(F.linear(x, self.dequantize().to(x.dtype)), self.bias, x.dtype)
        flat = x.reshape(-1, self.in_features)
        out = self._few_rows(flat) if len(flat) <= PACKED_ROWS else None
        if out is None:
            out = _chunked(self, flat)
        return _finish(out.view(*x.shape[:-1], -1), self.bias, x.dtype)

    @staticmethod
    def together(layers, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Layers of one class that read the same x (project: q, k, v; gate, up) in one kernel
        call, each output its layer's own bits; None where not (quant/together.py)."""
        from .together import together  # (together.py reads this module's constants)

        return together(layers, x)

    def _cached(self, name: str, build) -> tuple[torch.Tensor, ...]:
        """build(weight, scale), kept until either tensor changes (a kernel's own layout; never
        saved)."""
        w, s = self.weight, self.scale
        key = (w.data_ptr(), w._version, s.data_ptr(), s._version)
        cache = self.__dict__.setdefault("_layouts", {})
        if name not in cache or cache[name][0] != key:
            cache[name] = (key, build(w, s))
        return cache[name][1]

    def _dot_kind(self) -> tuple[int, int, int]:
        """(bits, activation group, fewest rows) of this layer's int4_dot / int8_dot product;
        group 0 where the kernel does not apply."""
        raise NotImplementedError

    def _dot_rows(self, x: torch.Tensor, kind: tuple[int, int, int]) -> int:
        """x's rows where int4_dot / int8_dot take x for this layer (its `_dot_kind()`), else 0."""
        _, group, min_rows = kind
        rows = x.numel() // self.in_features
        ok = group and min_rows <= rows <= DOT_ROWS and x.dtype in INT8_ACTIVATIONS
        return rows if ok and cpu_kernels.available() else 0

    def amx_prefill(self, x: torch.Tensor) -> tuple[int, int] | None:
        """(bits, group) where forward's product for x is dequant_mm's AMX GEMM (CPU rows past
        the few-row kernels' PACKED_ROWS, no autograd, and `_amx_tiles`), else None."""
        ok = _on_cpu_inference(x) and x.numel() // self.in_features > PACKED_ROWS
        return self._bits_group() if ok and self._amx_tiles(x) else None

    def _amx_tiles(self, x: torch.Tensor) -> bool:
        """dequant_mm's AMX GEMM takes x (`_chunked` asks only then): bfloat16 x, a float scale,
        AMX-BF16, AMX_PREFILL, the AVX-512 path, in features and int4's group multiples of 32."""
        ok = x.dtype == torch.bfloat16 and self.scale.dtype in _TILED and cpu_kernels.available()
        ok = ok and AMX_PREFILL and cpu_kernels.amx_bf16() and cpu_kernels.isa() == 2
        return ok and not (self.in_features % 32 or self._bits_group()[1] % 32)

    def _bits_group(self) -> tuple[int, int]:
        """(bits, group) of this layer's codes for dequant_mm (int8: group 0)."""
        return (8, 0) if isinstance(self, Int8Linear) else (4, self.group)

    def _dot(self, flat: torch.Tensor) -> torch.Tensor | None:
        """int4_dot / int8_dot's product in x's dtype, or None where it does not apply."""
        kind = self._dot_kind()
        rows = self._dot_rows(flat, kind)
        if not rows:
            return None
        bits, group, _ = kind
        op = torch.ops.paligemma_cpu.int4_dot if bits == 4 else torch.ops.paligemma_cpu.int8_dot
        return op(
            flat, self.weight, self.scale, group, *cpu_kernels.dot_path(rows), dtype=flat.dtype
        )


class Int8Linear(_QuantizedLinear):
    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, dtype=torch.float32
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q = cls(
            linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype
        )
        return _filled(q, linear, quantize_weight(linear.weight.detach(), "int8"))

    def dequantize(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """The float weight (rows start:end), in the scale's dtype."""
        return self.rows(slice(start, end))

    def rows(self, index: slice | torch.Tensor) -> torch.Tensor:
        """The float rows `index` (a slice, or int ids of any shape -> (*ids.shape, I)), in the
        scale's dtype: codes * scale, one rounding."""
        return self.weight[index].to(self.scale.dtype) * self.scale[index, None]

    def _dot_kind(self) -> tuple[int, int, int]:
        fewest = cpu_kernels.int8_dot_from() if cpu_kernels.available() else 2
        return 8, INT8_DOT_GROUP if self.in_features % INT8_DOT_GROUP == 0 else 0, fewest

    def _few_rows(self, flat: torch.Tensor) -> torch.Tensor | None:
        out = self._dot(flat)
        if out is not None:
            return out
        if len(flat) <= KERNEL_ROWS and cpu_kernels.available():
            return torch.ops.paligemma_cpu.int8_matmul(
                flat, self.weight, self.scale, cpu_kernels.isa()
            )
        if not _HAS_KERNELS:
            return None
        flat = flat.to(torch.bfloat16).contiguous()
        return torch._weight_int8pack_mm(flat, self.weight, self.scale.to(torch.bfloat16))


class Int4Linear(_QuantizedLinear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        group: int = 64,
        dtype=torch.float32,
    ):
        super().__init__()
        if in_features % group or group % 2:
            raise ValueError(
                f"in_features {in_features} is not a multiple of the group size {group}"
            )
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
        )
        self.register_buffer("scale", torch.ones(out_features, in_features // group, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = 64) -> Int4Linear:
        o, i = linear.weight.shape
        q = cls(i, o, linear.bias is not None, group, linear.weight.dtype)
        return _filled(q, linear, quantize_weight(linear.weight.detach(), "int4", group))

    def codes(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """uint8[O, I] codes 0..15 (value + 8), low nibble first (rows start:end)."""
        packed = self.weight[start:end]
        pairs = torch.stack([packed & 15, packed >> 4], dim=-1)  # (rows, I/2, 2)
        return pairs.view(len(packed), self.in_features)

    def dequantize(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """The float weight (rows start:end), in the scale's dtype."""
        codes = self.codes(start, end)
        w = (codes.to(self.scale.dtype) - 8).view(len(codes), -1, self.group)
        return (w * self.scale[start:end, :, None]).view(len(codes), self.in_features)

    def _packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PyTorch's int4 kernel's own layout, built once from the portable one (never saved)."""

        def build(w, s):
            packed = torch._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 1)
            scale = s.to(torch.bfloat16).T  # (G, O); the kernel computes (q - 8) * scale + zero
            return packed, torch.stack([scale, torch.zeros_like(scale)], -1).contiguous()

        return self._cached("torch", build)

    def _dot_kind(self) -> tuple[int, int, int]:
        return 4, self.group if self.group % 32 == 0 else 0, 1

    def _few_rows(self, flat: torch.Tensor) -> torch.Tensor | None:
        out = self._dot(flat)
        if out is not None:
            return out
        if len(flat) <= KERNEL_ROWS and self.group % 32 == 0 and cpu_kernels.available():
            ops = torch.ops.paligemma_cpu
            return ops.int4_matmul(flat, self.weight, self.scale, self.group, cpu_kernels.isa())
        if not _HAS_KERNELS or self.out_features % 16:  # (the packing needs 16 | out_features)
            return None
        packed, scales_and_zeros = self._packed()
        flat = flat.to(torch.bfloat16).contiguous()
        return torch._weight_int4pack_mm_for_cpu(flat, packed, self.group, scales_and_zeros)


class Int8Head(Int8Linear):
    """An int8 copy of the tied output head, called as gemma.TiedHead is: h (B, T, D) and the
    float matrix (V, D), which it leaves unread -> logits (B, T, V)."""

    def forward(self, h: torch.Tensor, tied: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(h)


class Int4Head(Int4Linear):
    """The int4 twin of Int8Head."""

    def forward(self, h: torch.Tensor, tied: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(h)


class Int8Embedding(nn.Module):
    """The tied embedding looked up in the int8 head's codes: row v is codes[v] * scale[v], the
    head's own dequantised row, so an int8 model keeps the (V, D) matrix once, in int8 (a
    bfloat16 copy for lookups alone is 1 GB of Gemma's 257,152 x 2,048). It holds no tensor:
    the state dict keeps `decoder.head.weight` and `.scale`. (int4 keeps the float matrix for
    lookups: its group-wise codes are too coarse for the embedded model's <loc> tokens.)"""

    def __init__(self, head: Int8Head) -> None:
        super().__init__()
        self._head = (head,)  # not a submodule: its tensors are saved once, under decoder.head

    @property
    def dtype(self) -> torch.dtype:
        return self._head[0].scale.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """int[...] ids -> float[..., D] rows in the scale's dtype."""
        return self._head[0].rows(ids)


def _filled(layer: nn.Module, linear: nn.Linear, codes_scale: tuple) -> nn.Module:
    """`layer` holding the codes and scales, and the linear's bias, on its device."""
    layer.weight.copy_(codes_scale[0])
    layer.scale.copy_(codes_scale[1])
    if linear.bias is not None:
        layer.bias.data.copy_(linear.bias.detach())
    return layer.to(linear.weight.device)


def _on_cpu_inference(x: torch.Tensor) -> bool:
    """The CPU paths have no backward: training (QLoRA) takes the dequantised path."""
    return x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)


def _chunked(layer: _QuantizedLinear, flat: torch.Tensor) -> torch.Tensor:
    """flat @ W.T with W dequantised a tile of output rows at a time: TILE rows in C++ into one
    reused buffer that feeds the GEMM (dequant.cpp), else CHUNK rows in Python (bounded extra
    memory either way)."""
    if _TILED.issuperset((flat.dtype, layer.scale.dtype)) and cpu_kernels.available():
        (bits, group), amx = layer._bits_group(), int(layer._amx_tiles(flat))
        # float32 tiles under rows_alone only on our GEMM's vector paths (a row's bits alone)
        ours = not layer.rows_alone or cpu_kernels.isa() >= 1
        f32 = int(not amx and ours and cpu_kernels.f32_prefill())
        tile = F32_TILE if f32 and flat.dtype == torch.bfloat16 else TILE
        return torch.ops.paligemma_cpu.dequant_mm(
            flat, layer.weight, layer.scale, bits, group, tile, cpu_kernels.isa(), amx, f32
        )
    out = flat.new_empty(len(flat), layer.out_features)
    for start in range(0, layer.out_features, CHUNK):
        w = layer.dequantize(start, start + CHUNK).to(flat.dtype)
        out[:, start : start + len(w)] = flat @ w.T
    return out


def _finish(out: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    out = out.to(dtype)
    return out if bias is None else out + bias.to(dtype)


_KERNELS = (
    "_weight_int8pack_mm",
    "_weight_int4pack_mm_for_cpu",
    "_convert_weight_to_int4pack_for_cpu",
)
_HAS_KERNELS = all(hasattr(torch, op) for op in _KERNELS)


QUANTIZED = (Int8Linear, Int4Linear, Int8Head, Int4Head)  # every quantised module class
# modes whose embedding lookups read the quantised head's codes (Int8Embedding): int8's rows are
# within 1/254 of a row's largest value; int4's group-wise ones are too coarse (its docstring)
LOOKUP_MODES = ("int8",)
DECODER_LINEARS = "decoder.blocks.*"


def quantize_(
    model: nn.Module,
    mode: str,
    include: str | tuple[str, ...] = DECODER_LINEARS,
    group: int = 64,
    head: bool = True,
) -> nn.Module:
    """In place: every float linear (nn.Linear or a subclass) whose name matches `include`
    (fnmatch patterns; default the decoder's layers, add "vision.blocks.*" for the image encoder)
    becomes Int8 / Int4. With `head`, the tied output head becomes a quantised copy
    (`decoder.head`; per decoded token the head is a third of the bytes read), and in int8 the
    embedding lookups read its codes (Int8Embedding; int4's keep the float matrix)."""
    if mode not in ("int8", "int4"):
        raise ValueError(f"quantize must be 'int8' or 'int4', got {mode!r}")
    for name in targets(model, include):
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            model.set_submodule(name, _quantized(module, mode, group))
    decoder = getattr(model, "decoder", None)
    if head and decoder is not None and isinstance(decoder.head, TiedHead):
        weight = decoder.embed.weight
        tied = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        tied.weight = weight  # no copy: from_linear reads it once
        decoder.head = _quantized(tied, mode, group, head=True)
        if mode in LOOKUP_MODES:
            decoder.embed = Int8Embedding(decoder.head)
    return model


def targets(model: nn.Module, include: str | tuple[str, ...] = DECODER_LINEARS) -> list[str]:
    """Names of the float linears (nn.Linear or a subclass) that match `include`."""
    patterns = (include,) if isinstance(include, str) else tuple(include)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(fnmatch.fnmatch(name, p) for p in patterns)
    ]


def _quantized(linear: nn.Linear, mode: str, group: int, head: bool = False) -> nn.Module:
    if mode == "int8":
        return (Int8Head if head else Int8Linear).from_linear(linear)
    return (Int4Head if head else Int4Linear).from_linear(linear, group)
