"""The plain bfloat16 prefill (quant/matvec.py over dequant.cpp's bf16_mm): float32 sums of the
bfloat16 products with one rounding, each row's bits independent of the other rows, and the
switches that turn it off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import matvec


def amx_bf16() -> bool:
    assert cpu_kernels.available(), cpu_kernels.why_not()
    return bool(torch.ops.paligemma_cpu.cpu_amx_bf16())


def operands(rows: int, i: int, o: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, i, generator=g).to(torch.bfloat16)
    w = (torch.randn(o, i, generator=g) * torch.rand(o, 1, generator=g) * 0.1).to(torch.bfloat16)
    return x, w, torch.randn(o, generator=g).to(torch.bfloat16)


# (in, out): one K block, several with a short last one (kKB 512), output rows short of a
# panel (the 16-row tail) and of a tile
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
