"""Prefill attention, our AMX kernel (quant/attend_amx.cpp) against PyTorch's fused one, on
PaliGemma-3B's shapes at 224 / 448 / 896 px (not a test):

    python benchmarks/bench_prefill_attention.py [--sizes 224 448 896] [--rounds 10] [--json F]

Per shape: SigLIP's attention (16 heads of 72, no mask) and Gemma's prefill (8 query heads of
256, one kv head, a boolean mask), one call each, the two paths alternating round by round;
the median ms per path, TFLOP/s (4 T S H N flops), ours / PyTorch's, and each path's largest
error against a float64 softmax of the same bfloat16 operands. Needs a CPU with AMX-BF16."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from paligemma.quant import kernels

SIDES = {224: 16, 448: 32, 896: 64}  # image side -> patches a side (14 px each)
PROMPT = 12  # text tokens beside the image tokens in Gemma's prefill


def shapes(size: int) -> dict:
    tokens = SIDES[size] ** 2
    return {
        f"siglip {size}": (16, 16, tokens, 72, False),
        f"gemma {size}": (8, 1, tokens + PROMPT, 256, True),
    }


def measure(heads, kv, t, h, masked, rounds: int) -> dict:
    g = torch.Generator().manual_seed(t)
    q = torch.randn(1, t, heads, h, generator=g).bfloat16().transpose(1, 2)
    k, v = (torch.randn(1, t, kv, h, generator=g).bfloat16().transpose(1, 2) for _ in range(2))
    mask = torch.ones(1, 1, t, t, dtype=torch.bool) if masked else None
    scale = h**-0.5
    paths = {
        "ours": lambda: torch.ops.paligemma_cpu.attend_amx(q, k, v, mask, scale),
        "pytorch": lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=kv != heads
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds + 1):  # round 0: warm-up
        for name in list(paths)[:: 1 if r % 2 else -1]:
            start = time.perf_counter()
            paths[name]()
            if r:
                times[name].append(time.perf_counter() - start)
    kk, vv = (x.double().repeat_interleave(heads // kv, 1) for x in (k, v))
    want = torch.softmax((q.double() @ kk.transpose(-1, -2)) * scale, -1) @ vv
    out = {}
    for name, fn in paths.items():
        s = statistics.median(times[name])
        out[name] = {
            "ms": 1e3 * s,
            "tflop_s": 4 * t * t * h * heads / s / 1e12,
            "max_err": (fn().double() - want).abs().max().item(),
        }
    out["ours_over_pytorch"] = out["ours"]["ms"] / out["pytorch"]["ms"]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896], choices=SIDES)
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not kernels.available() or not kernels.amx_bf16():
        ap.error("needs our CPU kernels on a CPU with AMX-BF16 (this one has none)")
    results = {}
    print(f"prefill attention, {torch.get_num_threads()} threads")
    for size in args.sizes:
        for name, shape in shapes(size).items():
            r = results[name] = measure(*shape, rounds=args.rounds)
            print(
                f"  {name:12} ours {r['ours']['ms']:8.2f} ms ({r['ours']['tflop_s']:.2f} TFLOP/s)"
                f"  PyTorch {r['pytorch']['ms']:8.2f} ms ({r['pytorch']['tflop_s']:.2f})"
                f"  ours / PyTorch {r['ours_over_pytorch']:.3f}  max error vs float64: ours"
                f" {r['ours']['max_err']:.2e}, PyTorch {r['pytorch']['max_err']:.2e}",
                flush=True,
            )
    out = {"threads": torch.get_num_threads(), "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
