"""A decode step's whole decoder on the CPU as one C++ call (decode_block.cpp's decode_layers).

CpuDecodeBlock (decode_block.py) runs a block's step as one call, but each of PaliGemma-3B's 18
blocks still costs a module call, its plan's checks and an op call from Python: ~5-7 ms of a
~75 ms int4 step on a 2-core AMD EPYC, where the step's 1.2 GB weight stream evicts the
interpreter's code and data from the caches between blocks. CpuDecoder (gemma.GemmaDecoder, the
same submodules; `install_matvec_` swaps it in at load) checks once a step that every block
would take its own kept quantised plan, and then runs them all in one call: decode_layers calls
decode_block for layer 0, 1, ... with the arguments each block would pass, so the result is the
per-block path's bit for bit (tested).

It is taken when the step is plain (decode_block.plain_step), every block is a CpuDecodeBlock
whose plan is quantised (int4 / int8 products: decode_block.DOTS or INT8_MATMUL) and the blocks
agree on everything decode_layers passes once (the product's kind, dot, GELU and ops paths,
attention mode, heads, scale, soft-cap, eps, rows_alone); anything else takes
GemmaDecoder.forward, block by block. The arguments are kept (kept.py) while the module tree,
the step's layout and switches, and the attributes they read stay the same.
"""

from __future__ import annotations

from operator import attrgetter
from typing import NamedTuple

import torch

from .. import config
from ..gemma import GemmaDecoder, rope_angles
from . import decode_block
from .decode_block import DOTS, INT8_MATMUL, CpuDecodeBlock, plain_step, step_key, twin
from .kept import Kept, generation

ONE_CALL = True  # plain quantised decode steps: all blocks in one call (False: one per block)

# What the arguments read from the blocks' modules besides their tensors, compared every step.
_LOCAL, _EPS = attrgetter("local"), attrgetter("eps")
_ATTN = attrgetter(
    "fused", "rows_alone", "scale", "softcap", "num_heads", "num_kv_heads", "head_dim"
)


class Layers(NamedTuple):
    """decode_layers' arguments that a kept plan fixes (its arguments of the same names)."""

    norms: list[torch.Tensor]  # each block's norms, block after block
    eps: float
    linear: int
    weights: list[torch.Tensor]  # 7 a block: q, k, v, o, gate, up, down
    scales: list[torch.Tensor]
    dot: list[int]
    local: list[int]  # 1 where the block takes the local (sliding-window) mask
    heads: list[int]  # N, K, H
    scale: float
    softcap: float | None
    attention: int
    rows_alone: bool
    gelu_isa: int
    lowest: float
    ops: int


class CpuDecoder(GemmaDecoder):
    """gemma.GemmaDecoder whose plain quantised CPU decode steps run as one decode_layers call."""

    @classmethod
    def of(cls, decoder: GemmaDecoder) -> CpuDecoder:
        """The twin of `decoder`, holding its very submodules and config (no copy)."""
        return twin(cls, decoder, "cfg", "checkpointing")

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        masks: tuple[torch.Tensor, torch.Tensor | None],
        cache=None,
        start: int = 0,
        last: int | None = None,
    ) -> torch.Tensor:
        a = self._layers(x, cache, start) if ONE_CALL else None  # Layers (a step: `last` is 1)
        if a is None:
            return super().forward(x, positions, masks, cache, start, last)
        cos, sin = rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        x = torch.ops.paligemma_cpu.decode_layers(
            x, a.norms, a.eps, a.linear, a.weights, a.scales, a.dot, cos, sin, masks[0],
            masks[1], a.local, cache.k, cache.v, start, a.heads, a.scale, a.softcap,
            a.attention, a.rows_alone, a.gelu_isa, a.lowest, a.ops,
        )  # fmt: skip
        return self.final_norm(x)

    def _layers(self, x: torch.Tensor, cache, start) -> Layers | None:
        """decode_layers' arguments for this step, or None where the blocks run one by one."""
        if not plain_step(x, cache, start):
            return None
        kept = self.__dict__.get("_kept") if decode_block.KEEP_PLANS else None
        if kept is not None and kept.holds(_step(x, cache, *kept.value[1:])):
            return kept.value[0]
        at = generation()
        blocks = list(self.blocks)
        layers = _derive(blocks, x, cache, start)
        if layers is None:
            self.__dict__.pop("_kept", None)
            return None
        modules = blocks, [b.attn for b in blocks], [b.attn_norm for b in blocks]
        step = _step(x, cache, *modules)
        self.__dict__["_kept"] = Kept.of(self.blocks, at, step, (layers, *modules))
        return layers


def _step(x: torch.Tensor, cache, blocks: list, attns: list, norms: list) -> tuple:
    """What Layers was derived from besides the module tree: decode_block.step_key, the
    fused-attention threshold (`attention`), and the blocks' attributes it reads."""
    attrs = (*map(_LOCAL, blocks), *map(_ATTN, attns), *map(_EPS, norms))
    return (step_key(x, cache), config.FUSED_ATTENTION_MIN_TOKENS, *attrs)


def _derive(blocks: list, x: torch.Tensor, cache, start: int) -> Layers | None:
    """Layers from each block's own plan for this step, or None where a block has none, it is
    not quantised, or the blocks differ in what decode_layers passes once."""
    if not blocks or any(type(b) is not CpuDecodeBlock for b in blocks):
        return None
    plans = [b._plan(x, cache, start) for b in blocks]
    if any(p is None or p.linear not in (DOTS, INT8_MATMUL) for p in plans):
        return None
    shared = {(p.linear, tuple(p.dot), p.attention, p.gelu_isa, p.ops, len(p.norms)) for p in plans}
    attrs = {(_ATTN(b.attn), b.attn_norm.eps) for b in blocks}
    if len(shared) != 1 or len(attrs) != 1:
        return None
    p, a = plans[0], blocks[0].attn
    return Layers(
        norms=[t for q in plans for t in q.norms],
        eps=blocks[0].attn_norm.eps,
        linear=p.linear,
        weights=[t for q in plans for t in q.weights],
        scales=[t for q in plans for t in q.scales],
        dot=list(p.dot),
        local=[int(b.local) for b in blocks],
        heads=[a.num_heads, a.num_kv_heads, a.head_dim],
        scale=a.scale,
        softcap=a.softcap,
        attention=p.attention,
        rows_alone=a.rows_alone,
        gelu_isa=p.gelu_isa,
        lowest=torch.finfo(x.dtype).min,
        ops=p.ops,
    )
