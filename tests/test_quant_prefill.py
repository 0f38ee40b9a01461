"""The quantised prefill path (quant/dequant.cpp): the C++ dequantiser is bit-exact with the
Python reference (`dequantize(start, end).to(dtype)`) on every instruction set, and the tiled
product it feeds equals x @ dequantize().T without dequantising the matrix in Python."""

from __future__ import annotations

import pytest
import torch
from conftest import amx_bf16
from torch import nn

from paligemma.quant import codes as quant_codes
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import linear as q

# (in, out, group): odd widths (tails shorter than a vector), int4 groups that are and are not
# multiples of 32 (the element loop), a row count that no tile divides
SHAPES = [(200, 37, 40), (96, 17, 32), (60, 9, 6), (256, 40, 128), (2048, 3, 64), (352, 5, 32)]


def layer(cls, in_features: int, out_features: int, group: int, dtype) -> q._QuantizedLinear:
    torch.manual_seed(in_features + out_features)
    linear = nn.Linear(in_features, out_features, bias=True).to(dtype)
    with torch.no_grad():  # rows of very different sizes: scales far apart
        linear.weight.mul_(torch.rand(out_features, 1, dtype=dtype) * 4)
    if cls is q.Int8Linear:
        return cls.from_linear(linear)
    return cls.from_linear(linear, group)


def bits_group(m) -> tuple[int, int]:
    return (8, 0) if isinstance(m, q.Int8Linear) else (4, m.group)


def paths() -> range:
    assert cpu_kernels.available(), cpu_kernels.why_not()
    return range(int(torch.ops.paligemma_cpu.cpu_isa()) + 1)


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_dequantiser_is_bit_exact_with_the_python_reference_on_every_path(cls, scale_dtype):
    ops = torch.ops.paligemma_cpu
    for isa in paths():
        for in_features, out_features, group in SHAPES:
            m = layer(cls, in_features, out_features, group, scale_dtype)
            bits, group = bits_group(m)
            for out_dtype in (torch.float32, torch.bfloat16):
                for start, end in ((0, out_features), (1, out_features - 1)):
                    want = m.dequantize(start, end).to(out_dtype)
                    got = torch.full((end - start, in_features), float("nan"), dtype=out_dtype)
                    ops.dequantize_rows(m.weight, m.scale, bits, group, got, start, isa)
                    same = torch.equal(
                        got.view(torch.int16 if got.itemsize == 2 else torch.int32),
                        want.view(torch.int16 if want.itemsize == 2 else torch.int32),
                    )
                    assert same, (isa, in_features, out_features, group, out_dtype, start)


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
def test_tiled_product_equals_the_dequantised_product(cls):
    """Every path and dtype, tiles that do and do not divide the rows, 1 and 2 threads, in
    inference mode (the worker threads write inference tensors) and out of it."""
    ops, threads = torch.ops.paligemma_cpu, torch.get_num_threads()
    try:
        for isa, n_threads in ((isa, n) for isa in paths() for n in (1, 2)):
            torch.set_num_threads(n_threads)
            for in_features, out_features, group in SHAPES[:3]:
                for dtype, bound in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
                    m = layer(cls, in_features, out_features, group, dtype)
                    x = torch.randn(19, in_features, dtype=dtype)
                    want = x.double() @ m.dequantize().to(dtype).double().T
                    tiles = ((4, torch.inference_mode), (16, torch.no_grad), (64, None))
                    for tile, mode in (*tiles, (-16, torch.inference_mode)):  # (-: all threads)
                        with mode() if mode else torch.enable_grad():
                            got = ops.dequant_mm(x, m.weight, m.scale, *bits_group(m), tile, isa)
                        assert got.dtype == dtype and got.shape == (19, out_features)
                        err = ((got.double() - want).norm() / want.norm()).item()
                        assert err < bound, (isa, n_threads, in_features, dtype, tile, err)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
def test_prefill_rows_take_the_tiles_never_a_python_dequantisation(cls, monkeypatch):
    m = layer(cls, 128, 96, 64, torch.bfloat16)
    x = torch.randn(2, q.PACKED_ROWS, 128, dtype=torch.bfloat16)  # > PACKED_ROWS rows in all
    with torch.no_grad():
        want = nn.functional.linear(x.float(), m.dequantize().to(x.dtype).float(), m.bias.float())
    monkeypatch.setattr(q, "TILE", 32)
    monkeypatch.setattr(m, "dequantize", lambda *a: pytest.fail("dequantised in Python"))
    with torch.inference_mode():
        got = m(x)
    assert got.dtype == x.dtype and got.shape == (2, q.PACKED_ROWS, 96)
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2


def test_dequant_ops_check_their_arguments():
    ops, m = torch.ops.paligemma_cpu, layer(q.Int4Linear, 128, 8, 64, torch.float32)
    with pytest.raises(RuntimeError, match="one scale per output row and group"):
        ops.dequant_mm(torch.randn(3, 128), m.weight, m.scale[:, :1].contiguous(), 4, 64, 8)
    with pytest.raises(RuntimeError, match="rows"):
        ops.dequantize_rows(m.weight, m.scale, 4, 64, torch.empty(4, 128), 6)
    with pytest.raises(RuntimeError, match="has no path"):
        ops.dequant_mm(torch.randn(3, 128), m.weight, m.scale, 4, 64, 8, 3)


def test_vectorised_quantiser_gives_the_codes_of_the_scalar_one_on_every_path():
    """quantize_isa (quantize.cpp: AVX-512 / AVX2 / scalar, what loading uses) equals its scalar
    path `quantize`, which tests/test_quantize.py holds to the Python reference."""
    assert cpu_kernels.available()  # (run alone, nothing loaded the ops before)
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        w = (torch.randn(70, 448) * torch.rand(70, 1) * 3).to(dtype)
        w[3], w[5, 7] = 0, 1e30 if dtype == torch.float32 else 0  # an all-zero row, an outlier
        for bits, group in ((8, 64), (4, 64), (4, 14), (4, 32), (4, 448)):
            want = ops.quantize(w[:, 3:] if bits == 8 else w, bits, group)
            for isa in paths():
                got = ops.quantize_isa(w[:, 3:] if bits == 8 else w, bits, group, isa)
                assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True)), (bits, isa)


def test_quantiser_threads_share_the_rows_in_blocks():
    """quantize_isa's threads take blocks of rows (2^16 weights) in turn: with 3 threads on 11
    blocks and a short last one, every row is quantised once, as one thread does it."""
    assert cpu_kernels.available()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(3)
    w = torch.randn(11 * 64 - 5, 1024).to(torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        for bits in (8, 4):
            torch.set_num_threads(1)
            want = ops.quantize_isa(w, bits, 64)
            torch.set_num_threads(3)
            got = ops.quantize_isa(w, bits, 64)
            assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True)), bits
            assert torch.equal(got[0][-5:], ops.quantize(w[-5:], bits, 64)[0])
    finally:
        torch.set_num_threads(threads)


# (in, out, group): one K block and several (dequant_amx.h's kKB 256, a short last one), output
# rows short of a tile (the 16-row tail), int4 groups 32 / 64 / 128
AMX_SHAPES = [(64, 37, 32), (96, 17, 32), (576, 50, 64), (2048, 300, 128), (1024, 16, 128)]


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
def test_amx_bf16_product_is_float32_sums_of_the_bf16_weight_then_one_rounding(cls):
    """The fused GEMM (amx=1) against float64 of the same bfloat16 x and dequantised bfloat16
    weight: within the output's one rounding to bfloat16 plus float32 summation, element by
    element, for 1..40 and 268 rows, 1 and 2 threads. Without AMX-BF16, amx=1 is an error."""
    ops, threads = torch.ops.paligemma_cpu, torch.get_num_threads()
    m = layer(cls, 64, 8, 32, torch.bfloat16)
    x = torch.randn(20, 64, dtype=torch.bfloat16)
    if not amx_bf16():
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            ops.dequant_mm(x, m.weight, m.scale, *bits_group(m), 256, -1, 1)
        return
    try:
        for (i, o, group), n_threads in zip(AMX_SHAPES, (1, 2, 1, 2, 2), strict=True):
            torch.set_num_threads(n_threads)
            for scale_dtype in (torch.float32, torch.bfloat16):
                m = layer(cls, i, o, group, scale_dtype)
                w = m.dequantize().to(torch.bfloat16).double()
                for rows in (*range(1, 41, 3 if i > 600 else 1), 268):
                    x = torch.randn(rows, i, dtype=torch.bfloat16)
                    got = ops.dequant_mm(x, m.weight, m.scale, *bits_group(m), 256, -1, 1)
                    want = x.double() @ w.T
                    sums = i * 2.0**-24 * (x.double().abs() @ w.abs().T)  # float32 summation
                    bound = 2.0**-8 * (want.abs() + sums) + sums
                    assert got.dtype == torch.bfloat16 and got.shape == (rows, o)
                    assert ((got.double() - want).abs() <= bound).all(), (i, o, rows)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_int4_quantiser_is_bit_exact_with_the_python_reference(isa, monkeypatch):
    """quantize_weight through quantize_isa on the path PALIGEMMA_CPU_ISA names (its vector
    codes, error sums and nibble packing) gives int4_codes' codes and scales (the Python
    reference) bit for bit: groups summed in registers (32, 64, 128) or in memory (14, 448:
    zero-padded), float32 and bfloat16 weights, a zero group, an outlier, tied groups."""
    torch.manual_seed(1)
    w = torch.randn(37, 896) * torch.rand(37, 1) * 3
    w[3], w[4, 64:128] = 0, 0  # a zero row and a zero group
    w[5, 7], w[6, :64] = 40.0, torch.arange(64) % 3 - 1.0  # an outlier; -1, 0, 1 (ties)
    monkeypatch.setenv(cpu_kernels.ENV_ISA, isa)
    assert cpu_kernels.available() and cpu_kernels.isa() == min(
        cpu_kernels.ISAS[isa], int(torch.ops.paligemma_cpu.cpu_isa())
    )
    for dtype in (torch.float32, torch.bfloat16):
        for group in (64, 32, 128, 14, 448):
            ours = q.quantize_weight(w.to(dtype), "int4", group)
            for a, b in zip(ours, python_reference(w.to(dtype), group), strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b), (dtype, group)


def python_reference(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_weight(w, "int4", group) without the C++ quantiser (int4_codes)."""
    available, cpu_kernels.available = cpu_kernels.available, lambda: False
    try:
        return q.quantize_weight(w, "int4", group)
    finally:
        cpu_kernels.available = available


def test_int4_scales_are_the_least_squared_error_of_the_clip_ratios():
    """int4_codes keeps, per group, the CLIP ratio of least error: never worse than amax / 7
    (the first ratio), clipped on most random groups, and the whole weight's error is lower."""
    torch.manual_seed(2)
    w = torch.randn(64, 8, 64)

    def error(clip) -> torch.Tensor:
        codes, scale = quant_codes.int4_codes(w) if clip is None else int4_codes_with(clip)
        return ((codes.float() - 8) * scale[..., None] - w).square().sum(-1)

    def int4_codes_with(clip):
        old, quant_codes.CLIP = quant_codes.CLIP, clip
        try:
            return quant_codes.int4_codes(w)
        finally:
            quant_codes.CLIP = old

    best, plain = error(None), error((1.0,))
    amax_over_7 = w.abs().amax(-1) / 7
    assert (best <= plain * (1 + 1e-6)).all()
    assert (quant_codes.int4_codes(w)[1] < amax_over_7).float().mean() > 0.5  # most groups clipped
    assert best.sum() < 0.9 * plain.sum(), (best.sum(), plain.sum())


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
def test_amx_bf16_is_what_the_layers_run_and_the_environment_turns_it_off(cls, monkeypatch):
    """bfloat16 prefill rows: the default takes AMX-BF16 where the CPU has it (bit for bit
    dequant_mm amx=1), PALIGEMMA_CPU_ISA=avx512vnni / avx2 or AMX_PREFILL False the tiles
    feeding oneDNN (amx=0); shapes the GEMM does not take (in_features not a multiple of 32,
    int4 groups of 40) fall back to those under amx=1 too; more rows than one pass holds."""
    ops, has = torch.ops.paligemma_cpu, amx_bf16()
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", False)  # (float32 products: the next tests)
    for i, o, group, rows in ((128, 40, 64, 30), (200, 37, 40, 20), (96, 9, 32, 1100)):
        m = layer(cls, i, o, group, torch.bfloat16)
        x = torch.randn(rows, i, dtype=torch.bfloat16)
        args = (x, m.weight, m.scale, *bits_group(m), q.TILE, cpu_kernels.isa())
        on, off = ops.dequant_mm(*args, 1) if has else None, ops.dequant_mm(*args, 0)
        fused = has and i % 32 == 0 and (cls is q.Int8Linear or group % 32 == 0)
        with torch.inference_mode():
            monkeypatch.delenv(cpu_kernels.ENV_ISA, raising=False)
            assert cpu_kernels.amx_bf16() == has
            assert torch.equal(q._chunked(m, x), on if fused else off)
            for name in ("avx512vnni", "avx2"):
                monkeypatch.setenv(cpu_kernels.ENV_ISA, name)
                assert not cpu_kernels.amx_bf16()
                lower = ops.dequant_mm(*args[:-1], cpu_kernels.isa(), 0)  # (avx2: its own rows)
                assert torch.equal(q._chunked(m, x), lower), name
            monkeypatch.delenv(cpu_kernels.ENV_ISA)
            monkeypatch.setattr(q, "AMX_PREFILL", False)
            assert torch.equal(q._chunked(m, x), off)
            monkeypatch.setattr(q, "AMX_PREFILL", True)


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
def test_f32_tiles_hold_the_bf16_weight_and_sum_in_float32(cls):
    """dequant_mm f32=1 on bfloat16 x (CPUs without a fast bfloat16 GEMM): against float64 of
    the same x and the dequantised bfloat16 weight, within the output's one rounding plus
    float32 summation, element by element; every path, scale dtype, tiles that do and do not
    divide the outputs (and all threads on one tile), 1 and 2 threads. float32 x ignores it."""
    ops, threads = torch.ops.paligemma_cpu, torch.get_num_threads()
    try:
        for isa, n_threads in ((isa, n) for isa in paths() for n in (1, 2)):
            torch.set_num_threads(n_threads)
            scale_dtypes = (torch.float32, torch.bfloat16) * 3
            for (i, o, group), scale_dtype in zip(SHAPES, scale_dtypes, strict=True):
                m = layer(cls, i, o, group, scale_dtype)
                w = m.dequantize().to(torch.bfloat16).double()
                x = torch.randn(23, i, dtype=torch.bfloat16)
                want = x.double() @ w.T
                sums = i * 2.0**-24 * (x.double().abs() @ w.abs().T)
                bound = 2.0**-8 * (want.abs() + sums) + sums
                for tile in (4, 128, -16):
                    got = ops.dequant_mm(x, m.weight, m.scale, *bits_group(m), tile, isa, 0, 1)
                    assert got.dtype == torch.bfloat16 and got.shape == (23, o)
                    assert ((got.double() - want).abs() <= bound).all(), (isa, i, o, tile)
            xf = torch.randn(5, i)
            args = (m.weight, m.scale, *bits_group(m), 16, isa, 0)
            assert torch.equal(ops.dequant_mm(xf, *args, 1), ops.dequant_mm(xf, *args, 0))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
def test_layers_take_f32_tiles_where_bf16_gemms_are_slow_rows_alone_on_our_gemm(cls, monkeypatch):
    """F32_PREFILL True (AMX_PREFILL off so AMX hosts take it too): bfloat16 prefill rows give
    dequant_mm f32=1's bits in F32_TILE tiles; under set_rows_alone_ (the server) too on our
    GEMM's vector paths (a row's bits alone there), the bfloat16 tiles' (f32=0) on the scalar
    path; with F32_PREFILL False, the bfloat16 tiles'."""
    from paligemma.model import set_rows_alone_

    ops, calls = torch.ops.paligemma_cpu, []
    real = ops.dequant_mm
    monkeypatch.setattr(ops, "dequant_mm", lambda *a: calls.append(a[5:]) or real(*a))
    monkeypatch.setattr(q, "AMX_PREFILL", False)
    m = layer(cls, 128, 40, 64, torch.bfloat16)
    x = torch.randn(30, 128, dtype=torch.bfloat16)
    args = (x, m.weight, m.scale, *bits_group(m))
    f32 = real(*args, q.F32_TILE, cpu_kernels.isa(), 0, 1)
    bf16 = real(*args, q.TILE, cpu_kernels.isa(), 0, 0)

    def run(want, f32: int):
        calls.clear()
        with torch.inference_mode():
            assert torch.equal(q._chunked(m, x), want)
        assert calls == [(q.F32_TILE if f32 else q.TILE, cpu_kernels.isa(), 0, f32)]

    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", True)
    run(f32, 1)
    set_rows_alone_(nn.Sequential(m))
    assert m.rows_alone
    if cpu_kernels.isa() >= 1:
        run(f32, 1)
    monkeypatch.setenv(cpu_kernels.ENV_ISA, "scalar")
    run(real(*args, q.TILE, 0, 0, 0), 0)
    monkeypatch.delenv(cpu_kernels.ENV_ISA)
    set_rows_alone_(nn.Sequential(m), False)
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", False)
    run(bf16, 0)
