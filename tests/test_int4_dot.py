"""The int4 / int8 x int8-activation kernels (quant/int4_dot.cpp) and their tiled layouts
(quant/tiles.py): every instruction-set path equals a float64 product of the same quantised
activations, and the layers take them for bfloat16 decoding rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import linear as q
from paligemma.quant import tiles


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


def test_tiles_round_trip_and_pad_the_last_tile():
    torch.manual_seed(0)
    packed = torch.randint(0, 256, (37, 96), dtype=torch.uint8)  # O 37: three tiles, 11 padded
    scale = torch.rand(37, 3)
    t, s = tiles.pack(packed, scale, rows=20)  # blocks of rows that straddle tiles
    assert t.shape == (3, 24, 64) and s.shape == (3, 3, 16) and s.dtype == torch.bfloat16
    codes, back = tiles.unpack(t, s, 37)
    assert torch.equal(codes, portable_codes(packed))
    assert torch.equal(back, scale.to(torch.bfloat16))
    assert int(s[2, :, 5:].abs().sum()) == 0  # padded rows: scale 0, code 8
    assert (tiles.unpack(t, s, 48)[0][37:] == 8).all()
    # Byte 4l + k of block b: code[l, 8b + k] low, code[l, 8b + 4 + k] high (tile 0).
    c = portable_codes(packed)
    assert int(t[0, 1, 4 * 3 + 2]) == int(c[3, 10]) | int(c[3, 14]) << 4


def test_int4_dot_matches_float64_on_every_path():
    """Odd shapes: O not a multiple of 16 (the last tile's tail), 5 / 13 rows (padded to a compiled
    width), 17 rows (two passes), a zero row and a zero group (scale 0), bfloat16 x."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    paths = variants()
    assert len(paths) >= 3  # scalar, and the x86 CI hosts' AVX2 at least
    for (isa, vnni), rows in ((p, r) for p in paths for r in (1, 2, 3, 5, 8, 13, 16, 17)):
        for o, i, group in ((40, 64, 32), (33, 128, 64), (16, 384, 128), (70, 192, 64)):
            x = torch.randn(rows, i)
            x[0, :group] = 0
            x[-1] = 0 if rows > 2 else x[-1]
            packed = torch.randint(0, 256, (o, i // 2), dtype=torch.uint8)
            scale = torch.rand(o, i // group)
            t, s = tiles.pack(packed, scale)
            codes, scale16 = tiles.unpack(t, s, o)
            for xt in (x, x.to(torch.bfloat16)):
                got = ops.int4_dot(xt, t, s, group, o, isa, vnni)
                assert got.shape == (rows, o) and got.dtype == torch.float32
                want = reference(xt, codes, scale16, group)
                assert rel_err(got, want) < 1e-6, (isa, vnni, rows, o, i)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.int4_dot(x, t, s, 48, o, -1, -1)
    with pytest.raises(RuntimeError, match="int8_dot: scale"):  # int4's scales for int8 tiles
        ops.int8_dot(
            x, tiles.pack8(torch.zeros(o, i, dtype=torch.int8), torch.ones(o))[0], s, 64, o
        )
    with pytest.raises(RuntimeError, match="has no VNNI"):
        ops.int4_dot(x, t, s, group, o, 0, 1)


def spied(cls, monkeypatch) -> tuple[nn.Module, list, torch.Tensor]:
    """A quantised 256 -> 72 layer, the list that each packing of its tiles appends to, and its
    dequantised weight."""
    torch.manual_seed(0)
    layer = cls.from_linear(nn.Linear(256, 72, bias=True))
    name = "pack" if cls is q.Int4Linear else "pack8"
    pack, calls = getattr(tiles, name), []
    monkeypatch.setattr(tiles, name, lambda *a: calls.append(1) or pack(*a))
    return layer, calls, layer.dequantize()


def test_int4_layers_take_the_dot_kernel_for_bfloat16_rows(monkeypatch):
    """bfloat16 decoding rows (1..DOT_ROWS) go through int4_dot, on every path the environment
    can force, within int8 activations' error of the float product; float32 rows keep the float
    kernel (exact)."""
    layer, calls, w = spied(q.Int4Linear, monkeypatch)
    with torch.no_grad():
        for name in ["", *cpu_kernels.ISAS, *cpu_kernels.VNNI]:
            monkeypatch.setenv(cpu_kernels.ENV_ISA, name)
            for rows in (1, 4, q.DOT_ROWS):
                x = torch.randn(rows, 256).to(torch.bfloat16)
                want = nn.functional.linear(x.float(), w, layer.bias)
                got = layer(x)
                assert got.dtype == torch.bfloat16 and rel_err(got, want) < 0.01, (name, rows)
        assert len(calls) == 1  # packed once, reused
        x = torch.randn(3, 256)
        exact = nn.functional.linear(x, w, layer.bias)
        assert rel_err(layer(x), exact) < 1e-6
        layer.scale.mul_(2)  # changed in place: the tiles follow
        got = layer(x.to(torch.bfloat16))
    assert len(calls) == 2 and rel_err(got, 2 * exact - layer.bias) < 0.01


def test_int8_dot_matches_float64_on_every_path():
    """int8 codes (one scale per row), the same odd shapes; the tiles round-trip."""
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    for (isa, vnni), rows in ((p, r) for p in variants() for r in (1, 2, 5, 16, 17)):
        for o, i, group in ((40, 64, 32), (33, 128, 64), (70, 192, 64)):
            x = torch.randn(rows, i).to(torch.bfloat16)
            x[0, :group] = 0
            codes = torch.randint(-127, 128, (o, i), dtype=torch.int8)
            scale = torch.rand(o)
            t, s = tiles.pack8(codes, scale)
            back, back_scale = tiles.unpack8(t, s, o)
            assert torch.equal(back, codes) and torch.equal(back_scale, scale)
            assert (
                t.shape == (-(-o // 16), i // 4, 64)
                and int(t[0, 2, 4 * 5 + 1]) == codes[5, 9] + 128
            )
            got = ops.int8_dot(x, t, s, group, o, isa, vnni)
            want = dequantized_x(x, group) @ (codes.double() * scale.double()[:, None]).T
            assert rel_err(got, want) < 1e-6, (isa, vnni, rows, o, i)


def test_int8_layers_take_the_dot_kernel_from_two_bfloat16_rows(monkeypatch):
    """One row keeps the float kernel (it streams at the bandwidth limit, no tiled copy); 2 to
    DOT_ROWS bfloat16 rows take int8_dot; both within int8 activations' error."""
    layer, calls, w = spied(q.Int8Linear, monkeypatch)
    with torch.no_grad():
        for rows, packs in ((1, 0), (2, 1), (q.DOT_ROWS, 1), (q.DOT_ROWS + 1, 1)):
            x = torch.randn(rows, 256).to(torch.bfloat16)
            got = layer(x)
            want = nn.functional.linear(x.float(), w, layer.bias)
            assert rel_err(got, want) < 0.01 and len(calls) == packs, rows
