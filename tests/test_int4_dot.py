"""The int4 / int8 x int8-activation kernels (quant/int4_dot.cpp), which read the saved layouts:
every instruction-set path equals a float64 product of the same quantised activations, the AMX
tiles equal the VNNI loop bit for bit, and the layers take them for bfloat16 decoding rows
without keeping a copy of the weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import linear as q


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def portable_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8[O, I / 2] two codes a byte, low nibble first -> uint8[O, I]."""
    return torch.stack([packed & 15, packed >> 4], -1).view(len(packed), -1)


def dequantized_x(x: torch.Tensor, group: int) -> torch.Tensor:
    """float64 x after it is quantised as the kernels do: per row and group, symmetric, scale
    max|x| / 127, round half to even (in float32, as the kernels)."""
    m, i = x.shape
    xg = x.float().view(m, i // group, group)
    xs = xg.abs().amax(-1, keepdim=True) / 127  # (M, G, 1)
    xq = torch.where(xs > 0, torch.round(xg / xs.clamp_min(1e-30)), 0.0).clamp(-127, 127)
    return (xq.double() * xs.double()).view(m, i)


def reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, group: int):
    """float64 x @ W.T for int4 codes uint8[O, I] (0..15) and scales [O, G], x quantised."""
    w = (codes.double() - 8).view(len(codes), -1, group) * scale.double()[..., None]
    return dequantized_x(x, group) @ w.view(len(codes), -1).T


def variants() -> list[tuple[int, int]]:
    """(isa, vnni) for every path this CPU runs: each instruction set, with and without VNNI."""
    has = int(torch.ops.paligemma_cpu.cpu_vnni())
    out = [(0, 0)]
    for isa in range(1, int(torch.ops.paligemma_cpu.cpu_isa()) + 1):
        out += [(isa, 0)] + ([(isa, 1)] if has & isa else [])
    return out


SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # read as saved, no copy


def test_int4_dot_matches_float64_on_every_path():
    """The saved layout (codes uint8[O, I / 2], scales [O, G] in any of SCALE_DTYPES). Odd
    shapes: O not a multiple of 16 (the last rows' tail), I not a multiple of 128 (a chunk's
    tail), G not a multiple of 16, 5 / 13 rows (padded to a compiled width), 17 rows (two
    passes), a zero row and a zero group (scale 0), bfloat16 x."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    paths = variants()
    assert len(paths) >= 2  # scalar, and the x86 CI hosts' AVX2 at least
    shapes = ((40, 64, 32), (33, 128, 64), (16, 384, 128), (70, 192, 64), (9, 1088, 32))
    # AVX-512-VNNI's one-row loop (int4_dot_slab.h) in whole slabs of 16 chunks (I = 2048,
    # 4096), a slab's tail (I = 2304) and groups of one and two chunks:
    shapes += ((33, 4096, 64), (20, 2304, 128), (17, 2048, 256))
    for (isa, vnni), rows in ((p, r) for p in paths for r in (1, 2, 3, 5, 8, 13, 16, 17)):
        for (o, i, group), dtype in zip(shapes, SCALE_DTYPES * 3, strict=False):
            x = torch.randn(rows, i)
            x[0, :group] = 0
            x[-1] = 0 if rows > 2 else x[-1]
            packed = torch.randint(0, 256, (o, i // 2), dtype=torch.uint8)
            scale = torch.rand(o, i // group).to(dtype)
            for xt in (x, x.to(torch.bfloat16)):
                got = ops.int4_dot(xt, packed, scale, group, isa, vnni)
                assert got.shape == (rows, o) and got.dtype == torch.float32
                want = reference(xt, portable_codes(packed), scale, group)
                assert rel_err(got, want) < 1e-6, (isa, vnni, rows, o, i)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.int4_dot(x, packed, scale, 48, -1, -1)
    with pytest.raises(RuntimeError, match="int8_dot: scale"):  # int4's scales for int8 codes
        ops.int8_dot(x, torch.zeros(o, i, dtype=torch.int8), scale, 32)
    with pytest.raises(RuntimeError, match="int4_dot: q must be"):  # int8 codes for int4
        ops.int4_dot(x, torch.zeros(o, i // 2, dtype=torch.int8), scale, 32)
    with pytest.raises(RuntimeError, match="has no VNNI"):
        ops.int4_dot(x, packed, scale, group, 0, 1)


def test_activation_ties_round_half_to_even_on_every_path():
    """Each path's vector quantiser takes the scalar loop's steps: groups whose max |x| is 127
    (scale exactly 1) with values on .5 ties round half to even (2.5 -> 2, 3.5 -> 4, -0.5 -> 0),
    and an all-zero group gives codes 0; so every path equals the float64 reference exactly up
    to float32 rounding, in float32 and bfloat16, at 1, 8 and 16 rows (AMX's layout too)."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    o, i, group = 32, 256, 64
    ties = torch.arange(-63, 64).float() + 0.5  # -62.5 .. 63.5: every tie in range
    for rows in (1, 8, 16):
        x = ties[torch.randint(0, len(ties), (rows, i))]
        x[:, ::group] = 127.0  # each group's max: its scale is exactly 1
        x[0, group : 2 * group] = 0  # a zero group
        packed = torch.randint(0, 256, (o, i // 2), dtype=torch.uint8)
        scale = torch.rand(o, i // group)
        want = reference(x, portable_codes(packed), scale, group)
        for isa, vnni in [*variants(), (-1, -1)]:
            for xt in (x, x.to(torch.bfloat16)):  # every value is exact in bfloat16
                got = ops.int4_dot(xt, packed, scale, group, isa, vnni)
                assert rel_err(got, want) < 1e-6, (isa, vnni, rows, xt.dtype)
    lone = torch.zeros(1, i)
    lone[0, :4] = torch.tensor([127.0, 2.5, 3.5, -0.5])
    assert dequantized_x(lone, group)[0, :4].tolist() == [127.0, 2.0, 4.0, 0.0]


def float32_codes(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation codes and scales in torch's float32 steps: s = max|x| / 127 per row and
    group, codes round_half_even(x / s) (IEEE division) clamped to [-127, 127], 0 where s = 0."""
    xg = x.float().view(len(x), -1, group)
    s = xg.abs().amax(-1, keepdim=True) / 127
    codes = torch.where(s > 0, torch.round(xg / s), 0.0).clamp(-127, 127)
    return codes.view(x.shape).to(torch.int8), s.squeeze(-1)


def test_activation_codes_equal_float32_division_next_to_every_half_way_point():
    """quantize_activations (the kernels' quantiser, int4_quantize_x.h) on every instruction-set
    path equals torch's float32 steps bit for bit. The vector loops multiply by 1 / s and divide
    only where a quotient lies within 2^-12 of a half-way point: here most values sit 0..4 ulps
    from (k + 0.5) * s for scales that are not powers of two (where x * (1 / s) and x / s round
    apart), the rest random, one group zero and one with a subnormal scale; float32 and
    bfloat16 inputs."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    rows, groups, group = 6, 8, 64
    m = torch.rand(rows, groups, 1) * 10 + 0.1  # each group's max |x|
    k = torch.randint(-127, 127, (rows, groups, group)).float() + 0.5
    near = (k * (m / 127)).view(torch.int32) + torch.randint(-4, 5, k.shape, dtype=torch.int32)
    x = near.view(torch.float32)
    x[..., 0] = m[..., 0]
    x[rows // 2 :] = torch.randn(rows - rows // 2, groups, group)
    x[0, 1] = 0  # a zero group: codes 0
    x[1, 2] = torch.randn(group) * 1e-38  # a subnormal scale
    x = x.view(rows, groups * group)
    for xt in (x, x.to(torch.bfloat16)):
        want_codes, want_scales = float32_codes(xt, group)
        for isa in range(int(ops.cpu_isa()) + 1):
            codes, scales = ops.quantize_activations(xt, group, isa)
            assert torch.equal(scales, want_scales), (isa, xt.dtype)
            assert torch.equal(codes, want_codes), (isa, xt.dtype, (codes != want_codes).sum())
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.quantize_activations(x, 48)


def test_bfloat16_output_is_the_float_output_rounded_on_every_path():
    """dtype=bfloat16 (the decode steps' output) gives the float32 output rounded to nearest even
    as torch rounds it, bit for bit on every path, and NaN where it is NaN (as c10::BFloat16:
    0x7fc0 on every path): 1, 3 and 8 rows (AMX's too), an output tail (O = 37), a row with a
    scale that is not a number, one whose sums overflow."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    o, i, group = 37, 256, 64
    codes = torch.randint(0, 256, (o, i // 2), dtype=torch.uint8)
    scale = torch.rand(o, i // group)
    scale[3, 1], scale[5] = float("nan"), 1e38
    for rows in (1, 3, 8):
        x = torch.randn(rows, i).to(torch.bfloat16)
        for isa, vnni in [*variants(), (-1, -1)]:
            want = ops.int4_dot(x, codes, scale, group, isa, vnni).to(torch.bfloat16)
            got = ops.int4_dot(x, codes, scale, group, isa, vnni, torch.bfloat16)
            nan = want.isnan()
            assert got.dtype == torch.bfloat16 and nan[:, 3].all() and torch.equal(got.isnan(), nan)
            assert (got[nan].view(torch.int16) == 0x7FC0).all(), (rows, isa, vnni)
            assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


def test_a_nan_activation_makes_its_row_nan_on_every_path():
    """A NaN in a row of x: its group's scale is NaN and its codes 0 (quantize_activations), so
    every product of that row is NaN, as a float product's would be, on every path (AMX's too),
    int4 and int8; the other rows keep their bits (each equals its call without the NaN row)."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    o, i, group = 40, 256, 64
    x = torch.randn(8, i).to(torch.bfloat16)
    x[2, 70] = float("nan")
    rest = [r for r in range(8) if r != 2]
    paths = [*variants(), (-1, -1)] + ([(2, 2)] if int(ops.cpu_amx()) else [])
    for isa in range(int(ops.cpu_isa()) + 1):
        codes, scales = ops.quantize_activations(x, group, isa)
        assert scales[2, 1].isnan() and not scales[rest].isnan().any()
        assert (codes[2, group : 2 * group] == 0).all(), isa
    for bits in (4, 8):
        if bits == 4:
            w = torch.randint(0, 256, (o, i // 2), dtype=torch.uint8)
            scale, op = torch.rand(o, i // group), ops.int4_dot
        else:
            w = torch.randint(-128, 128, (o, i), dtype=torch.int8)
            scale, op = torch.rand(o), ops.int8_dot
        for isa, vnni in paths:
            got = op(x, w, scale, group, isa, vnni)
            assert got[2].isnan().all() and not got[rest].isnan().any(), (bits, isa, vnni)
            assert torch.equal(got[rest], op(x[rest], w, scale, group, isa, vnni))


def spied(cls, monkeypatch) -> tuple[nn.Module, list, torch.Tensor]:
    """A quantised 256 -> 72 layer, the list that each int4_dot / int8_dot call appends to (they
    ask kernels.dot_path() once a call), and its dequantised weight."""
    torch.manual_seed(0)
    layer = cls.from_linear(nn.Linear(256, 72, bias=True))
    dot_path, calls = cpu_kernels.dot_path, []
    monkeypatch.setattr(cpu_kernels, "dot_path", lambda rows: calls.append(1) or dot_path(rows))
    return layer, calls, layer.dequantize()


def kept_bytes(layer: nn.Module) -> int:
    """Bytes of the tensors the layer holds beyond its state dict (a kernel's own copy)."""
    saved = {t.data_ptr() for t in layer.state_dict().values()}
    extra = [t for t in _tensors(layer.__dict__) if t.data_ptr() not in saved]
    return sum(t.numel() * t.element_size() for t in extra)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = [v for k, v in obj.items() if k not in ("_buffers", "_parameters", "_modules")]
    return [t for v in obj for t in _tensors(v)] if isinstance(obj, (list, tuple)) else []


def test_int4_layers_take_the_dot_kernel_for_bfloat16_rows(monkeypatch):
    """bfloat16 decoding rows (1..DOT_ROWS) go through int4_dot, on every path the environment
    can force, within int8 activations' error of the float product, and the layer keeps no
    copy of its weight; float32 rows keep the float kernel (exact)."""
    layer, calls, w = spied(q.Int4Linear, monkeypatch)
    with torch.no_grad():
        for name in ["", *cpu_kernels.ISAS, *cpu_kernels.VNNI]:
            monkeypatch.setenv(cpu_kernels.ENV_ISA, name)
            for rows in (1, 4, q.DOT_ROWS):
                x = torch.randn(rows, 256).to(torch.bfloat16)
                want = nn.functional.linear(x.float(), w, layer.bias)
                got = layer(x)
                assert got.dtype == torch.bfloat16 and rel_err(got, want) < 0.01, (name, rows)
        assert len(calls) == 3 * (1 + len(cpu_kernels.ISAS) + len(cpu_kernels.VNNI))
        assert kept_bytes(layer) == 0
        x = torch.randn(3, 256)
        exact = nn.functional.linear(x, w, layer.bias)
        assert rel_err(layer(x), exact) < 1e-6
        layer.scale.mul_(2)  # changed in place: the kernel reads it as it is
        got = layer(x.to(torch.bfloat16))
    assert rel_err(got, 2 * exact - layer.bias) < 0.01


def test_int8_dot_matches_float64_on_every_path():
    """int8 codes int8[O, I] and one scale per row (any of SCALE_DTYPES), the same odd shapes."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    shapes = ((40, 64, 32), (33, 128, 64), (70, 192, 64), (9, 1088, 32))
    for (isa, vnni), rows in ((p, r) for p in variants() for r in (1, 2, 5, 16, 17)):
        for (o, i, group), dtype in zip(shapes, SCALE_DTYPES * 2, strict=False):
            x = torch.randn(rows, i).to(torch.bfloat16)
            x[0, :group] = 0
            codes = torch.randint(-128, 128, (o, i), dtype=torch.int8)
            scale = torch.rand(o).to(dtype)
            got = ops.int8_dot(x, codes, scale, group, isa, vnni)
            want = dequantized_x(x, group) @ (codes.double() * scale.double()[:, None]).T
            assert rel_err(got, want) < 1e-6, (isa, vnni, rows, o, i)


def test_a_row_gets_its_bits_alone_and_in_any_batch_on_every_path():
    """int4_dot / int8_dot: each row of a batch of 1..17 rows equals that row's own call bit for
    bit on every path (plain AVX2 runs one row in its own loop, int4_dot_row.h, where a row's
    group is 1, 2 or 4 whole 32-byte vectors, in slabs of 16 of them, and more rows in the
    transposing one), with groups of half a chunk to four chunks (int4 32 / 64 / 128 / 256; int8's
    activation groups 32 / 64 / 128), several slabs and a slab's tail (I = 2304, 4096), a chunk's
    tail (I = 1088) and an output tail (O = 33): the integer sums are exact and the float steps the
    same per row."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    cases = (
        (4, 33, 1088, 32),
        (4, 40, 256, 64),
        (4, 24, 384, 128),
        (4, 17, 512, 256),
        (4, 33, 4096, 64),
        (4, 20, 2304, 128),
        (8, 33, 1088, 32),
        (8, 40, 256, 64),
        (8, 17, 512, 128),
        (8, 33, 4096, 64),
        (8, 20, 2304, 128),
    )
    for bits, o, i, group in cases:
        if bits == 4:
            codes = torch.randint(0, 256, (o, i // 2), dtype=torch.uint8)
            scale, op = torch.rand(o, i // group).to(torch.bfloat16), ops.int4_dot
        else:
            codes = torch.randint(-128, 128, (o, i), dtype=torch.int8)
            scale, op = torch.rand(o).to(torch.bfloat16), ops.int8_dot
        x = torch.randn(17, i).to(torch.bfloat16)
        x[2, :group] = 0
        for isa, vnni in variants():
            alone = torch.cat([op(x[r : r + 1], codes, scale, group, isa, vnni) for r in range(17)])
            for rows in (2, 3, 4, 6, 7, 8, 11, 12, 16, 17):
                got = op(x[:rows], codes, scale, group, isa, vnni)
                assert torch.equal(got, alone[:rows]), (bits, group, isa, vnni, rows)


def test_products_at_their_bounds_on_every_path():
    """Every product of a row at its largest magnitude and of one sign (x quantised to +-127 in
    every group; int4 codes 15 / 0, int8 codes -128 / 127), so the 16-bit pair sums of the
    maddubs loops sit at their bounds (int8 on plain AVX2: |w| = 128 times x with w's sign) and a
    group's int32 sums at theirs; codes 8 / 7 and -1 / 0 beside them. Equal to float64 on every
    path, at 1 to 17 rows, groups of half a chunk to four chunks."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    o, i = 24, 512
    for bits, group in ((4, 32), (4, 64), (4, 256), (8, 32), (8, 64), (8, 128)):
        if bits == 4:  # per output row one code: 15, 0, 8, 7 (both nibbles)
            byte = torch.tensor([0xFF, 0x00, 0x88, 0x77], dtype=torch.uint8).repeat(o // 4)
            codes = byte[:, None].expand(o, i // 2).contiguous()
            w, op = portable_codes(codes).double() - 8, ops.int4_dot
            scale = torch.ones(o, i // group)
        else:
            code = torch.tensor([-128, 127, -1, 0], dtype=torch.int8).repeat(o // 4)
            codes = code[:, None].expand(o, i).contiguous()
            w, op, scale = codes.double(), ops.int8_dot, torch.ones(o)
        for sign in (1.0, -1.0):
            x = torch.full((17, i), sign * 0.5, dtype=torch.bfloat16)  # xs 0.5 / 127, xq 127
            want = x.double() @ w.T
            for isa, vnni in variants():
                for rows in (1, 2, 3, 8, 16, 17):
                    got = op(x[:rows], codes, scale, group, isa, vnni)
                    assert torch.equal(got.double(), want[:rows]), (bits, group, isa, vnni, rows)


def test_int8_layers_take_the_dot_kernel_from_two_bfloat16_rows(monkeypatch):
    """2 to DOT_ROWS bfloat16 rows take int8_dot; one row too where the CPU runs its AVX2
    one-row loop (cpu_kernels.int8_dot_from() 1: AVX2 without VNNI, or PALIGEMMA_CPU_ISA=avx2),
    else the float kernel (it streams at the bandwidth limit there); all within int8
    activations' error; no copy is kept."""
    assert cpu_kernels.available()
    for level in ("avx2", None):
        if level:
            monkeypatch.setenv(cpu_kernels.ENV_ISA, level)
            assert cpu_kernels.int8_dot_from() == 1
        else:
            monkeypatch.delenv(cpu_kernels.ENV_ISA, raising=False)
        one = int(cpu_kernels.int8_dot_from() == 1)
        no_vnni = cpu_kernels.vnni() == 0 or not int(torch.ops.paligemma_cpu.cpu_vnni()) & 1
        plain = cpu_kernels.isa() == 1 and no_vnni  # (PALIGEMMA_CPU_ISA=avx2: VNNI off)
        assert one == plain, (level, one)
        layer, calls, w = spied(q.Int8Linear, monkeypatch)
        with torch.no_grad():
            for rows, dots in ((1, one), (2, one + 1), (q.DOT_ROWS, one + 2)):
                x = torch.randn(rows, 256).to(torch.bfloat16)
                got = layer(x)
                want = nn.functional.linear(x.float(), w, layer.bias)
                assert rel_err(got, want) < 0.01 and len(calls) == dots, (level, rows)
            layer(torch.randn(q.DOT_ROWS + 1, 256).to(torch.bfloat16))
            assert len(calls) == one + 2
        assert kept_bytes(layer) == 0


def test_few_rows_take_avx_vnni_where_the_cpu_has_it(monkeypatch):
    """dot_path: 2 to NARROW_VNNI_ROWS rows the 256-bit AVX-VNNI path (faster there on a CPU
    with both VNNIs), a single row too unless the CPU's best is AVX-512-VNNI and it is not AMD's
    (WIDE_ONE_ROW None; True / False: by the width alone / AVX-VNNI's), more rows the CPU's best;
    PALIGEMMA_CPU_ISA, when set, decides alone."""
    assert cpu_kernels.available()
    monkeypatch.delenv(cpu_kernels.ENV_ISA, raising=False)
    flags = int(torch.ops.paligemma_cpu.cpu_vnni())
    best = (cpu_kernels.isa(), cpu_kernels.vnni())
    few = cpu_kernels.dot_path(cpu_kernels.NARROW_VNNI_ROWS)
    assert few == ((1, 1) if flags & 1 else best)
    assert cpu_kernels.dot_path(2) == few
    wide = best[0] == 2 and bool(flags & 2)
    assert cpu_kernels.wide_one_row() == (not cpu_kernels.amd())  # (WIDE_ONE_ROW None)
    assert cpu_kernels.dot_path(1) == (best if wide and not cpu_kernels.amd() else few)
    monkeypatch.setattr(cpu_kernels, "WIDE_ONE_ROW", True)
    assert cpu_kernels.dot_path(1) == (best if wide else few)
    monkeypatch.setattr(cpu_kernels, "WIDE_ONE_ROW", False)
    assert cpu_kernels.dot_path(1) == few
    assert cpu_kernels.dot_path(cpu_kernels.NARROW_VNNI_ROWS + 1) == best
    monkeypatch.setenv(cpu_kernels.ENV_ISA, "avx2")
    assert cpu_kernels.dot_path(1) == (min(1, best[0]), 0)


def amx_cases():
    """(bits, o, i, group, scale dtype): odd O (a tail of 16 rows: int8 through the panel too),
    groups of 32 * odd (32-byte chunks), 64 and 128 (two chunks a group), G past 16 and 4."""
    shapes = ((40, 64, 32), (33, 128, 64), (17, 384, 128), (70, 192, 64), (9, 1088, 32))
    return [(b, *s, d) for b in (4, 8) for s, d in zip(shapes, SCALE_DTYPES * 2, strict=False)]


def test_amx_equals_the_vnni_path_bit_for_bit():
    """Where the CPU has AMX-INT8 and the OS grants it, vnni=2 (AMX tiles) gives the AVX-512-VNNI
    loop's floats bit for bit (the same int32 sums per group, the same float steps) for 1..17
    rows, within float32 rounding of float64; the default (-1) equals both. Elsewhere: no AMX
    is claimed without the CPU's flags, forcing it raises, and the default equals the VNNI /
    AVX2 path it falls back to."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    has = int(ops.cpu_amx())
    assert has in (0, 1) and (has == 0 or ("amx_int8" in flags and "amx_tile" in flags))
    torch.manual_seed(0)
    for bits, o, i, group, dtype in amx_cases():
        op = ops.int4_dot if bits == 4 else ops.int8_dot
        if bits == 4:
            codes = torch.randint(0, 256, (o, i // 2), dtype=torch.uint8)
            scale = torch.rand(o, i // group).to(dtype)
            w = (portable_codes(codes).double() - 8).view(o, -1, group) * scale.double()[..., None]
        else:
            codes = torch.randint(-128, 128, (o, i), dtype=torch.int8)
            scale = torch.rand(o).to(dtype)
            w = codes.double()[:, None] * scale.double()[:, None, None]
        for rows in range(1, 18):
            x = torch.randn(rows, i).to(torch.bfloat16)
            x[0, :group] = 0
            isa, vnni = variants()[-1]  # the CPU's best loop without AMX
            want = op(x, codes, scale, group, isa, vnni)
            assert torch.equal(op(x, codes, scale, group, -1, -1), want) or has, (bits, rows)
            if not has:
                with pytest.raises(RuntimeError, match="no AMX"):
                    op(x, codes, scale, group, -1, 2)
                continue
            got = op(x, codes, scale, group, 2, 2)
            assert torch.equal(got, want), (bits, o, i, group, rows)
            assert torch.equal(op(x, codes, scale, group, -1, -1), want), (bits, rows)
            exact = dequantized_x(x, group) @ w.view(o, i).T
            assert rel_err(got, exact) < 1e-6, (bits, o, i, rows)


def test_amx_level_of_the_environment(monkeypatch):
    """PALIGEMMA_CPU_ISA=amx (or nothing) lets the layers take AMX where `amx()`; avx512vnni
    keeps VNNI without it; avx512 neither. The layer's output is the same bit for bit."""
    torch.manual_seed(0)
    layer = q.Int4Linear.from_linear(nn.Linear(256, 72))
    x = torch.randn(8, 256).to(torch.bfloat16)
    has = bool(torch.ops.paligemma_cpu.cpu_amx()) and cpu_kernels.isa() == 2
    outs = {}
    with torch.no_grad():
        for name, vnni, amx in (("amx", -1, has), ("", -1, has), ("avx512vnni", -2, False)):
            monkeypatch.setenv(cpu_kernels.ENV_ISA, name)
            assert (cpu_kernels.vnni(), cpu_kernels.amx()) == (vnni, amx), name
            outs[name] = layer(x)
        monkeypatch.setenv(cpu_kernels.ENV_ISA, "avx512")
        assert (cpu_kernels.vnni(), cpu_kernels.amx()) == (0, False)
    assert torch.equal(outs["amx"], outs["avx512vnni"]) and torch.equal(outs[""], outs["amx"])
