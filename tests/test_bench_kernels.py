"""benchmarks/bench_kernels.py (the kernel-level GB/s table of bench_vs_transformers.py
--kernels-only): every path it times computes the same product, and each gets a rate."""

from __future__ import annotations

import sys
from pathlib import Path

from paligemma.quant import kernels

BENCH = str(Path(__file__).resolve().parent.parent / "benchmarks")


def test_kernel_paths_agree_and_are_timed(capsys):
    sys.path.insert(0, BENCH)
    try:
        import bench_kernels
    finally:
        sys.path.remove(BENCH)
    paths = bench_kernels.paths(64, 128, rows=2)
    expected = {"bfloat16 torch F.linear"}
    if kernels.available():
        expected |= {"int8 ours scalar", "int4 ours scalar"}
        if kernels.isa() >= 1:
            expected.add("bfloat16 ours bf16_mv avx2")
    assert expected <= set(paths)
    outs = {name: fn().float() for name, (fn, _) in paths.items()}
    ref = outs["bfloat16 torch F.linear"]
    top = ref.abs().max()
    for name, out in outs.items():
        assert out.shape == (2, 64) and paths[name][1] > 0
        assert (out - ref).abs().max() < 0.3 * top, name  # quantisation noise at most
        same = outs.get(f"{name[:4]} ours scalar", out)
        assert (out - same).abs().max() < 0.02 * top, name  # one product, several kernels
    table = bench_kernels.kernel_table(64, 128, rows=2, calls=2)
    assert set(table) == set(paths) and all(r["gb_s"] > 0 for r in table.values())
    assert "GB/s" in capsys.readouterr().out
