"""One-query attention of a decode step, each instruction-set path of decode_ops.cpp's loops
(paligemma_cpu::decode_attend: 0 scalar, 1 AVX2, 2 AVX-512) on PaliGemma-3B's shapes (not a
test):

    python benchmarks/bench_attend.py [--batch 1 8] [--keys 280] [--rounds 7] [--json F]

Per batch size: every layer's attention once per round (8 query heads of 256, one kv head, the
cache of 18 layers in memory), the paths alternating round by round; the best round's ms a step
per path, and how far each path's output is from the AVX2 loop's (the largest difference and
the share of values that differ)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from paligemma.quant import kernels

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 8, 1, 256, 18


def measure(batch: int, keys: int, rounds: int, paths: list[int]) -> dict:
    """{path: {"ms_per_step", "max_diff", "differ"}} for one batch size."""
    g = torch.Generator().manual_seed(batch)
    q = torch.randn(batch, HEADS, HEAD_DIM, generator=g)
    shape = (LAYERS, batch, KV_HEADS, keys + 32, HEAD_DIM)
    cache_k, cache_v = (torch.randn(*shape, generator=g).bfloat16() for _ in range(2))
    mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
    op = torch.ops.paligemma_cpu.decode_attend
    best = {p: float("inf") for p in paths}
    for r in range(rounds + 1):  # round 0: warm-up
        for p in paths[:: 1 if r % 2 else -1]:
            start = time.perf_counter()
            for layer in range(LAYERS):
                op(q, cache_k, cache_v, layer, mask, HEAD_DIM**-0.5, None, p)
            if r:
                best[p] = min(best[p], time.perf_counter() - start)
    ref = op(q, cache_k, cache_v, 3, mask, HEAD_DIM**-0.5, None, min(1, max(paths))).float()
    out = {}
    for p in paths:
        o = op(q, cache_k, cache_v, 3, mask, HEAD_DIM**-0.5, None, p).float()
        diff = (o - ref).abs()
        out[p] = {
            "ms_per_step": 1e3 * best[p],
            "max_diff": diff.max().item(),
            "differ": (diff > 0).float().mean().item(),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="default: 1 8")
    ap.add_argument("--keys", type=int, default=280, help="cached positions (default 280)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if min(args.batch) < 1 or args.keys < 1 or args.rounds < 1:
        ap.error("--batch, --keys and --rounds must be at least 1")
    if not kernels.available():
        raise SystemExit(f"bench_attend: the CPU kernels are not available: {kernels.why_not()}")
    paths = list(range(kernels.isa() + 1))
    results = {}
    for b in args.batch:
        results[f"batch {b}"] = measure(b, args.keys, args.rounds, paths)
        row = ", ".join(
            f"path {p} {v['ms_per_step']:.2f} ms" for p, v in results[f"batch {b}"].items()
        )
        print(f"batch {b}, {args.keys} keys, {LAYERS} layers: {row}", flush=True)
    out = {"keys": args.keys, "rounds": args.rounds, "threads": torch.get_num_threads()}
    out["results"] = results
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
