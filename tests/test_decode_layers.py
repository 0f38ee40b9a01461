"""A quantised decode step's whole decoder as one C++ call (quant/decode_layers.py): its logits
equal the block-by-block path's bit for bit (PaliGemma 1 and 2, int8 / int4, bfloat16 and
float32 activations, one row and left-padded batches, rows_alone, ATen's ops and our own), it is
taken exactly where every block takes a quantised plan, and its kept arguments (kept.py) follow
what they were derived from."""

from __future__ import annotations

import pytest
import torch
from conftest import decode_logits, spy_taken

import paligemma
from paligemma.lora import apply_lora_
from paligemma.model import set_rows_alone_
from paligemma.quant import decode_block, decode_layers
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant.kept import Kept, generation

STEPS = 9  # past PaliGemma 2's window of 6


def steps(model, batch: int, monkeypatch, one_call: bool) -> tuple[list[torch.Tensor], int]:
    """Logits of a prefill and STEPS decode steps fed the same tokens, and how many steps took
    decode_layers."""
    with monkeypatch.context() as patch:
        patch.setattr(decode_layers, "ONE_CALL", one_call)
        taken = spy_taken(patch, decode_layers.CpuDecoder, "_layers")
        out = decode_logits(model, batch, STEPS)
    return out, sum(taken)


@pytest.mark.parametrize("own_ops", [False, True], ids=["aten-ops", "own-ops"])
@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_one_call_equals_the_blocks_one_by_one_bit_for_bit(
    lively_checkpoint, quantize, dtype, own_ops, monkeypatch
):
    assert cpu_kernels.available(), cpu_kernels.why_not()
    model = paligemma.load_model(lively_checkpoint, dtype=dtype, quantize=quantize)
    assert type(model.decoder) is decode_layers.CpuDecoder
    monkeypatch.setattr(decode_block, "OWN_OPS", own_ops)
    # float32 activations keep float products in int4 layers: no quantised plan, block by block
    expected = 0 if quantize == "int4" and dtype == torch.float32 else STEPS
    for batch, alone in ((1, False), (3, False), (3, True)):
        set_rows_alone_(model, alone)
        blocks, none = steps(model, batch, monkeypatch, one_call=False)
        one, taken = steps(model, batch, monkeypatch, one_call=True)
        assert none == 0 and taken == expected, (batch, alone, taken)
        for a, b in zip(blocks, one, strict=True):
            assert torch.equal(a, b), (batch, alone, (a - b).abs().max())
    set_rows_alone_(model, False)


def test_float_layers_run_block_by_block(lively_checkpoint, monkeypatch):
    model = paligemma.load_model(lively_checkpoint, dtype=torch.bfloat16)
    _, taken = steps(model, 1, monkeypatch, one_call=True)
    assert taken == 0


def test_the_kept_arguments_follow_what_they_were_derived_from(lively_checkpoint, monkeypatch):
    """Kept while nothing changes (the same lists, not derived again); a hook anywhere in a
    block, LoRA, a new weight, rows_alone, PALIGEMMA_CPU_ISA, a switch or the rows change them
    (or send the step block by block), with the new answer."""
    model = paligemma.load_model(lively_checkpoint, dtype=torch.bfloat16, quantize="int4")
    decoder = model.decoder
    x = torch.randn(1, 1, model.cfg.text.width, dtype=torch.bfloat16)
    cache = model.new_cache(1, 4)
    derived = []
    derive = decode_layers._derive
    monkeypatch.setattr(decode_layers, "_derive", lambda *a: derived.append(1) or derive(*a))
    with torch.no_grad():
        first = decoder._layers(x, cache, 0)
        assert first is not None and decoder._layers(x, cache, 1) is first
        assert len(derived) == 1
        assert len(first.weights) == 7 * len(decoder.blocks) and first.rows_alone is False
        handle = decoder.blocks[1].mlp.act.register_forward_pre_hook(lambda *a: None)
        assert decoder._layers(x, cache, 0) is None  # a hook must run: block by block
        handle.remove()
        assert decoder._layers(x, cache, 0).weights == first.weights
        down = decoder.blocks[0].mlp.down_proj
        old = down.weight
        down.weight = old.clone()  # a new tensor: the arguments must carry it
        assert decoder._layers(x, cache, 0).weights[6] is down.weight
        down.weight = old
        set_rows_alone_(model, True)
        assert decoder._layers(x, cache, 0).rows_alone is True
        set_rows_alone_(model, False)
        monkeypatch.setenv(cpu_kernels.ENV_ISA, "scalar")
        assert decoder._layers(x, cache, 0).dot[2:] == [0, 0]  # isa 0, no VNNI
        monkeypatch.delenv(cpu_kernels.ENV_ISA)
        monkeypatch.setattr(decode_block, "OWN_OPS", False)
        assert decoder._layers(x, cache, 0).ops == -1
        monkeypatch.setattr(decode_block, "OWN_OPS", True)
        assert decoder._layers(x.expand(2, 1, -1), model.new_cache(2, 4), 0) is not None
        n = len(derived)
        assert decoder._layers(x, cache, 0) == first  # derived once more, then kept
        decoder._layers(x, cache, 0)
        assert len(derived) == n + 1
        apply_lora_(model, rank=2)  # LoRA-wrapped linears: block by block
        assert decoder._layers(x, cache, 0) is None


def test_kept_is_stale_after_any_module_change_or_hook():
    """kept.py: setting a parameter, buffer or submodule anywhere bumps the generation; a hook
    registered in the tree or another step key makes a Kept stale."""
    root = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    kept = Kept.of(root, generation(), ("step",), "value")
    assert kept.holds(("step",)) and not kept.holds(("other",))
    handle = root[1].register_forward_hook(lambda *a: None)
    assert not kept.holds(("step",))
    handle.remove()
    assert kept.holds(("step",))
    for change in (
        lambda: setattr(root[0], "weight", torch.nn.Parameter(torch.zeros(2, 2))),
        lambda: root[0].register_buffer("b", torch.zeros(1)),
        lambda: setattr(root, "1", torch.nn.Tanh()),
        lambda: torch.nn.Linear(1, 1),  # any module anywhere (conservative)
    ):
        kept = Kept.of(root, generation(), ("step",), "value")
        change()
        assert not kept.holds(("step",))
