"""A/B of the int4 / int8 dot kernels: the tiled layout (a packed copy of the weight, as built at
an earlier commit) against today's direct kernels that read the saved layout (not a test):

    python benchmarks/ab_dot.py [--base 6d2dbfb] [--shape 16384 2048] [--rows 1 2 8 16]
                                [--rounds 30] [--threads 1] [--scale-dtype bfloat16]

The tiled kernel is int4_dot.cpp and tiles.py at `--base`, built here as its own op library
(torch.ops.paligemma_tiled). One process, one thread by default; per row count the two run
interleaved round by round (the order alternating) and each gets the median per call. Prints,
per bits and rows, both times and direct / tiled (below 1: direct is faster), and checks that
the two products agree.
"""

from __future__ import annotations

import argparse
import functools
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
    cmd = kernels._command("g++", out)
    cmd = [cmd[0], str(tmp / "tiled.cpp"), str(tmp / "stub.cpp"), *cmd[1 + len(kernels.SOURCES) :]]
    subprocess.run(cmd, check=True)
    torch.ops.load_library(str(out))
    tiles = types.ModuleType("tiles_at_base")
    exec(git_show(base, "src/paligemma/quant/tiles.py"), tiles.__dict__)
    return tiles


def medians(fns: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():
        fn()
    for r in range(rounds):
        for name in list(fns)[:: 1 if r % 2 else -1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", default="6d2dbfb", help="the commit of the tiled kernel")
    ap.add_argument("--shape", type=int, nargs=2, default=[16_384, 2_048], metavar=("O", "I"))
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 16])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    assert kernels.available(), kernels.why_not()
    tmp = Path(tempfile.mkdtemp())
    tiles = build_tiled(args.base, tmp)
    o, i = args.shape
    torch.manual_seed(0)
    w = (torch.randn(o, i) * 0.02).to(getattr(torch, args.scale_dtype))
    linear = torch.nn.Linear(i, o, bias=False, device="meta")
    linear.weight = torch.nn.Parameter(w, requires_grad=False)
    layers = {4: q.Int4Linear.from_linear(linear), 8: q.Int8Linear.from_linear(linear)}
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
            t = medians(fns, args.rounds)
            print(
                f"  int{bits} {rows:2} row(s): tiled {t['tiled'] * 1e3:7.3f} ms  direct "
                f"{t['direct'] * 1e3:7.3f} ms  direct/tiled {t['direct'] / t['tiled']:.3f}"
                f"  (rel diff {err:.1e})",
                flush=True,
            )


if __name__ == "__main__":
    main()
