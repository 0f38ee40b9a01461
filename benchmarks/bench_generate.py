"""Prefill latency and decode speed of our engine for one model and dtype (not a test).

    python benchmarks/bench_generate.py --model paligemma-3b-224 --dtype float32
    python benchmarks/bench_generate.py --model path/to/checkpoint --batch 8 --json out.json

A preset name builds that architecture with random weights (the numbers do not depend on the
values); a path or hub id loads a checkpoint. Inputs are synthetic: the image tokens, <bos>, a
prompt of --prompt-tokens ids and "\\n"; decoding runs exactly --new-tokens steps (no stop id).
Reports: load time, time to first token (vision + prefill), decode tokens/s (all rows), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

import paligemma
from paligemma import generate as engine
from paligemma.quant.matvec import install_matvec_

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(name: str, dtype: torch.dtype, device: str) -> paligemma.PaliGemma:
    if name in paligemma.CONFIGS:
        with torch.device("meta"):
            model = paligemma.PaliGemma(paligemma.CONFIGS[name])
        model = model.to_empty(device=device).to(dtype)
        g = torch.Generator(device).manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02, generator=g)
        # As load_model does on the CPU: single rows through torch.mv (quant/matvec.py).
        return install_matvec_(model.eval()) if device == "cpu" else model.eval()
    return paligemma.load_model(name, dtype=dtype, device=device)


def inputs(cfg: paligemma.PaliGemmaConfig, batch: int, prompt_tokens: int, seed: int = 0) -> dict:
    """Synthetic model inputs: the image tokens, <bos>, `prompt_tokens` ids and "\n"."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(10, 1000, (batch, prompt_tokens), generator=g)
    image = torch.full((batch, cfg.num_image_tokens), cfg.image_token_id)
    ids = torch.cat([image, torch.full((batch, 1), 2), text, torch.full((batch, 1), 108)], 1)
    pixels = torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "pixel_values": pixels,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="paligemma-3b-224", help="preset name, path or hub id")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--prompt-tokens", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="runs per batch size (median kept)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = build(args.model, DTYPES[args.dtype], args.device)
    load_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for batch in args.batch:
        batch_inputs = inputs(model.cfg, batch, args.prompt_tokens)
        cfg = engine.GenerationConfig(max_new_tokens=args.new_tokens)
        runs = []
        for _ in range(args.repeats):
            timings: dict = {}
            for _ in engine.stream(model, batch_inputs, cfg, set(), timings=timings):
                pass
            runs.append(timings)
        prefill = statistics.median(t["prefill_s"] for t in runs)
        # Steps after the first token each cost one decoder pass for all rows.
        decode = statistics.median(t["decode_s"] / max(t["steps"] - 1, 1) for t in runs)
        rows.append(
            {
                "batch": batch,
                "prefill_s": prefill,
                "decode_step_s": decode,
                "decode_tokens_per_s": batch / decode,
            }
        )
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    seq = model.cfg.num_image_tokens + args.prompt_tokens + 2
    print(
        f"{args.model}: {params / 1e9:.3f}B parameters, {args.dtype} on {args.device}, "
        f"{torch.get_num_threads()} threads; load {load_s:.1f} s; peak RSS {peak_gb:.1f} GB"
    )
    image_tokens = model.cfg.num_image_tokens
    print(f"prompt {seq} tokens (incl. {image_tokens} image), {args.new_tokens} new tokens")
    print(f"{'batch':>5} {'first token (s)':>16} {'decode step (ms)':>17} {'decode tok/s':>13}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['prefill_s']:>16.3f} {r['decode_step_s'] * 1e3:>17.1f} "
            f"{r['decode_tokens_per_s']:>13.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "model": args.model,
                    "dtype": args.dtype,
                    "device": args.device,
                    "threads": torch.get_num_threads(),
                    "params": params,
                    "load_s": load_s,
                    "peak_rss_gb": peak_gb,
                    "prompt_tokens": seq,
                    "new_tokens": args.new_tokens,
                    "results": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
