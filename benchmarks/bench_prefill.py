"""Prefill (vision + decoder over the prompt through a KV cache, one logit row) A/B in ONE
process, against transformers on the same tensors (not a test):

    python benchmarks/bench_prefill.py [--size 224 448] [--repeats 7] [--json out.json]
    python benchmarks/bench_prefill.py --size 896 --repeats 3        # 4,096 patches
    python benchmarks/bench_prefill.py --threads 1 --cpu-time        # on a busy, shared machine

Variants, interleaved round by round (the order rotating) so that a noisy, shared machine hits
them alike; medians:
  before     the eager attention everywhere with out-of-place element-wise steps: the code
             before fused-by-default (`set_fused_attention_(model, False)`, run with autograd
             on but no tensor requiring grad, which takes the out-of-place branches)
  in-place   eager attention, element-wise steps in place (no autograd)
  after      the default: fused attention for calls of >= 128 queries, in place
  hf-eager, hf-sdpa   transformers' PaliGemma holding the same tensors, attention eager / SDPA
Model: PaliGemma-3B-shaped (profile_prefill.py: real widths, a few layers) in bfloat16; the
per-layer costs are the full model's, so ratios carry over (the 18 + 27 layer model has more
of the per-layer work and the same vocabulary product).
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_generate
import profile_prefill as pp

from paligemma.model import set_fused_attention_

SETTINGS = {"before": False, "in-place": False, "after": None}


def run(model, name: str, fn, x: dict) -> float:
    if name in SETTINGS:
        set_fused_attention_(model, SETTINGS[name])
    mode = torch.enable_grad() if name == "before" else torch.inference_mode()
    start = pp.CLOCK["clock"]()
    with mode:
        fn(model, x)
    return pp.CLOCK["clock"]() - start


def measure(variants: dict, x: dict, repeats: int) -> dict:
    runs = {n: partial(run, model, n, fn, x) for n, (fn, model) in variants.items()}
    med = pp.interleaved(runs, repeats)
    out = {f"{n}_s": round(v, 4) for n, v in med.items()}
    out |= {f"{n}/before": round(v / med["before"], 3) for n, v in med.items() if n != "before"}
    return out | {f"after/{n}": round(med["after"] / v, 3) for n, v in med.items() if "hf" in n}


def main() -> None:
    ap = pp.parser(__doc__, 7)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    pp.setup(args)
    results = {}
    for size in args.size:
        model = pp.random_model(pp.shaped_config(size, args.layers, args.vision_layers))
        for p in model.parameters():
            p.requires_grad_(False)
        variants = {n: (pp.prefill_ours, model) for n in SETTINGS}
        if not args.no_transformers:
            variants |= {
                f"hf-{a}": (pp.prefill_hf, pp.transformers_twin(model, a))
                for a in ("eager", "sdpa")
            }
        x = bench_generate.inputs(model.cfg, 1, 10)
        clock = "CPU s" if args.cpu_time else "wall s"
        name = f"{size} px ({args.layers} + {args.vision_layers} layers, "
        name += f"{torch.get_num_threads()} threads, {clock})"
        results[name] = measure(variants, x, args.repeats)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        del variants, model
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
