"""Quantised prefill against bfloat16, A/B in ONE process (not a test):

    python benchmarks/bench_quant_prefill.py [--repeats 7] [--depth 2] [--threads N] [--json F]
    python benchmarks/bench_quant_prefill.py --depth 2,4 --threads 1 --clock cpu  # + 3B estimate
    python benchmarks/bench_quant_prefill.py --variants bf16,int8,int4 --tiles 128,256,512

One prefill (vision + decoder over the 256 image tokens and a 12-token prompt, one logit row) of
a PaliGemma-3B-224-shaped random model in bfloat16 (SigLIP 1152 wide, MLP 4304, 16 heads; Gemma
2048 wide, MLP 16384, 8 heads, 1 KV head, head_dim 256, vocabulary 257216) with only `--depth`
layers in each tower, which keeps the per-layer costs of the real one. Variants (the decoder's
linears and the tied head quantised as `load(quantize=...)` does; the towers' float weights and
the embedding shared, so the models hold one copy of them), timed round by round in a rotating
order so a noisy (shared) host hits them alike; medians and their ratios to bf16:
  bf16          the float model
  int8, int4    quantised, the default path: on AMX-BF16 hosts our tile GEMM with the
                dequantisation fused in (quant/dequant_amx.h), else as int8-tiles
  int8-tiles    the C++ tile dequantiser feeding oneDNN's GEMM (quant/dequant.cpp; the
  int4-tiles    default before the fused GEMM, and still without AMX-BF16: linear.AMX_PREFILL)
  bf16-packed   the float model with the decoder's linears' weights pre-packed for oneDNN
                (mkldnn._reorder_linear_weight: no re-layout per call; as the dense layers run
                with pre-packed weights)
  int8-python   ... the previous path: CHUNK rows dequantised in Python, then F.linear
  int4-python
  int8-team     the tiles dequantised by all threads, then one GEMM on all threads
  int4-team     (TEAM_TILE rows at a time; the default gives each thread its own tiles)
  int8-int_mm   alternative (b): activations quantised per row to int8 on the fly and
                torch._int_mm (int8 x int8 -> int32, AMX-INT8 through oneDNN where the host has
                it), then both scales; not exact against the dequantised product
`--depth 2,4` also extrapolates to the 3B model's depth: the fixed costs (above all the head
over the 257k vocabulary, which int8 / int4 read in half / a quarter of the bytes) weigh far
more at depth 2 than in the real model. `--clock cpu` times CPU seconds instead of wall
seconds (use it with --threads 1).
`--tiles` adds int8@T / int4@T for each tile size T (output rows per GEMM call; the default is
linear.TILE). `--isa avx2|scalar` forces a lower instruction set for the dequantiser.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import paligemma
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import linear as q

sys.path.insert(0, str(Path(__file__).parent))
import bench_generate

PROMPT_TOKENS = 10
TILED_CHUNKED = q._chunked


def config(depth: int) -> paligemma.PaliGemmaConfig:
    base = paligemma.CONFIGS["paligemma-3b-224"]
    vision = dataclasses.replace(base.vision, depth=depth)
    text = dataclasses.replace(base.text, depth=depth, sliding_layers=None)
    return dataclasses.replace(base, vision=vision, text=text)


def float_model(cfg) -> paligemma.PaliGemma:
    """Random bfloat16 weights (norms zero), built without a float32 copy."""
    with torch.device("meta"):
        model = paligemma.PaliGemma(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.zero_() if "norm" in name else p.normal_(0.0, 0.02, generator=g)
    return model


def quantized(model: paligemma.PaliGemma, mode: str) -> paligemma.PaliGemma:
    """A quantised twin sharing every tensor that quantize_ leaves as it is."""
    keep = {id(t): t for n, t in model.state_dict(keep_vars=True).items() if "blocks" not in n}
    keep |= {id(p): p for n, p in model.vision.named_parameters()}
    return q.quantize_(copy.deepcopy(model, keep), mode)


def int_mm_chunked(layer, flat: torch.Tensor) -> torch.Tensor:
    """Alternative (b) for int8: per-row dynamic int8 activations, torch._int_mm, both scales."""
    if not isinstance(layer, q.Int8Linear):
        return TILED_CHUNKED(layer, flat)
    x = flat.float()
    s = x.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127  # (M, 1)
    acc = torch._int_mm(torch.round(x / s).to(torch.int8), layer.weight.t())  # int32 (M, O)
    return (acc * s * layer.scale.float()).to(flat.dtype)


def tiles_chunked(layer, flat: torch.Tensor) -> torch.Tensor:
    amx, q.AMX_PREFILL = q.AMX_PREFILL, False  # (the tiles feeding oneDNN)
    try:
        return TILED_CHUNKED(layer, flat)
    finally:
        q.AMX_PREFILL = amx


class PackedLinear(torch.nn.Module):
    """nn.Linear's product with its weight pre-packed for oneDNN (bench only: inference)."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def packed(model: paligemma.PaliGemma, rows: int) -> paligemma.PaliGemma:
    """A twin of the float model whose decoder linears run on pre-packed weights."""
    keep = {id(t): t for t in model.state_dict(keep_vars=True).values()}
    twin = copy.deepcopy(model, keep)
    for name in q.targets(twin):
        twin.set_submodule(name, PackedLinear(twin.get_submodule(name), rows))
    return twin


def python_chunked(layer, flat: torch.Tensor) -> torch.Tensor:
    tiled, q._TILED = q._TILED, set()  # (the Python fallback of _chunked)
    try:
        return TILED_CHUNKED(layer, flat)
    finally:
        q._TILED = tiled


def prefill_s(model, x: dict, path=TILED_CHUNKED, tile: int = q.TILE) -> float:
    q._chunked, q.TILE = path, tile
    try:
        start = CLOCK[0]()
        with torch.inference_mode():
            model(**x, num_logits=1)
        return CLOCK[0]() - start
    finally:
        q._chunked, q.TILE = TILED_CHUNKED, TILE_DEFAULT


TILE_DEFAULT = q.TILE
TEAM_TILE = 2048  # rows per step of the -team variants (tile < 0 tells dequant_mm)
CLOCK = [time.perf_counter]  # --clock cpu: time.process_time (with --threads 1: what one core
# spends, which other processes on a shared host disturb less than the wall clock)


def variants(models: dict, names: list[str], tiles: list[int]) -> dict:
    """name -> (model, _chunked, tile)."""
    paths = {"python": python_chunked, "int_mm": int_mm_chunked, "tiles": tiles_chunked}
    out = {}
    for name in names:
        mode, _, how = name.partition("-")
        tile = -TEAM_TILE if how == "team" else TILE_DEFAULT
        out[name] = (models.get(name, models[mode]), paths.get(how, TILED_CHUNKED), tile)
    for tile in tiles:
        for mode in ("int8", "int4"):
            out[f"{mode}@{tile}"] = (models[mode], TILED_CHUNKED, tile)
    return out


def measure(runs: dict, x: dict, repeats: int) -> dict:
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up (oneDNN builds its kernels per shape on the first call)
        prefill_s(runs[n][0], x, *runs[n][1:])
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:  # rotate the order too
            times[n].append(prefill_s(runs[n][0], x, *runs[n][1:]))
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        n: {"median_s": round(v, 4), "x_bf16": round(v / med["bf16"], 3)} for n, v in med.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--depth", default="2", help="layers per tower (3B: 27, 26); two (2,4): extrapolate"
    )
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--variants", default="bf16,bf16-packed,int8,int4,int8-tiles,int4-tiles")
    ap.add_argument("--tiles", default="", help="comma-separated tile sizes to compare")
    ap.add_argument("--isa", choices=list(cpu_kernels.ISAS), help="force a lower dequantiser path")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    if args.isa:
        os.environ[cpu_kernels.ENV_ISA] = args.isa
    names = ["bf16"] + [n for n in args.variants.split(",") if n and n != "bf16"]
    tiles = [int(t) for t in args.tiles.split(",") if t]
    assert cpu_kernels.available(), cpu_kernels.why_not()
    depths = [int(d) for d in args.depth.split(",")]
    results = {f"depth {d}": run_depth(d, names, tiles, args.repeats) for d in depths}
    if len(depths) == 2:
        results["3B extrapolated"] = extrapolate(*depths, *results.values())
        print("3B extrapolated (fixed + 26.5 x per-layer):")
        for name, r in results["3B extrapolated"].items():
            print(f"{name:12} {r['median_s'] * 1000:8.1f} ms  {r['x_bf16']:.3f}x bf16")
    if args.json:
        meta = {"threads": torch.get_num_threads(), "isa": cpu_kernels.isa(), "clock": args.clock}
        meta |= {"amx_bf16": cpu_kernels.amx_bf16(), "command": " ".join(sys.argv[1:])}
        Path(args.json).write_text(json.dumps(meta | {"results": results}, indent=1) + "\n")


def run_depth(depth: int, names: list[str], tiles: list[int], repeats: int) -> dict:
    cfg = config(depth)
    models = {"bf16": float_model(cfg)}
    for mode in ("int8", "int4"):
        if any(n.startswith(mode) for n in names) or tiles:
            models[mode] = quantized(models["bf16"], mode)
    x = bench_generate.inputs(cfg, 1, PROMPT_TOKENS)
    x["pixel_values"] = x["pixel_values"].to(torch.bfloat16)
    if "bf16-packed" in names:
        models["bf16-packed"] = packed(models["bf16"], x["input_ids"].numel())
    print(
        f"{torch.get_num_threads()} threads, isa {cpu_kernels.isa()}, depth {depth}, "
        f"{x['input_ids'].shape[1]} tokens; medians of {repeats} interleaved rounds",
        flush=True,
    )
    results = measure(variants(models, names, tiles), x, repeats)
    for name, r in results.items():
        print(f"{name:12} {r['median_s'] * 1000:8.1f} ms  {r['x_bf16']:.3f}x bf16", flush=True)
    return results


def extrapolate(d1: int, d2: int, r1: dict, r2: dict, layers: float = 26.5) -> dict:
    """The full model's prefill from two depths: what does not grow with depth (the head over
    the 257k vocabulary, the embedding, patchify) plus `layers` x the cost of one layer of each
    tower (3B: 27 SigLIP, 26 Gemma layers)."""
    full = {}
    for name in r1:
        per = (r2[name]["median_s"] - r1[name]["median_s"]) / (d2 - d1)
        full[name] = r1[name]["median_s"] - d1 * per + layers * per
    return {
        n: {"median_s": round(v, 3), "x_bf16": round(v / full["bf16"], 3)} for n, v in full.items()
    }


if __name__ == "__main__":
    main()
