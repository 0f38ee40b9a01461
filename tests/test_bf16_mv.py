"""bfloat16 decoding products through our kernel (quant/bf16_mv.cpp, matvec.own_mv): float32
sums of the exact products rounded once (bounded against float64 on every path this CPU has),
a row's bits the same alone and in any batch, bad inputs named; the linears, the decode block
and the serving engine take it exactly where matvec says, with a request's tokens the same
alone and amid traffic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_engine import served_equal_alone
from torch import nn

import paligemma
from paligemma.model import set_rows_alone_
from paligemma.quant import decode_block, matvec
from paligemma.quant import kernels as cpu_kernels

SHAPES = [(37, 2048), (256, 2048), (100, 333), (5, 7), (64, 16), (19, 1000)]  # (O, I): tails


@pytest.fixture(autouse=True)
def kernels():
    assert cpu_kernels.available(), cpu_kernels.why_not()


def paths() -> list[int]:
    """Scalar, AVX2, AVX-512: those this CPU runs (at collection: builds the kernels)."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    return list(range(int(torch.ops.paligemma_cpu.cpu_isa()) + 1))


def bf16_ulp(v: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at |v| (float64; normal range)."""
    exp = torch.floor(torch.log2(v.abs().clamp_min(2.0**-126)))
    return torch.pow(2.0, exp - 7)


@pytest.mark.parametrize("isa", paths())
def test_float32_sums_rounded_once_against_float64(isa):
    """|ours - exact| <= half a bfloat16 ulp of the exact value (the one rounding) + the float32
    sums' bound I u sum|w x| (u = 2^-24) + that much again for the rounding of a value so near;
    and ours is the correctly rounded value for nearly every output, as torch.mv is."""
    g = torch.Generator().manual_seed(0)
    for o, i in SHAPES:
        w = torch.randn(o, i, generator=g).bfloat16()
        x = torch.randn(5, i, generator=g).bfloat16()
        exact = x.double() @ w.double().T
        mass = x.double().abs() @ w.double().abs().T
        ours = torch.ops.paligemma_cpu.bf16_mv(x, w, isa).double()
        sums = i * 2.0**-24 * mass
        bound = 0.5 * bf16_ulp(exact) + sums + bf16_ulp(exact.abs() + sums)
        assert ((ours - exact).abs() <= bound).all(), (o, i)
        rounded = exact.bfloat16().double()  # (double -> bfloat16: one correct rounding)
        agree = (ours == rounded).double().mean().item()
        mv = torch.stack([torch.mv(w, x[m]) for m in range(5)]).double()
        assert agree >= min(0.98, (mv == rounded).double().mean().item() - 0.01), (o, i, agree)


@pytest.mark.parametrize("isa", paths())
def test_a_row_gets_the_same_bits_alone_and_in_any_batch(isa):
    """1..16 rows (and more: 19), weights as a strided view of every other row too: each row's
    outputs equal that row's call alone, bit for bit."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2 * 45, 1000, generator=g).bfloat16()
    x = torch.randn(19, 1000, generator=g).bfloat16()
    alone = torch.cat(
        [torch.ops.paligemma_cpu.bf16_mv(x[m : m + 1], base[::2], isa) for m in range(19)]
    )
    assert torch.equal(alone, torch.ops.paligemma_cpu.bf16_mv(x, base[::2].contiguous(), isa))
    for m in (2, 3, 4, 5, 7, 8, 16, 19):
        assert torch.equal(torch.ops.paligemma_cpu.bf16_mv(x[:m], base[::2], isa), alone[:m]), m


def test_bad_inputs_are_errors_naming_what_is_wrong():
    op = torch.ops.paligemma_cpu.bf16_mv
    w, x = torch.randn(8, 32).bfloat16(), torch.randn(2, 32).bfloat16()
    with pytest.raises(RuntimeError, match="must be bfloat16"):
        op(x.float(), w, -1)
    with pytest.raises(RuntimeError, match=r"x \[M, I\] and w \[O, I\]"):
        op(x[:, :16], w, -1)
    with pytest.raises(RuntimeError, match="rows must be contiguous"):
        op(x, torch.randn(32, 8).bfloat16().T, -1)
    with pytest.raises(RuntimeError, match="no path 3"):
        op(x, w, 3)
    assert op(x[:0], w, -1).shape == (0, 8)


def linear_model(width: int = 512, out: int = 640) -> nn.Module:
    g = torch.Generator().manual_seed(2)
    layer = nn.Linear(width, out, bias=True).bfloat16()
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05, generator=g)
        layer.bias.normal_(0.0, 0.05, generator=g)
    return matvec.install_matvec_(nn.Sequential(layer))


def test_linear_takes_it_for_one_row_and_under_rows_alone_for_up_to_16(monkeypatch):
    """One bfloat16 row, weights of MV_MIN_WEIGHTS elements and more: ours (then the bias, as
    torch.mv's path adds it); 2..16 rows only under rows_alone; 17 rows, smaller weights,
    float32, a gradient to record, OWN_MV off or PALIGEMMA_CPU_ISA=scalar: not."""
    model = linear_model()
    layer = model[0]
    ops, calls = torch.ops.paligemma_cpu, []
    real = ops.bf16_mv
    monkeypatch.setattr(ops, "bf16_mv", lambda x, *a: calls.append(x.shape[0]) or real(x, *a))
    monkeypatch.setattr(matvec, "MV_MIN_WEIGHTS", layer.weight.numel())
    x = torch.randn(17, 1, 512).bfloat16()

    def rows(n: int, **kw) -> list[int]:
        calls.clear()
        with torch.no_grad():
            y = model(x[:n, 0] if n > 1 else x[0])
        if calls:  # ours: the op's rows plus the bias in bfloat16
            want = real(x[:n, 0].reshape(n, -1), layer.weight, cpu_kernels.isa()) + layer.bias
            assert torch.equal(y.reshape(n, -1), want)
        return list(calls)

    assert rows(1) == [1] and rows(2) == [] and rows(8) == []
    set_rows_alone_(model)
    assert rows(1) == [1] and rows(2) == [2] and rows(16) == [16] and rows(17) == []
    set_rows_alone_(model, False)
    monkeypatch.setattr(matvec, "MV_MIN_WEIGHTS", layer.weight.numel() + 1)
    assert rows(1) == []
    monkeypatch.setattr(matvec, "MV_MIN_WEIGHTS", 0)
    monkeypatch.setattr(matvec, "OWN_MV", False)
    assert rows(1) == []
    monkeypatch.setattr(matvec, "OWN_MV", True)
    monkeypatch.setenv(cpu_kernels.ENV_ISA, "scalar")
    assert rows(1) == []
    monkeypatch.delenv(cpu_kernels.ENV_ISA)
    calls.clear()
    with torch.no_grad():
        model.float()(x[0].float())
    model.bfloat16()
    x.requires_grad_(True)
    model(x[0])
    assert calls == []


def test_decode_steps_take_it_in_the_cpp_block_as_the_python_block_does(
    lively_checkpoint, monkeypatch
):
    """bfloat16 layers (every weight taken: MV_MIN_WEIGHTS 0): the C++ block's plan is BF16_MV
    for one row and for rows_alone's batches (F.linear's for a plain batch), and its logits
    equal the Python block's, which runs the same op through the linears, bit for bit."""
    from test_decode_block import STEPS, steps

    monkeypatch.setattr(matvec, "MV_MIN_WEIGHTS", 0)
    model = paligemma.load_model(lively_checkpoint, dtype=torch.bfloat16)
    block = model.decoder.blocks[0]
    own, aten = decode_block.BF16_MV, decode_block.LINEAR
    for batch, alone, want in ((1, False, own), (3, False, aten), (3, True, own), (2, True, own)):
        set_rows_alone_(model, alone)
        with torch.no_grad():
            cache = model.new_cache(batch, 4)
            plan = block._plan(torch.randn(batch, 1, model.cfg.text.width).bfloat16(), cache, 0)
        assert plan.linear == want
        with pytest.MonkeyPatch.context() as mp:  # (steps undoes its own patches)
            python, _ = steps(model, batch, mp, fast=False)
            fast, taken = steps(model, batch, mp, fast=True)
        assert taken == len(model.decoder.blocks) * STEPS
        for a, b in zip(python, fast, strict=True):
            assert torch.equal(a, b), (batch, alone, (a - b).abs().max())
    set_rows_alone_(model, False)


def test_served_bfloat16_requests_equal_alone_through_it(pipeline_dir, monkeypatch):
    """The serving engine (rows_alone) on bfloat16 with every weight taken: decoding's batches
    of 2-3 rows go through our kernel (the head's calls seen here; the blocks' run in C++) and
    each request gets its tokens alone."""
    monkeypatch.setattr(matvec, "MV_MIN_WEIGHTS", 0)
    ops, rows = torch.ops.paligemma_cpu, []
    real = ops.bf16_mv
    monkeypatch.setattr(ops, "bf16_mv", lambda x, *a: rows.append(x.shape[0]) or real(x, *a))
    pipe = paligemma.load(pipeline_dir, dtype=torch.bfloat16)
    alone_rows = []  # the calls of the requests answered alone: one row each

    def serving():
        alone_rows.extend(rows)
        rows.clear()

    engine = served_equal_alone(pipe, 7, serving)
    assert alone_rows and set(alone_rows) == {1}
    assert max(rows) > 1 and engine.stats["max_rows"] > 1, (rows, engine.stats)


def test_its_products_match_f_linear_on_a_model_sized_weight():
    """A 2048 x 16384 weight (Gemma's down projection), 1 and 8 rows: within a bfloat16 ulp of
    F.linear's everywhere (both round float32 sums once)."""
    g = torch.Generator().manual_seed(4)
    w = (torch.randn(2048, 16384, generator=g) * 0.02).bfloat16()
    x = torch.randn(8, 16384, generator=g).bfloat16()
    for m in (1, 8):
        ours = torch.ops.paligemma_cpu.bf16_mv(x[:m], w, -1).double()
        ref = F.linear(x[:m], w).double()
        assert ((ours - ref).abs() <= bf16_ulp(ref) + 1e-30).all(), m
