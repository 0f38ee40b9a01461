"""Gemma's MLP prefill as one AMX call (dequant.cpp's bf16_geglu, quant/gelu.py's
CpuGeluTanh.geglu): bit for bit what two bf16_mm calls and gelu_tanh_ give, and taken only where
both projections would take the AMX GEMM, with no hooks to skip. The same for SigLIP's fc1 and
its GELU (bf16_mm gelu=True, CpuGeluTanh.linear_gelu)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import amx_bf16, assert_hooks_step_aside, fused_taken

from paligemma.config import GemmaConfig, SiglipConfig
from paligemma.gemma import MLP
from paligemma.quant import gelu as cpu_gelu
from paligemma.quant.linear import quantize_
from paligemma.quant.matvec import install_matvec_
from paligemma.siglip import MLP as SiglipMLP


def operands(rows: int, i: int, o: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, i, generator=g).to(torch.bfloat16)
    wg, wu = ((torch.randn(o, i, generator=g) * 0.1).to(torch.bfloat16) for _ in range(2))
    return x, wg, wu


def three_ops(x, wg, wu):
    ops = torch.ops.paligemma_cpu
    return ops.gelu_tanh_(ops.bf16_mm(x, wg, None, 256), ops.bf16_mm(x, wu, None, 256), -1)


def test_bf16_geglu_is_bf16_mm_twice_and_gelu_tanh_bit_for_bit():
    """Rows within one pass and past it (1,024 rows), K blocks with a short last one, output
    rows short of a panel and of a tile, 1 and 2 threads; sums of +-0, huge, inf and NaN (the
    roundings' and the GELU's edges). Without AMX-BF16 the op is a clear error."""
    ops = torch.ops.paligemma_cpu
    if not amx_bf16():
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            ops.bf16_geglu(*operands(20, 64, 8), 256)
        return
    threads = torch.get_num_threads()
    try:
        for (rows, i, o), n in zip(
            [(268, 2048, 300), (17, 64, 37), (40, 2080, 17), (1100, 96, 50)],
            (2, 1, 2, 2),
            strict=True,
        ):
            torch.set_num_threads(n)
            x, wg, wu = operands(rows, i, o, seed=rows)
            got = ops.bf16_geglu(x, wg, wu, 256)
            assert got.dtype == torch.bfloat16 and got.shape == (rows, o)
            assert torch.equal(got.view(torch.int16), three_ops(x, wg, wu).view(torch.int16))
        x, wg, wu = operands(32, 64, 48, seed=1)
        x[0], x[1, :5] = 0.0, torch.tensor([math.inf, -math.inf, math.nan, 3e38, -3e38])
        wg[0], wu[1] = -0.0, 0.0
        wg[2, :2], wu[3, :2] = torch.tensor([1e30, -1e30]), torch.tensor([math.nan, 1.0])
        got = ops.bf16_geglu(x, wg, wu, 256)
        assert torch.equal(got.view(torch.int16), three_ops(x, wg, wu).view(torch.int16))
        assert got.isnan().any() and (got.view(torch.int16) == -32768).any()  # NaN and -0 seen
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="w_gate and w_up"):
        ops.bf16_geglu(x, wg, wu[:5], 256)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.bf16_geglu(x[:, :40], wg[:, :40], wu[:, :40], 256)


def test_dequant_geglu_is_dequant_mm_twice_and_gelu_tanh_bit_for_bit():
    """int8 and int4 codes (groups 32 to 128), float32 and bfloat16 scales, rows within a pass
    and past it, output rows short of a panel: the same bits as dequant_mm's AMX path for gate
    and up, then gelu_tanh_. Mismatched gate / up codes are an error; without AMX-BF16 the op
    is one."""
    ops = torch.ops.paligemma_cpu
    x, wg, wu = operands(40, 256, 37, seed=3)
    if not amx_bf16():
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            ops.dequant_geglu(x, *ops.quantize(wg, 8, 0), *ops.quantize(wu, 8, 0), 8, 0, 256)
        return
    for (rows, i, o), bits, group, sdtype in (
        ((268, 2048, 300), 8, 0, torch.bfloat16),
        ((40, 256, 37), 4, 32, torch.float32),
        ((1100, 512, 50), 4, 128, torch.bfloat16),
        ((20, 1024, 17), 4, 64, torch.float32),
    ):
        x, wg, wu = operands(rows, i, o, seed=rows)
        (qg, sg), (qu, su) = (ops.quantize(w.float(), bits, group) for w in (wg, wu))
        sg, su = sg.to(sdtype), su.to(sdtype)
        gate, up = (
            ops.dequant_mm(x, q, sc, bits, group, 256, -1, 1, 0) for q, sc in ((qg, sg), (qu, su))
        )
        want = ops.gelu_tanh_(gate, up, -1)
        got = ops.dequant_geglu(x, qg, sg, qu, su, bits, group, 256)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (rows, bits, group)
    with pytest.raises(RuntimeError, match="alike"):
        ops.dequant_geglu(x, qg, sg, qu[:5], su[:5], bits, group, 256)


def mlp(mode: str | None, width: int = 64, hidden: int = 96) -> MLP:
    """Gemma's MLP in bfloat16 as loading installs it, its linears int8 / int4 (group 32) when
    `mode` says so."""
    torch.manual_seed(0)
    block = MLP(GemmaConfig(width=width, mlp_dim=hidden)).to(torch.bfloat16).eval()
    model = torch.nn.Sequential(block)
    if mode:
        quantize_(model, mode, include="*", group=32, head=False)
    return install_matvec_(model)[0]


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_the_mlp_takes_the_fused_call_only_where_it_gives_the_same_bits(mode, monkeypatch):
    """Gemma's MLP after install_matvec_ (bfloat16 linears: bf16_geglu; int8 / int4:
    dequant_geglu): the same output bits with FUSED_GEGLU on and off; the fused call taken for a
    prefill's rows where the CPU has AMX-BF16, not for few rows, a gradient to record or
    autograd on, FUSED_GEGLU or FAST_GELU off, or a hook on a projection, on the GELU or for
    every module."""
    has, ops = amx_bf16(), torch.ops.paligemma_cpu
    calls: list[int] = []
    name = "dequant_geglu" if mode else "bf16_geglu"
    real = getattr(ops, name)
    monkeypatch.setattr(ops, name, lambda *a: calls.append(1) or real(*a))
    m = mlp(mode)
    if mode:
        assert type(m.gate_proj).__name__ == f"Int{mode[3]}Linear"
    x = torch.randn(2, 20, 64).to(torch.bfloat16)

    taken = fused_taken(m, calls, monkeypatch, cpu_gelu, "FUSED_GEGLU")

    assert taken(x) == has
    assert not taken(x[:1, :16]) and not taken(x, grad=True)
    for p in m.parameters():  # autograd on, nothing to record: PyTorch's GELU in forward
        p.requires_grad_(False)
    assert not taken(x, grad=True)
    monkeypatch.setattr(cpu_gelu, "FAST_GELU", False)
    assert not taken(x)
    monkeypatch.setattr(cpu_gelu, "FAST_GELU", True)
    assert_hooks_step_aside(taken, x, (m.gate_proj, m.up_proj, m.act))
    assert taken(x) == has


def test_bf16_mm_gelu_is_bf16_mm_and_gelu_tanh_bit_for_bit():
    """bf16_mm(..., gelu=True): rows within one pass and past it, SigLIP's fc1 shape (1152 ->
    4304, bias), output rows short of a panel and of a tile, 1 and 2 threads; sums of +-0, huge,
    inf and NaN, with and without a bias: the same bits as bf16_mm and gelu_tanh_ in turn."""
    ops = torch.ops.paligemma_cpu
    if not amx_bf16():
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            ops.bf16_mm(*operands(20, 64, 8)[:2], None, 256, True)
        return
    threads = torch.get_num_threads()
    try:
        for (rows, i, o), n in zip(
            [(256, 1152, 4304), (17, 64, 37), (1100, 96, 50)], (2, 1, 2), strict=True
        ):
            torch.set_num_threads(n)
            x, w, b = operands(rows, i, o, seed=rows)
            for bias in (None, b[:, 0].float()):
                got = ops.bf16_mm(x, w, bias, 256, True)
                want = ops.gelu_tanh_(ops.bf16_mm(x, w, bias, 256), None, -1)
                assert got.shape == (rows, o) and torch.equal(
                    got.view(torch.int16), want.view(torch.int16)
                )
        x, w, _ = operands(32, 64, 48, seed=1)
        x[0], x[1, :5] = 0.0, torch.tensor([math.inf, -math.inf, math.nan, 3e38, -3e38])
        w[0], w[2, :2] = -0.0, torch.tensor([1e30, -1e30])
        got = ops.bf16_mm(x, w, None, 256, True)
        want = ops.gelu_tanh_(ops.bf16_mm(x, w, None, 256), None, -1)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))
        assert got.isnan().any() and (got.view(torch.int16) == -32768).any()  # NaN and -0 seen
    finally:
        torch.set_num_threads(threads)


def test_siglip_mlp_takes_the_fused_fc1_only_where_it_gives_the_same_bits(monkeypatch):
    """SigLIP's MLP after install_matvec_: the same output bits with FUSED_GELU on and off; the
    fused fc1 (bf16_mm gelu=True) taken for a prefill's rows where the CPU has AMX-BF16, not for
    few rows, autograd on, FUSED_GELU or FAST_GELU off, a hook on fc1, on the GELU or for every
    module, or an fc1 that is not a plain linear (int8)."""
    has, ops = amx_bf16(), torch.ops.paligemma_cpu
    calls: list[bool] = []
    real = ops.bf16_mm
    monkeypatch.setattr(ops, "bf16_mm", lambda *a: calls.append(a[4:] == (True,)) or real(*a))
    torch.manual_seed(0)
    block = SiglipMLP(SiglipConfig(width=64, mlp_dim=96)).to(torch.bfloat16).eval()
    model = install_matvec_(torch.nn.Sequential(block))
    m = model[0]
    x = torch.randn(2, 20, 64).to(torch.bfloat16)

    taken = fused_taken(m, calls, monkeypatch, cpu_gelu, "FUSED_GELU")

    assert taken(x) == has
    assert not taken(x[:1, :16]) and not taken(x, grad=True)
    monkeypatch.setattr(cpu_gelu, "FAST_GELU", False)
    assert not taken(x)
    monkeypatch.setattr(cpu_gelu, "FAST_GELU", True)
    assert_hooks_step_aside(taken, x, (m.fc1, m.act))
    assert taken(x) == has
    quantize_(model, "int8", include="*", head=False)
    assert type(m.fc1).__name__ == "Int8Linear" and not taken(x)
