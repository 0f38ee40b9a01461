"""Prefill (vision + decoder over the prompt, one logit row) A/B in ONE process (not a test):

    python benchmarks/bench_prefill.py [--repeats 7] [--json out.json]

Variants, interleaved round by round so that a noisy (shared) machine hits them alike, medians:
  before  RMSNorm as three passes (x * rsqrt(mean(x^2) + eps), then * (1 + w)), eager attention
  after   RMSNorm through F.rms_norm (the default now; bit-identical), eager attention
  fused   after + the opt-in fused attention (`set_fused_attention_`; not bit-exact)
Models: the embedded demo model (float32, its 224 px scenes) and a mid-size random model
(SigLIP 768 x 6 at 224 px = 256 image tokens; Gemma 1024 x 8, 8 heads, MQA; bfloat16 and
float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import paligemma
from paligemma import gemma
from paligemma.model import set_fused_attention_

sys.path.insert(0, str(Path(__file__).parent))
import bench_generate

FUSED_RMS = gemma.RMSNorm.forward


def three_pass_rms(self, x: torch.Tensor) -> torch.Tensor:
    """The RMSNorm before this change (three passes over x in float32)."""
    y = x.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
    return (y * (1.0 + self.weight.float())).type_as(x)


def mid_config() -> paligemma.PaliGemmaConfig:
    base = paligemma.CONFIGS["paligemma-3b-224"]
    vision = dataclasses.replace(base.vision, width=768, depth=6, num_heads=12, mlp_dim=3072)
    text = dataclasses.replace(base.text, width=1024, depth=8, head_dim=128, mlp_dim=4096)
    return dataclasses.replace(base, vision=vision, text=text)


def random_model(cfg, dtype: torch.dtype) -> paligemma.PaliGemma:
    torch.manual_seed(0)
    model = paligemma.PaliGemma(cfg).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model


def variant(model, name: str) -> None:
    gemma.RMSNorm.forward = three_pass_rms if name == "before" else FUSED_RMS
    set_fused_attention_(model, name == "fused")


def prefill_s(model, x: dict) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(
            x["input_ids"],
            x["pixel_values"].to(model.dtype),
            x["attention_mask"],
            x["token_type_ids"],
            num_logits=1,
        )
    return time.perf_counter() - start


def measure(model, x: dict, repeats: int) -> dict:
    names = ("before", "after", "fused")
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up
        variant(model, n)
        prefill_s(model, x)
    for r in range(repeats):
        for n in names[r % 3 :] + names[: r % 3]:  # rotate the order too
            variant(model, n)
            times[n].append(prefill_s(model, x))
    variant(model, "after")
    med = {n: statistics.median(t) for n, t in times.items()}
    return {f"{n}_s": round(v, 4) for n, v in med.items()} | {
        "after/before": round(med["after"] / med["before"], 3),
        "fused/before": round(med["fused"] / med["before"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    embedded = paligemma.load(dtype=torch.float32, device="cpu").model
    mid = mid_config()
    runs = [("embedded float32", embedded)]
    runs += [("mid bfloat16", torch.bfloat16), ("mid float32", torch.float32)]
    print(f"{torch.get_num_threads()} threads; medians of {args.repeats} interleaved rounds")
    results = {}
    for name, model in runs:
        if isinstance(model, torch.dtype):
            model = random_model(mid, model)
        x = bench_generate.inputs(model.cfg, 1, 10)
        results[name] = measure(model, x, args.repeats)
        print(f"{name:18} {json.dumps(results[name])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
