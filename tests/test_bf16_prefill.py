"""The plain bfloat16 prefill (quant/matvec.py over dequant.cpp's bf16_mm): float32 sums of the
bfloat16 products with one rounding, each row's bits independent of the other rows, and the
switches that turn it off; where the CPU has no fast bfloat16 GEMM, f32_mm's float32 products
(our float32 GEMM, the weight widened as it packs its panels), never under rows_alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import amx_bf16

from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import linear as q_linear
from paligemma.quant import matvec


def operands(rows: int, i: int, o: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, i, generator=g).to(torch.bfloat16)
    w = (torch.randn(o, i, generator=g) * torch.rand(o, 1, generator=g) * 0.1).to(torch.bfloat16)
    return x, w, torch.randn(o, generator=g).to(torch.bfloat16)


# (in, out): one K block, several with a short last one (dequant_amx.h's kKB 256), output rows
# short of a panel (the 16-row tail) and of a tile
SHAPES = [(64, 37), (96, 17), (1152, 300), (2080, 50)]


def test_bf16_mm_is_float32_sums_then_one_rounding_and_each_row_alone():
    """Against float64 of the same bfloat16 operands: within the output's one rounding plus
    float32 summation, element by element (bias added before the rounding), 1 and 2 threads;
    a row's bits do not depend on the other rows in the call (fewer rows, reversed order, and
    past the 1024 rows of one pass)."""
    has = amx_bf16()
    op, threads = torch.ops.paligemma_cpu.bf16_mm, torch.get_num_threads()
    if not has:
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            op(*operands(20, 64, 8)[:2], None, 256)
        return
    try:
        for (i, o), n_threads in zip(SHAPES, (1, 2, 2, 1), strict=True):
            torch.set_num_threads(n_threads)
            x, w, b = operands(268, i, o, seed=i)
            for bias in (None, b):
                got = op(x, w, None if bias is None else bias.float(), 256)
                want = x.double() @ w.double().T + (0 if bias is None else bias.double())
                sums = i * 2.0**-24 * (x.double().abs() @ w.double().abs().T)
                bound = 2.0**-8 * (want.abs() + sums) + sums
                assert got.dtype == torch.bfloat16 and got.shape == (268, o)
                assert ((got.double() - want).abs() <= bound).all(), (i, o)
            full = op(x, w, None, 256)
            for rows in (1, 5, 17, 40):
                assert torch.equal(op(x[:rows], w, None, 256), full[:rows]), (i, o, rows)
            assert torch.equal(op(x.flip(0), w, None, 256), full.flip(0))
        x, w, _ = operands(1100, 1152, 40)  # two passes
        assert torch.equal(op(x, w, None, 256)[1030:], op(x[1030:], w, None, 256))
    finally:
        torch.set_num_threads(threads)


def test_linear_takes_bf16_mm_for_prefill_rows_and_the_switches_turn_it_off(monkeypatch):
    """matvec.linear: more than FEW_ROWS and at most MAX_ROWS bfloat16 rows without autograd go
    through bf16_mm (bias in float32) where the CPU has AMX-BF16; few rows, more rows, float32,
    inputs not a multiple of 32, a gradient to record, AMX_PREFILL False,
    PALIGEMMA_CPU_ISA=avx512vnni / avx2 and no kernels (PALIGEMMA_CPU_KERNELS=0 at the first
    call) take F.linear."""
    has = amx_bf16()
    ops = torch.ops.paligemma_cpu
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", False)  # (float32 products: the next tests)
    calls = []
    real = ops.bf16_mm
    monkeypatch.setattr(ops, "bf16_mm", lambda *a: calls.append(1) or real(*a))
    monkeypatch.delenv(cpu_kernels.ENV_ISA, raising=False)
    x, w, b = operands(40, 1152, 48)
    x3 = x.view(2, 20, 1152)

    def taken(x, w, b=None, grad=False) -> bool:
        calls.clear()
        with torch.set_grad_enabled(grad):
            got = matvec.linear(x, w, b)
            if calls:
                flat = x.reshape(-1, x.shape[-1])
                want = real(flat, w, None if b is None else b.float(), matvec.TILE)
                assert torch.equal(got, want.view(*x.shape[:-1], -1))
            elif x.numel() > x.shape[-1]:  # (one row: torch.mv)
                assert torch.equal(got, F.linear(x, w, b))
        return bool(calls)

    assert taken(x3, w, b) == has and taken(x, w) == has
    assert not taken(x[:16], w, b) and not taken(x[:1], w, b)
    many = x.repeat(matvec.MAX_ROWS // 40 + 1, 1)
    assert taken(many[: matvec.MAX_ROWS], w) == has and not taken(many, w)
    assert not taken(x.float(), w.float()) and not taken(x[:, :1000], w[:, :1000])
    assert not taken(x, w.requires_grad_(), grad=True) and taken(x, w, grad=False) == has
    monkeypatch.setattr(matvec, "AMX_PREFILL", False)
    assert not taken(x, w)
    monkeypatch.setattr(matvec, "AMX_PREFILL", True)
    for name in ("avx512vnni", "avx2"):
        monkeypatch.setenv(cpu_kernels.ENV_ISA, name)
        assert not taken(x, w)
    monkeypatch.delenv(cpu_kernels.ENV_ISA)
    monkeypatch.setattr(cpu_kernels, "_state", {"ok": False, "error": "off"})  # as KERNELS=0
    assert not taken(x, w)


def test_f32_mm_is_float32_sums_then_one_rounding_on_every_path():
    """f32_mm against float64 of the same bfloat16 operands: within the output's one rounding
    plus float32 summation, element by element (bias added before the rounding), on every
    instruction set the CPU has (the widening loop), tiles that do and do not divide the
    outputs, 1 and 2 threads; bad operands are errors."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    op, threads = torch.ops.paligemma_cpu.f32_mm, torch.get_num_threads()
    best = int(torch.ops.paligemma_cpu.cpu_isa())
    try:
        for (i, o), n_threads in zip(SHAPES, (1, 2, 2, 1), strict=True):
            torch.set_num_threads(n_threads)
            x, w, b = operands(37, i, o, seed=i)
            cases = ((a, t, c) for a in range(best + 1) for t in (16, 128) for c in (None, b))
            for isa, tile, bias in cases:
                got = op(x, w, bias, tile, isa)
                want = x.double() @ w.double().T + (0 if bias is None else bias.double())
                sums = i * 2.0**-24 * (x.double().abs() @ w.double().abs().T)
                bound = 2.0**-8 * (want.abs() + sums) + sums
                assert got.dtype == torch.bfloat16 and got.shape == (37, o)
                assert ((got.double() - want).abs() <= bound).all(), (i, o, isa, tile)
    finally:
        torch.set_num_threads(threads)
    x, w, b = operands(20, 64, 8)
    bad = ((x.float(), w, None, 16), (x, w[:, :32], None, 16), (x, w, b[:3], 16), (x, w, None, 0))
    for args in bad:
        with pytest.raises(RuntimeError, match="f32_mm"):
            op(*args)


def test_our_float32_gemm_gives_a_row_the_same_bits_alone_in_any_batch_tile_or_threads():
    """On the vector paths f32_mm and dequant_mm f32=1 run our float32 GEMM (f32_gemm.h): each
    output is one FMA chain over k in order, so a row alone, the same row in batches of other
    sizes (x panels of 6 rows, zero-padded), other tiles (output columns per block) and thread
    counts give the same bits; K past one 256-wide block with a short last one, outputs short
    of a 16-column panel. The scalar path (PyTorch's GEMM per tile) promises no such thing."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops, threads = torch.ops.paligemma_cpu, torch.get_num_threads()
    best = int(ops.cpu_isa())
    if best == 0:  # no vector path on this CPU: nothing of ours to hold to it
        assert ops.f32_mm(*operands(3, 64, 8)[:2], None, 16, 0).shape == (3, 8)
        return
    x, w, b = operands(29, 600, 75, seed=3)
    m = q_linear.Int4Linear.from_linear(torch.nn.Linear(600, 75).to(torch.bfloat16), group=40)
    try:
        for isa in range(1, best + 1):
            torch.set_num_threads(2)
            full = ops.f32_mm(x, w, b, 128, isa)
            quant = ops.dequant_mm(x, m.weight, m.scale, 4, 40, 128, isa, 0, 1)
            for rows, tile, n_threads in (
                (slice(0, 1), 16, 1),
                (slice(5, 12), 48, 2),
                (slice(28, 29), 128, 2),
                (slice(0, 29), 32, 1),
            ):
                torch.set_num_threads(n_threads)
                assert torch.equal(ops.f32_mm(x[rows], w, b, tile, isa), full[rows]), (isa, rows)
                got = ops.dequant_mm(x[rows], m.weight, m.scale, 4, 40, tile, isa, 0, 1)
                assert torch.equal(got, quant[rows]), (isa, rows, tile)
    finally:
        torch.set_num_threads(threads)


def test_linear_takes_f32_mm_where_bfloat16_gemms_are_slow_rows_alone_on_our_gemm(monkeypatch):
    """matvec.linear with float32 products on (F32_PREFILL True; AMX_PREFILL off so that AMX
    hosts take it too): F32_MIN_ROWS bfloat16 rows and more without autograd give f32_mm's bits
    (bias added in float32); fewer rows, a smaller weight than F32_MIN_WEIGHTS, float32, a
    gradient to record and F32_PREFILL False give F.linear's. Under rows_alone (the server)
    only a prefill's rows on our GEMM's vector paths take it, with the same bits for a row in
    a batch of 17 or 40; never on the scalar path (PyTorch's float32 GEMM rounds by row
    count). The default is on exactly where PyTorch's oneDNN has no bfloat16 GEMM."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    slow = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    monkeypatch.setattr(cpu_kernels, "_state", dict(cpu_kernels._state))
    cpu_kernels._state.pop("f32_prefill", None)
    assert cpu_kernels.f32_prefill() == slow
    monkeypatch.setattr(matvec, "AMX_PREFILL", False)
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", True)
    monkeypatch.setattr(matvec, "F32_MIN_WEIGHTS", 96 * 24)
    ops, calls = torch.ops.paligemma_cpu, []
    real = ops.f32_mm
    monkeypatch.setattr(ops, "f32_mm", lambda *a: calls.append(1) or real(*a))
    x, w, b = operands(40, 96, 24)

    def f32(x, w, b=None, rows_alone=False, grad=False) -> bool:
        calls.clear()
        with torch.set_grad_enabled(grad):
            got = matvec.linear(x, w, b, rows_alone)
        flat = x.reshape(-1, x.shape[-1])
        if calls:
            want = real(flat, w, b, q_linear.F32_TILE, cpu_kernels.isa()).view_as(got)
            assert torch.equal(got, want)
        else:
            assert torch.equal(got, F.linear(x, w, b))
        return bool(calls)

    assert f32(x.view(2, 20, 96), w, b) and f32(x, w) and f32(x[: matvec.F32_MIN_ROWS], w, b)
    assert not f32(x[: matvec.F32_MIN_ROWS - 1], w, b)
    # rows_alone: a prefill's rows (more than FEW_ROWS) on our GEMM's vector paths, where a row
    # gets the same bits alone and in any batch; a few rows (decoding) keep F.linear's
    vector = cpu_kernels.isa() >= 1
    few = x[: matvec.FEW_ROWS]
    assert f32(x, w, b, rows_alone=True) == vector and not f32(few, w, b, rows_alone=True)
    if vector:
        both = matvec.linear(x, w, b, True)
        assert torch.equal(matvec.linear(x[: matvec.FEW_ROWS + 1], w, b, True), both[:17])
    monkeypatch.setenv(cpu_kernels.ENV_ISA, "scalar")  # PyTorch's float32 GEMM per tile
    assert not f32(x, w, b, rows_alone=True) and f32(x, w, b)
    monkeypatch.delenv(cpu_kernels.ENV_ISA)
    assert not f32(x.float(), w.float())
    assert not f32(x, w.clone().requires_grad_(), grad=True)
    assert not f32(x, w[:-1], b[:-1])  # a weight smaller than F32_MIN_WEIGHTS
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", False)
    assert not f32(x, w, b)


def test_model_prefill_in_float32_products_stays_close_and_decodes_the_same(monkeypatch):
    """A tiny bfloat16 model (installed CPU linears) with float32 prefill products (every weight
    size): logits within bfloat16 noise of the bfloat16 GEMMs', the same greedy tokens."""
    from conftest import make_batch
    from test_model import tiny

    from paligemma import generate as engine

    model = matvec.install_matvec_(tiny(True).to(torch.bfloat16))
    ids, am, tt, px = make_batch()
    px = px.to(torch.bfloat16)
    inputs = {"input_ids": ids, "attention_mask": am, "token_type_ids": tt, "pixel_values": px}
    ops, calls, out = torch.ops.paligemma_cpu, [], {}
    monkeypatch.setattr(matvec, "F32_MIN_WEIGHTS", 0)
    real = ops.f32_mm
    monkeypatch.setattr(ops, "f32_mm", lambda *a: calls.append(1) or real(*a))
    for on in (False, True):
        calls.clear()
        monkeypatch.setattr(cpu_kernels, "F32_PREFILL", on)
        with torch.no_grad():
            logits = model(ids, px, am, tt).float()
        tokens = engine.generate(model, inputs, engine.GenerationConfig(max_new_tokens=6), {1})
        out[on] = logits, tokens.tokens
        assert bool(calls) == on
    err = (out[True][0] - out[False][0]).abs()[am.bool()]
    assert err.max() < 0.1 and err.mean() < 0.01, (err.max(), err.mean())
    assert out[True][1] == out[False][1]


def test_patch_conv_takes_float32_products_where_bf16_gemms_are_slow(monkeypatch):
    """install_matvec_ swaps a plain nn.Conv2d (SigLIP's patch embedding) for a CpuConv2d
    holding the same parameters under the same names. With float32 products on (F32_PREFILL
    True), bfloat16 CPU input gives the float32 convolution rounded once (close to float64);
    F32_PREFILL False, a weight smaller than F32_MIN_WEIGHTS and a gradient to record give
    PyTorch's bfloat16 convolution, bit for bit. Under rows_alone (the server) the patches go
    through f32_mm on our GEMM's vector paths (an image's bits the same alone and in a batch),
    an overlapping convolution and the scalar path keep PyTorch's bfloat16 one."""
    from paligemma.model import set_rows_alone_

    assert cpu_kernels.available(), cpu_kernels.why_not()
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 48, 14, stride=14).to(torch.bfloat16)
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.05, generator=g)
    model = torch.nn.Sequential(conv)
    keys = list(model.state_dict())
    matvec.install_matvec_(model)
    new = model[0]
    assert type(new) is matvec.CpuConv2d and new.weight is conv.weight and new.bias is conv.bias
    assert list(model.state_dict()) == keys and new.stride == (14, 14)
    x = torch.randn(2, 3, 28, 28, generator=g).to(torch.bfloat16)
    w, b = conv.weight, conv.bias
    plain = F.conv2d(x, w, b, stride=14)
    wide = F.conv2d(x.float(), w.float(), b.float(), stride=14).to(torch.bfloat16)
    want = F.conv2d(x.double(), w.double(), b.double(), stride=14)
    seen = []  # the dtype each convolution ran in
    real = torch.nn.Conv2d._conv_forward
    monkeypatch.setattr(
        torch.nn.Conv2d, "_conv_forward", lambda m, i, *a: seen.append(i.dtype) or real(m, i, *a)
    )

    def run(x: torch.Tensor, wide_: bool) -> torch.Tensor:
        seen.clear()
        out = new(x)
        assert seen == [torch.float32 if wide_ else torch.bfloat16]
        return out

    monkeypatch.setattr(matvec, "F32_MIN_WEIGHTS", w.numel())
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", True)
    with torch.no_grad():
        got = run(x, True)
        assert torch.equal(got, wide)
        assert ((got.double() - want).abs() <= 2.0**-8 * want.abs() + 1e-6).all()
        monkeypatch.setattr(matvec, "F32_MIN_WEIGHTS", w.numel() + 1)
        assert torch.equal(run(x, False), plain)
        monkeypatch.setattr(matvec, "F32_MIN_WEIGHTS", w.numel())
        set_rows_alone_(model)  # the server: our GEMM over the patches, or PyTorch's bfloat16
        assert new.rows_alone
        if cpu_kernels.isa() >= 1:
            seen.clear()
            got = new(x)
            assert seen == [] and got.shape == plain.shape  # no convolution ran
            assert ((got.double() - want).abs() <= 2.0**-8 * want.abs() + 1e-6).all()
            assert torch.equal(new(x[1:]), got[1:])  # an image alone: its bits in the batch
            overlapping = torch.nn.Conv2d(3, 48, 14, stride=7).to(torch.bfloat16)
            conv7 = set_rows_alone_(matvec.install_matvec_(torch.nn.Sequential(overlapping)))[0]
            assert type(conv7) is matvec.CpuConv2d  # not patches: PyTorch's bfloat16 one
            assert torch.equal(conv7(x), F.conv2d(x, conv7.weight, conv7.bias, 7))
        monkeypatch.setenv(cpu_kernels.ENV_ISA, "scalar")  # PyTorch's float32 GEMMs: bfloat16
        assert torch.equal(run(x, False), plain)
        monkeypatch.delenv(cpu_kernels.ENV_ISA)
        set_rows_alone_(model, False)
        monkeypatch.setattr(cpu_kernels, "F32_PREFILL", False)
        assert torch.equal(run(x, False), plain)
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", True)
    assert torch.equal(run(x.clone().requires_grad_(), False), plain)  # autograd: PyTorch's
