"""A decoder block's decode step on the CPU as one C++ call (decode_block.cpp).

A decode step of PaliGemma-3B at batch 1 calls ~100 small ops a layer from Python (norms, RoPE's
slices, views, the cache write, the residuals) around the matrix products; on a 2-core AMD EPYC
that is ~25-35 ms of a ~90 ms int4 step. CpuDecodeBlock (gemma.Block, the same submodules)
sends a step's block to decode_block.cpp, which calls the same ATen ops and our kernels in the
same order with the same arguments: the Python block's result bit for bit (tested), minus the
Python. `install_matvec_` (matvec.py) swaps the decoder's blocks for it at load.

It is taken when the step is plain: one query token a row, a KV cache, no autograd, CPU, our
kernels built, FAST_DECODE, no module hooks, the block's own classes (RMSNorm, gemma.Attention,
gemma.MLP, a GeluTanh), and its seven linears (q, k, v, o, gate, up, down) all of one kind that
`_linears` names: int4 / int8 with int4_dot / int8_dot's product for these rows, int8 at one row
(int8_matmul), or float weights whose rows go through torch.mv or F.linear (no float32
products: matvec.py's prefill paths stay in Python). Anything else (LoRA, hooks, a prefill,
training) runs the Python block.

Between the products, decode_block.cpp calls ATen's ops as the Python block does, except in
quantised layers' bfloat16 steps (OWN_OPS, Plan.ops): there decode_ops.cpp's loops do RMSNorm,
RoPE and the cache write, one query's attention and the residual adds, which cost ATen ~0.3 ms
a layer in small-op overhead on a 2-core host (~5% of an int4 step of PaliGemma-3B). Their
summation order is not ATen's, so those steps are not the Python block's bits: bounded against
float64 and float32 in tests/test_decode_ops.py (as close to float32 as the Python block's).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn

from .. import gemma
from ..activations import GeluTanh
from ..gemma import MLP, Attention, Block, RMSNorm, _cpu_half
from ..project import hooked
from . import gelu as cpu_gelu
from . import kernels as cpu_kernels
from . import linear, matvec
from . import rmsnorm as cpu_rms
from .kept import Kept, generation
from .linear import KERNEL_ROWS, Int4Linear, Int8Linear

NORMS = (RMSNorm, cpu_rms.CpuRMSNorm)  # the norm classes the C++ block computes as they do

FAST_DECODE = True  # decode steps' blocks through decode_block.cpp (False: the Python block)
OWN_OPS = True  # quantised bfloat16 steps: decode_ops.cpp's loops between the products
KEEP_PLANS = True  # a quantised step's Plan kept while its _key holds (False: derived each step)
DOTS, INT8_MATMUL, MV, LINEAR, BF16_MV = 0, 1, 2, 3, 4  # decode_block.cpp's `linear`


class Plan(NamedTuple):
    """How decode_block.cpp computes a step (its arguments of the same names)."""

    linear: int  # DOTS, INT8_MATMUL, MV, LINEAR or BF16_MV
    weights: list[torch.Tensor]  # q, k, v, o, gate, up, down
    scales: list[torch.Tensor]  # the same order ([] for float weights)
    dot: list[int]  # bits, group, isa, vnni (isa: also int8_matmul's)
    attention: int  # 0 eager, 1 eager with float32 products, 2 fused
    gelu_isa: int  # gelu.cpp's path, -2: ATen's GELU
    ops: int  # decode_ops.cpp's loops on that path (2 AVX-512, 1 AVX2, 0 scalar), -1: ATen's
    # ops (-2: with rmsnorm.py's loop for the norms, as the block's CpuRMSNorm)
    norms: list[torch.Tensor]  # the RMSNorms' weights: attn, mlp (, post_attn, post_mlp)


def twin(cls: type, module: nn.Module, *attrs: str):
    """A `cls` (a subclass of module's class) holding `module`'s very submodules (no copy), its
    plain attributes `attrs` and its training mode: the CPU twins install_matvec_ swaps in."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for name in attrs:
        setattr(new, name, getattr(module, name))
    for name, child in module._modules.items():
        setattr(new, name, child)
    return new.train(module.training)


def plain_step(x: torch.Tensor, cache, start) -> bool:
    """A step decode_block.cpp can take, as far as the step itself goes: one query token a
    row with a KV cache, on the CPU, no autograd, our kernels built, FAST_DECODE."""
    if not FAST_DECODE or cache is None or type(start) is not int or x.shape[1] != 1:
        return False
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return False
    if gemma.GQA_MIN_QUERIES <= 1:  # one query through enable_gqa: the Python block's
        return False
    return cpu_kernels.available()


def step_key(x: torch.Tensor, cache) -> tuple:
    """What a kept plan depends on besides the module tree: the step's dtype and rows, the
    cache's layout, the switches and PALIGEMMA_CPU_ISA read in deriving it, global hooks."""
    k, v = cache.k, cache.v
    step = (x.dtype, x.numel() // x.shape[-1], k.dtype, k.stride(), v.dtype, v.stride())
    switches = (OWN_OPS, cpu_gelu.FAST_GELU, os.environ.get(cpu_kernels.ENV_ISA))
    switches += (cpu_rms.FAST_RMS, cpu_rms.MIN_WIDTH)
    switches += (linear.DOT_ROWS, linear.INT8_ACTIVATIONS, cpu_kernels.NARROW_VNNI_ROWS)
    switches += (cpu_kernels.WIDE_ONE_ROW,)
    return (*step, *switches, hooked())


class CpuDecodeBlock(Block):
    """gemma.Block whose plain CPU decode steps run as one decode_block.cpp call."""

    @classmethod
    def of(cls, block: Block) -> CpuDecodeBlock:
        """The twin of `block`, holding its very submodules (Gemma 1's two post-norms: one
        Identity) and its `local` flag."""
        return twin(cls, block, "local")

    def forward(self, x, rope, masks, cache, layer, start, last=None):
        plan = self._plan(x, cache, start)  # a decode step's one row: `last` changes nothing
        if plan is None:
            return super().forward(x, rope, masks, cache, layer, start, last)
        mask = masks[1] if self.local else masks[0]
        attn = self.attn
        return torch.ops.paligemma_cpu.decode_block(
            x,
            plan.norms,
            self.attn_norm.eps,
            plan.linear,
            plan.weights,
            plan.scales,
            plan.dot,
            rope[0],
            rope[1],
            mask,
            cache.k,
            cache.v,
            layer,
            start,
            [attn.num_heads, attn.num_kv_heads, attn.head_dim],
            attn.scale,
            attn.softcap,
            plan.attention,
            attn.rows_alone,
            plan.gelu_isa,
            torch.finfo(x.dtype).min,
            plan.ops,
        )

    def _norms(self) -> list[torch.Tensor]:
        norms = [self.attn_norm.weight, self.mlp_norm.weight]
        if isinstance(self.post_attn_norm, RMSNorm):
            norms += [self.post_attn_norm.weight, self.post_mlp_norm.weight]
        return norms

    def _plan(self, x: torch.Tensor, cache, start) -> Plan | None:
        """decode_block.cpp's arguments for this step, or None where the Python block runs
        (module docstring). A quantised plan is kept for the next steps while what it was
        derived from holds (kept.py; deriving it took ~5 ms a step of PaliGemma-3B, ~7% of an
        int4 step); the checks of the step itself run every time."""
        if not plain_step(x, cache, start):
            return None
        attention = self._attention(x)
        kept, step = self.__dict__.get("_kept"), step_key(x, cache)
        if KEEP_PLANS and kept is not None and kept.holds(step):
            plan = kept.value
            return plan if plan.attention == attention else plan._replace(attention=attention)
        at = generation()
        plan = self._derive(x, cache, attention)
        if plan is not None and plan.linear in (DOTS, INT8_MATMUL):  # (float: matvec's flags)
            self.__dict__["_kept"] = Kept.of(self, at, step, plan)
        else:  # float layers' steps keep nothing
            self.__dict__.pop("_kept", None)
        return plan

    def _derive(self, x: torch.Tensor, cache, attention: int) -> Plan | None:
        """_plan's answer from scratch."""
        if not self._plain():
            return None
        attn, mlp = self.attn, self.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        linears += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        products = _linears(linears, x, attn.rows_alone)
        if products is None:
            return None
        take = type(mlp.act) is cpu_gelu.CpuGeluTanh and cpu_gelu.FAST_GELU
        take = take and x.dtype == torch.bfloat16
        gelu_isa = cpu_kernels.isa() if take else -2
        ops = _ops(products[0], x, cache, self.attn_norm)
        return Plan(*products, attention, gelu_isa, ops, self._norms())

    def _attention(self, x: torch.Tensor) -> int:
        """Plan.attention: 2 fused, 1 eager with float32 products, 0 eager."""
        attn = self.attn
        return 2 if attn._use_fused(1, x) else int(attn.fused is None and _cpu_half(x))

    def _plain(self) -> bool:
        """The block's own classes, and no hooks anywhere in it (they must run)."""
        attn, mlp = self.attn, self.mlp
        post = (self.post_attn_norm, self.post_mlp_norm)
        norms = [self.attn_norm, self.mlp_norm]
        norms += [] if all(type(m) is nn.Identity for m in post) else list(post)
        kinds = type(norms[0]) in NORMS and len({type(m) for m in norms}) == 1  # one class
        kinds = kinds and type(attn) is Attention and type(mlp) is MLP
        if not kinds or type(mlp.act) not in (GeluTanh, cpu_gelu.CpuGeluTanh):
            return False
        return not hooked(*self.modules())


def _linears(linears: list[nn.Module], x: torch.Tensor, rows_alone: bool) -> tuple | None:
    """Plan's (linear, weights, scales, dot) when all seven take one product that
    decode_block.cpp makes as the layers would, else None."""
    kind = type(linears[0])
    if kind not in (Int4Linear, Int8Linear, matvec.MatVecLinear):  # e.g. LoRA-wrapped
        return None
    if any(type(m) is not kind or m.bias is not None for m in linears):
        return None
    weights = [m.weight for m in linears]
    rows = x.numel() // x.shape[-1]
    if kind in (Int4Linear, Int8Linear):
        dot_kind = linears[0]._dot_kind()
        if any(m._dot_kind() != dot_kind for m in linears):
            return None
        scales = [m.scale for m in linears]
        if linears[0]._dot_rows(x, dot_kind):
            bits, group, _ = dot_kind
            return DOTS, weights, scales, [bits, group, *cpu_kernels.dot_path(rows)]
        if kind is Int8Linear and rows <= KERNEL_ROWS:  # one row (the dots start at two)
            return INT8_MATMUL, weights, scales, [8, 0, cpu_kernels.isa(), 0]
        return None
    own = [matvec.own_mv(x, w, None, rows_alone) for w in weights]
    if all(own):
        return BF16_MV, weights, [], [0, 0, cpu_kernels.isa(), 0]
    if any(own) or any(matvec.prefill_path(x, w, None, rows_alone) for w in weights):
        return None
    mode = MV if matvec._matvec(x, rows_alone) else LINEAR
    return mode, weights, [], [0, 0, 0, 0]


def _ops(linear: int, x: torch.Tensor, cache, norm: nn.Module) -> int:
    """Plan.ops: decode_ops.cpp's loops for quantised layers' bfloat16 steps (their products
    are approximate already; float layers keep the Python block's bits), else ATen's ops: -2
    where the block's norms (`norm` one of them) take rmsnorm.py's loop, -1 where not."""
    aten = -2 if type(norm) is cpu_rms.CpuRMSNorm and cpu_rms.kernel_takes(x, norm.weight) else -1
    if not OWN_OPS or linear not in (DOTS, INT8_MATMUL) or x.dtype != torch.bfloat16:
        return aten
    if cache.k.dtype != torch.bfloat16 or cache.k.stride(-1) != 1:
        return aten
    if cache.v.dtype != cache.k.dtype or cache.v.stride() != cache.k.stride():
        return aten
    return cpu_kernels.isa()
