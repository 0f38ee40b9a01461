"""Kernel-level weight streaming, GB/s, of each matrix-vector path on this CPU (not a test):

    python benchmarks/bench_kernels.py [--rows 1 2 4 8 16] [--shape 16384 2048] [--json F]
    python benchmarks/bench_vs_transformers.py --kernels-only      # the same table, 1 row

One decoder-sized weight (default PaliGemma's MLP gate: O 16,384 x I 2,048), `rows` activation
rows in bfloat16; the paths run interleaved, one call each per round, and each path's time per
product is the median of `--calls` rounds (a shared host adds noise to every path alike); GB/s
counts the bytes the path must read (codes + scales, or the bfloat16 matrix). Paths: torch's
bfloat16 F.linear (and torch.mv at one row) and ours (quant/bf16_mv.cpp, AVX2 and AVX-512);
int8 ours on every instruction set this CPU has (quant/kernels.cpp) and
torch's _weight_int8pack_mm; int4 ours likewise (float products), "int4 / int8 dot ours" (int8
activations, integer dot products: quant/int4_dot.cpp, as the layers call it ("default"), each
instruction set with and without VNNI, and AMX tiles; they read the saved codes and scales as
they are) and torch's _weight_int4pack_mm_for_cpu
(its own packed layout). A path this build lacks
is reported as such. With several --rows, a summary follows: int4 dot's time per product over
int8's (the issue's target: <= 0.55) and its throughput at N rows over 1 row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from paligemma.quant import kernels
from paligemma.quant import linear as q


def per_call_s(fns: dict, calls: int) -> dict[str, float]:
    """name -> median seconds per call, the functions interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up (first-call packing, page faults)
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def paths(o: int, i: int, rows: int, group: int = 64) -> dict:
    """name -> (product, bytes read per call)."""
    torch.manual_seed(0)
    w = (torch.randn(o, i) * 0.02).to(torch.bfloat16)
    x = torch.randn(rows, i).to(torch.bfloat16)
    i8 = q.Int8Linear.from_linear(nn_linear(w))
    i4 = q.Int4Linear.from_linear(nn_linear(w), group)
    out = {"bfloat16 torch F.linear": (lambda: F.linear(x, w), nbytes(w))}
    if rows == 1:
        out["bfloat16 torch.mv"] = (lambda: torch.mv(w, x[0]), nbytes(w))
    if kernels.available():
        ops = torch.ops.paligemma_cpu
        for name, isa in kernels.ISAS.items():  # bfloat16 decoding's own product
            if 1 <= isa <= kernels.isa():
                out[f"bfloat16 ours bf16_mv {name}"] = (
                    lambda isa=isa: ops.bf16_mv(x, w, isa),
                    nbytes(w),
                )
        for name, isa in kernels.ISAS.items():
            if isa > kernels.isa():
                continue
            out[f"int8 ours {name}"] = (
                lambda isa=isa: ops.int8_matmul(x, i8.weight, i8.scale, isa),
                nbytes(i8.weight, i8.scale),
            )
            out[f"int4 ours {name}"] = (
                lambda isa=isa: ops.int4_matmul(x, i4.weight, i4.scale, group, isa),
                nbytes(i4.weight, i4.scale),
            )
        out |= dot_paths(x, i4) | dot_paths(x, i8)
    if hasattr(torch, "_weight_int8pack_mm"):
        scale = i8.scale.to(torch.bfloat16)
        out["int8 torch _weight_int8pack_mm"] = (
            lambda: torch._weight_int8pack_mm(x, i8.weight, scale),
            nbytes(i8.weight, scale),
        )
    if hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        packed, sz = i4._packed()
        out["int4 torch _weight_int4pack_mm_for_cpu"] = (
            lambda: torch._weight_int4pack_mm_for_cpu(x, packed, group, sz),
            nbytes(packed, sz),
        )
    return out


def dot_paths(x: torch.Tensor, layer: q.Int4Linear | q.Int8Linear) -> dict:
    """int4_dot / int8_dot as the layers call it ("default": AMX from 8 rows where the CPU has
    it, else VNNI where it has it) and on every (instruction set, VNNI, AMX) this CPU has:
    name -> (product, bytes)."""
    ops, out = torch.ops.paligemma_cpu, {}
    int4 = isinstance(layer, q.Int4Linear)
    saved = (layer.weight, layer.scale)  # read as saved: no copy of the weight
    op, group = (ops.int4_dot, layer.group) if int4 else (ops.int8_dot, q.INT8_DOT_GROUP)
    name = f"int{4 if int4 else 8} dot ours"
    out[f"{name} default"] = (lambda: op(x, *saved, group, -1, -1), nbytes(*saved))
    levels = {**kernels.ISAS, **kernels.VNNI, **kernels.AMX}
    has, amx = int(ops.cpu_vnni()), int(ops.cpu_amx())
    for level, isa in sorted(levels.items(), key=lambda kv: (-kv[1], kv[0] in kernels.ISAS)):
        vnni = 2 if level in kernels.AMX else int(level in kernels.VNNI)
        if isa > kernels.isa() or (vnni == 1 and not has & isa) or (vnni == 2 and not amx):
            continue
        out[f"{name} {level}"] = (
            lambda isa=isa, vnni=vnni: op(x, *saved, group, isa, vnni),
            nbytes(*saved),
        )
    return out


def nn_linear(w: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    linear.weight = torch.nn.Parameter(w, requires_grad=False)
    return linear


def kernel_table(
    o: int = 16_384, i: int = 2_048, rows: int = 1, calls: int = 20, only: list | None = None
) -> dict:
    """Prints and returns {path: {"ms": per call, "gb_s": bytes read / time}} (the paths whose
    name holds one of `only`'s strings, when given)."""
    result = {}
    why = kernels.why_not()
    print(f"kernels: {o} x {i} weight, {rows} row(s), {torch.get_num_threads()} threads")
    if why:
        print(f"  (our C++ kernels unavailable: {why})")
    timed = {n: p for n, p in paths(o, i, rows).items() if not only or any(s in n for s in only)}
    seconds = per_call_s({name: fn for name, (fn, _) in timed.items()}, calls)
    for name, (_, size) in timed.items():
        s = seconds[name]
        result[name] = {"ms": s * 1e3, "gb_s": size / s / 1e9}
        print(f"  {name:40} {s * 1e3:8.3f} ms {size / s / 1e9:8.1f} GB/s", flush=True)
    return result


def summary(tables: dict[int, dict]) -> dict:
    """The default int4 dot path's time (as the layers call it: the CPU's best instruction
    set, AMX from 8 rows or VNNI where it has them) over int8 ours' (best instruction set, float
    products) per row count, its throughput (rows per second) at each row count over 1 row, and
    int8 dot's throughput likewise."""

    def first(table: dict, prefix: str, last: bool = False) -> float:
        times = [r["ms"] for n, r in table.items() if n.startswith(prefix)]
        return (times[-1] if last else times[0]) if times else 0.0

    out = {}
    one = first(tables.get(1, {}), "int4 dot ours")
    one8 = first(tables.get(1, {}), "int8 dot ours")
    for rows, table in tables.items():
        dot, int8 = first(table, "int4 dot ours"), first(table, "int8 ours", last=True)
        dot8 = first(table, "int8 dot ours")
        if dot and int8:
            out[rows] = {"int4_dot_over_int8": dot / int8}
            print(f"  {rows:2} row(s): int4 dot / int8 time {dot / int8:.2f}", end="")
            if one and one8:
                out[rows]["int4_dot_throughput_over_1_row"] = rows * one / dot
                out[rows]["int8_dot_throughput_over_1_row"] = rows * one8 / dot8
                print(f", throughput over 1 row: int4 dot {rows * one / dot:.2f}x", end="")
                print(f", int8 dot {rows * one8 / dot8:.2f}x", end="")
            print()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", type=int, nargs=2, default=[16_384, 2_048], metavar=("O", "I"))
    ap.add_argument("--rows", type=int, nargs="+", default=[1])
    ap.add_argument("--calls", type=int, default=20, help="rounds (median)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", help="write the tables and the summary here")
    ap.add_argument("--only", nargs="+", help='paths whose name holds one of these, e.g. "avx512"')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tables = {rows: kernel_table(*args.shape, rows, args.calls, args.only) for rows in args.rows}
    result = {"shape": args.shape, "threads": torch.get_num_threads(), "tables": tables}
    result["summary"] = summary(tables)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
