"""A decode step's block as one C++ call (quant/decode_block.py, decode_block.cpp): with ATen's
ops between the products (OWN_OPS off) the logits of every step equal the Python block's bit
for bit, for PaliGemma 1 and 2 (soft-caps, sliding window, post-norms), float and int8 / int4
layers, one row and left-padded batches, with and without rows_alone; it is taken exactly where
it applies, and decode_ops.cpp's loops exactly for quantised bfloat16 steps (their accuracy:
tests/test_decode_ops.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import decode_logits, spy_taken

import paligemma
from paligemma import gemma
from paligemma.lora import apply_lora_
from paligemma.model import set_fused_attention_, set_rows_alone_
from paligemma.quant import decode_block, decode_layers
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import rmsnorm as cpu_rms

STEPS = 9  # past PaliGemma 2's window of 6


def steps(
    model, batch: int, monkeypatch, fast: bool, rms_width: int | None = None
) -> tuple[list[torch.Tensor], int]:
    """Logits of a prefill and STEPS decode steps fed the same tokens, and how many block calls
    took the C++ path (rms_width: rmsnorm.py's MIN_WIDTH meanwhile)."""
    if rms_width is not None:
        monkeypatch.setattr(cpu_rms, "MIN_WIDTH", rms_width)
    monkeypatch.setattr(decode_block, "FAST_DECODE", fast)
    monkeypatch.setattr(decode_block, "OWN_OPS", False)
    monkeypatch.setattr(decode_layers, "ONE_CALL", False)  # block by block (test_decode_layers)
    taken = spy_taken(monkeypatch, decode_block.CpuDecodeBlock, "_plan")
    out = decode_logits(model, batch, STEPS)
    monkeypatch.undo()
    return out, sum(taken)


@pytest.mark.parametrize("own_rms", [False, True], ids=["aten-rms", "own-rms"])
@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_steps_equal_the_python_block_bit_for_bit(
    lively_checkpoint, quantize, dtype, own_rms, monkeypatch
):
    """own_rms: the tiny models' norms take rmsnorm.py's loop as model-sized ones do (bfloat16;
    the C++ block then computes its norms with it too: ops -2)."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    width = 1 if own_rms else None
    model = paligemma.load_model(lively_checkpoint, dtype=dtype, quantize=quantize)
    blocks = model.decoder.blocks
    assert all(type(b) is decode_block.CpuDecodeBlock for b in blocks)
    for batch, alone in ((1, False), (3, False), (3, True), (2, True)):
        set_rows_alone_(model, alone)
        python, none = steps(model, batch, monkeypatch, fast=False, rms_width=width)
        fast, taken = steps(model, batch, monkeypatch, fast=True, rms_width=width)
        assert none == 0
        # float32 activations keep float products in int4 layers (int4_matmul, no dot kernel):
        # the Python block; int8 ones take int8_matmul, which the C++ block calls too
        python_only = quantize == "int4" and dtype == torch.float32
        assert taken == (0 if python_only else len(blocks) * STEPS), (batch, alone)
        for a, b in zip(python, fast, strict=True):
            assert torch.equal(a, b), (batch, alone, (a - b).abs().max())
    set_rows_alone_(model, False)


def test_eager_and_fused_attention_settings_match_too(lively_checkpoint, monkeypatch):
    """set_fused_attention_(True / False) on a bfloat16 int4 model: the C++ block follows the
    layer's setting (fused where it has no soft-cap; eager in bfloat16 products)."""
    model = paligemma.load_model(lively_checkpoint, dtype=torch.bfloat16, quantize="int4")
    for on in (True, False):
        set_fused_attention_(model, on)
        python, _ = steps(model, 3, monkeypatch, fast=False)
        fast, taken = steps(model, 3, monkeypatch, fast=True)
        assert taken == len(model.decoder.blocks) * STEPS
        assert all(torch.equal(a, b) for a, b in zip(python, fast, strict=True)), on


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_own_ops_are_planned_for_quantised_bfloat16_steps_only(lively_checkpoint, quantize, dtype):
    model = paligemma.load_model(lively_checkpoint, dtype=dtype, quantize=quantize)
    block = model.decoder.blocks[0]
    cache = model.new_cache(2, 4)
    with torch.no_grad():
        plan = block._plan(torch.randn(2, 1, model.cfg.text.width, dtype=dtype), cache, 0)
    if quantize == "int4" and dtype == torch.float32:  # the Python block (see above)
        assert plan is None
        return
    own = quantize is not None and dtype == torch.bfloat16
    assert plan.ops == (cpu_kernels.isa() if own else -1)


def test_the_python_block_runs_where_the_step_is_not_plain(lively_checkpoint, monkeypatch):
    """A forward hook (it must run), autograd, a prefill, LoRA, and one query through
    enable_gqa take the Python block."""
    model = paligemma.load_model(lively_checkpoint, dtype=torch.bfloat16, quantize="int4")
    block = model.decoder.blocks[0]
    x = torch.randn(1, 1, model.cfg.text.width, dtype=torch.bfloat16)
    cache = model.new_cache(1, 4)
    with torch.no_grad():
        assert block._plan(x, cache, 0) is not None
        assert block._plan(x, None, 0) is None  # no cache
        assert block._plan(x.expand(1, 2, -1), cache, 0) is None  # two query tokens
        assert block._plan(x, cache, torch.tensor([0])) is None  # a CUDA-graph style start
        handle = block.mlp.down_proj.register_forward_hook(lambda *a: None)
        assert block._plan(x, cache, 0) is None
        handle.remove()
        assert block._plan(x, cache, 0) is not None
        monkeypatch.setattr(gemma, "GQA_MIN_QUERIES", 1)  # one query through enable_gqa
        assert block._plan(x, cache, 0) is None
        monkeypatch.undo()
        with torch.enable_grad():  # autograd on
            assert block._plan(x, cache, 0) is None
        assert block._plan(x, cache, 0) is not None
        apply_lora_(model, rank=2)  # LoRA-wrapped linears
        assert block._plan(x, cache, 0) is None


def test_a_quantised_plan_is_kept_until_what_it_reads_changes(lively_checkpoint, monkeypatch):
    """_plan keeps a quantised step's plan (the same weights list, not derived again) while the
    step's rows, dtype and cache, the switches, PALIGEMMA_CPU_ISA and the block's modules, hooks
    and tensors stay; any of them changing derives it again, with the new answer."""
    model = paligemma.load_model(lively_checkpoint, dtype=torch.bfloat16, quantize="int4")
    block = model.decoder.blocks[0]
    x = torch.randn(1, 1, model.cfg.text.width, dtype=torch.bfloat16)
    cache = model.new_cache(1, 4)
    derived = []
    derive = decode_block.CpuDecodeBlock._derive
    monkeypatch.setattr(
        decode_block.CpuDecodeBlock, "_derive", lambda *a: derived.append(1) or derive(*a)
    )
    with torch.no_grad():
        first = block._plan(x, cache, 0)
        again = block._plan(x, cache, 1)
        assert first is not None and again.weights is first.weights and len(derived) == 1
        assert block._plan(x.expand(2, 1, -1), model.new_cache(2, 4), 0).weights is not None
        assert len(derived) == 2  # two rows
        handle = block.mlp.down_proj.register_forward_hook(lambda *a: None)
        assert block._plan(x, cache, 0) is None  # a hook must run
        handle.remove()
        assert block._plan(x, cache, 0) is not None
        monkeypatch.setenv(cpu_kernels.ENV_ISA, "scalar")
        assert block._plan(x, cache, 0).dot[2:] == [0, 0]  # isa 0, no VNNI
        monkeypatch.delenv(cpu_kernels.ENV_ISA)
        assert block._plan(x, cache, 0).dot == first.dot
        monkeypatch.setattr(decode_block, "OWN_OPS", False)
        assert block._plan(x, cache, 0).ops == -1
        monkeypatch.setattr(decode_block, "OWN_OPS", True)
        down = block.mlp.down_proj
        old = down.weight
        down.weight = old.clone()  # a new tensor: the plan must carry it
        assert block._plan(x, cache, 0).weights[6] is down.weight
        down.weight = old
        n = len(derived)
        block._plan(x, cache, 0)
        block._plan(x, cache, 0)
        assert len(derived) == n + 1
