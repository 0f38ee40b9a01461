"""A/B of the int4 / int8 dot kernels: the tiled layout (a packed copy of the weight, as built at
an earlier commit) against today's direct kernels that read the saved layout; or, with --amx,
today's AVX-512-VNNI loop against its AMX tiles (not a test):

    python benchmarks/ab_dot.py [--base 6d2dbfb] [--shape 16384 2048] [--rows 1 2 8 16]
                                [--rounds 30] [--threads 1] [--scale-dtype bfloat16]
    python benchmarks/ab_dot.py --amx --clock cpu --rows 1 2 4 8 16 \
        --shape 16384 2048 --shape 2048 16384 [--json F]

--amx: per shape, bits and row count, VNNI (vnni=1) and AMX (vnni=2) interleaved round by round,
medians, GB/s of the codes and scales read, whether the two agree bit for bit; then the batch N
over batch 1 throughput of each, and of the layers' choice (AMX from kernels.AMX_ROWS rows, VNNI
below) over the layers' 1-row path (int4: VNNI; int8: the float kernel int8_matmul). --clock
cpu times the calling thread's CPU time (1 thread; a shared host's waits excluded).

The tiled kernel is int4_dot.cpp and tiles.py at `--base`, built here as its own op library
(torch.ops.paligemma_tiled). One process, one thread by default; per row count the two run
interleaved round by round (the order alternating) and each gets the median per call. Prints,
per bits and rows, both times and direct / tiled (below 1: direct is faster), and checks that
the two products agree.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import tempfile
import time
import types
from pathlib import Path

import torch

from paligemma.quant import kernels
from paligemma.quant import linear as q

ROOT = Path(__file__).resolve().parent.parent
STUB = """#include <cstdint>
int64_t pg_cpu_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return 2;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}
"""


def git_show(base: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{base}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def build_tiled(base: str, tmp: Path) -> types.ModuleType:
    """Loads the tiled kernel of `base` as torch.ops.paligemma_tiled; returns its tiles.py."""
    src = git_show(base, "src/paligemma/quant/int4_dot.cpp").replace(
        "paligemma_cpu", "paligemma_tiled"
    )
    (tmp / "tiled.cpp").write_text(src)
    (tmp / "stub.cpp").write_text(STUB)
    out = tmp / "tiled.so"
    compile_, link = kernels._flags()
    sources = [str(tmp / "tiled.cpp"), str(tmp / "stub.cpp")]
    subprocess.run(["g++", *sources, "-o", str(out), "-shared", *compile_, *link], check=True)
    torch.ops.load_library(str(out))
    tiles = types.ModuleType("tiles_at_base")
    exec(git_show(base, "src/paligemma/quant/tiles.py"), tiles.__dict__)
    return tiles


def medians(fns: dict, rounds: int, clock=time.perf_counter) -> dict[str, float]:
    times: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():
        fn()
    for r in range(rounds):
        for name in list(fns)[:: 1 if r % 2 else -1]:
            start = clock()
            fns[name]()
            times[name].append(clock() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def clock(args):
    """--clock cpu: the calling thread's CPU time; wall: perf_counter."""
    return time.thread_time if args.clock == "cpu" else time.perf_counter


def quantized(o: int, i: int, dtype: torch.dtype) -> dict:
    """bits -> an Int4Linear / Int8Linear of a random o x i weight."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(i, o, bias=False, device="meta")
    linear.weight = torch.nn.Parameter((torch.randn(o, i) * 0.02).to(dtype), requires_grad=False)
    return {4: q.Int4Linear.from_linear(linear), 8: q.Int8Linear.from_linear(linear)}


def layers_ms(r: dict, n: int, one: float) -> float:
    """The layers' kernel time at n rows: AMX from kernels.AMX_ROWS, VNNI below, `one` at 1."""
    return r["amx_ms"] if n >= kernels.AMX_ROWS else (r["vnni_ms"] if n > 1 else one)


def amx_rows(layer, bits: int, rows: list[int], rounds: int, clock) -> dict:
    """{rows: {vnni_ms, amx_ms, vnni_gb_s, amx_gb_s, bit_exact}} plus "ratios" for one layer."""
    ops, out = torch.ops.paligemma_cpu, {}
    op, group = (ops.int4_dot, layer.group) if bits == 4 else (ops.int8_dot, q.INT8_DOT_GROUP)
    size = sum(t.numel() * t.element_size() for t in (layer.weight, layer.scale))
    for n in rows:
        x = torch.randn(n, layer.in_features).to(torch.bfloat16)
        fns = {
            "vnni": functools.partial(op, x, layer.weight, layer.scale, group, 2, 1),
            "amx": functools.partial(op, x, layer.weight, layer.scale, group, 2, 2),
        }
        if bits == 8 and n == 1:  # the layers' 1-row path
            fns["float"] = functools.partial(ops.int8_matmul, x, layer.weight, layer.scale, 2)
        t = medians(fns, rounds, clock)
        same = torch.equal(fns["vnni"](), fns["amx"]())
        out[n] = {f"{k}_ms": v * 1e3 for k, v in t.items()}
        out[n] |= {f"{k}_gb_s": size / v / 1e9 for k, v in t.items()} | {"bit_exact": same}
        print(
            f"  int{bits} {n:2} row(s): vnni {t['vnni'] * 1e3:7.3f} ms "
            f"{size / t['vnni'] / 1e9:5.1f} GB/s  amx {t['amx'] * 1e3:7.3f} ms "
            f"{size / t['amx'] / 1e9:5.1f} GB/s  amx/vnni {t['amx'] / t['vnni']:.3f}"
            f"  bit-exact {same}",
            flush=True,
        )
    one = out[rows[0]] if rows[0] == 1 else None
    if one:
        layer_one = one.get("float_ms", one["vnni_ms"])
        out["ratios"] = {
            n: {
                "vnni_over_vnni_1": n * one["vnni_ms"] / r["vnni_ms"],
                "amx_over_amx_1": n * one["amx_ms"] / r["amx_ms"],
                "layers_over_layers_1": n * layer_one / layers_ms(r, n, layer_one),
            }
            for n, r in out.items()
        }
        for n, r in out["ratios"].items():
            print(
                f"  int{bits} batch {n:2} / batch 1 throughput: vnni {r['vnni_over_vnni_1']:.2f}x"
                f"  amx {r['amx_over_amx_1']:.2f}x  layers (amx from {kernels.AMX_ROWS} rows) "
                f"{r['layers_over_layers_1']:.2f}x"
            )
    return out


def amx_ab(args) -> None:
    """--amx: VNNI against AMX per shape, bits and rows (module docstring)."""
    assert torch.ops.paligemma_cpu.cpu_amx(), "this CPU / OS has no AMX-INT8"
    result = {"threads": torch.get_num_threads(), "clock": args.clock, "shapes": {}}
    for o, i in args.shape or [[16_384, 2_048]]:
        print(f"{o} x {i}, {torch.get_num_threads()} thread(s), {args.clock} time")
        layers = quantized(o, i, getattr(torch, args.scale_dtype))
        result["shapes"][f"{o}x{i}"] = {
            f"int{b}": amx_rows(layer, b, args.rows, args.rounds, clock(args))
            for b, layer in layers.items()
        }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", default="6d2dbfb", help="the commit of the tiled kernel")
    ap.add_argument("--shape", type=int, nargs=2, action="append", metavar=("O", "I"))
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 16])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--amx", action="store_true", help="VNNI against AMX (today's build)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    ap.add_argument("--json", help="--amx: write the table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    assert kernels.available(), kernels.why_not()
    if args.amx:
        return amx_ab(args)
    tmp = Path(tempfile.mkdtemp())
    tiles = build_tiled(args.base, tmp)
    o, i = (args.shape or [[16_384, 2_048]])[0]
    layers = quantized(o, i, getattr(torch, args.scale_dtype))
    new, old = torch.ops.paligemma_cpu, torch.ops.paligemma_tiled
    print(
        f"{o} x {i}, {torch.get_num_threads()} thread(s), scales {args.scale_dtype}, "
        f"isa {kernels.isa()}, tiled at {args.base}"
    )
    for bits, layer in layers.items():
        group = layer.group if bits == 4 else q.INT8_DOT_GROUP
        packed = (tiles.pack if bits == 4 else tiles.pack8)(layer.weight, layer.scale)
        for rows in args.rows:
            x = torch.randn(rows, i).to(torch.bfloat16)
            op_new, op_old = (
                (new.int4_dot, old.int4_dot) if bits == 4 else (new.int8_dot, old.int8_dot)
            )
            fns = {
                "tiled": functools.partial(op_old, x, *packed, group, o),
                "direct": functools.partial(op_new, x, layer.weight, layer.scale, group),
            }
            a, b = fns["tiled"](), fns["direct"]()
            err = float((a - b).norm() / a.norm())
            t = medians(fns, args.rounds, clock(args))
            print(
                f"  int{bits} {rows:2} row(s): tiled {t['tiled'] * 1e3:7.3f} ms  direct "
                f"{t['direct'] * 1e3:7.3f} ms  direct/tiled {t['direct'] / t['tiled']:.3f}"
                f"  (rel diff {err:.1e})",
                flush=True,
            )


if __name__ == "__main__":
    main()
