"""Kernel-level weight streaming, GB/s, of each matrix-vector path on this CPU (not a test):

    python benchmarks/bench_kernels.py [--rows 1] [--shape 16384 2048]
    python benchmarks/bench_vs_transformers.py --kernels-only      # the same table

One decoder-sized weight (default PaliGemma's MLP gate: O 16,384 x I 2,048), `rows` activation
rows in bfloat16; each path's time per product is the best of `--calls`; GB/s counts the bytes
the path must read (codes + scales, or the bfloat16 matrix). Paths: torch's bfloat16 F.linear;
int8 ours on every instruction set this CPU has (quant/kernels.cpp) and torch's
_weight_int8pack_mm; int4 ours likewise and torch's _weight_int4pack_mm_for_cpu (its own packed
layout). A path this build lacks is reported as such.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from paligemma.quant import kernels
from paligemma.quant import linear as q


def per_call_s(fn, calls: int) -> float:
    fn()  # warm-up (first-call packing, page faults)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)  # best of: a shared host (or a CPU quota) only ever adds time


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
    if kernels.available():
        ops = torch.ops.paligemma_cpu
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


def nn_linear(w: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    linear.weight = torch.nn.Parameter(w, requires_grad=False)
    return linear


def kernel_table(o: int = 16_384, i: int = 2_048, rows: int = 1, calls: int = 20) -> dict:
    """Prints and returns {path: {"ms": per call, "gb_s": bytes read / time}}."""
    result = {}
    why = kernels.why_not()
    print(f"kernels: {o} x {i} weight, {rows} row(s), {torch.get_num_threads()} threads")
    if why:
        print(f"  (our C++ kernels unavailable: {why})")
    for name, (fn, size) in paths(o, i, rows).items():
        s = per_call_s(fn, calls)
        result[name] = {"ms": s * 1e3, "gb_s": size / s / 1e9}
        print(f"  {name:40} {s * 1e3:8.3f} ms {size / s / 1e9:8.1f} GB/s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", type=int, nargs=2, default=[16_384, 2_048], metavar=("O", "I"))
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kernel_table(*args.shape, args.rows, args.calls)


if __name__ == "__main__":
    main()
