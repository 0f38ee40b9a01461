"""A/B of a quantised decode step's small ops: ATen's (decode_block.OWN_OPS = False, the Python
block's bits) against decode_ops.cpp's loops (OWN_OPS = True), in one process (not a test):

    python benchmarks/ab_decode_ops.py [--model DIR] [--modes int8 int4] [--rounds 8]
                                       [--tokens 16] [--json F]

Per mode, the saved quantised checkpoint DIR-<mode> (made by bench_vs_transformers.py; default
DIR: its cached PaliGemma-3B-224) is loaded once; each round decodes `--tokens` tokens at batch 1
with ATen's ops, then with the loops (the same prompt and image). A shared host's memory
bandwidth drifts by 1.5x within seconds, so the figure is the median of the per-round ratios
(loops / ATen), with every round's rate kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_generate

import paligemma
from paligemma import generate as engine
from paligemma.quant import decode_block

DEFAULT = Path.home() / ".cache" / "paligemma-bench" / "paligemma-3b-224"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def rate(model, inputs: dict, tokens: int, own: bool) -> float:
    """Decode tokens/s of one batch-1 generation with OWN_OPS = own."""
    decode_block.OWN_OPS = own
    timings: dict = {}
    config = engine.GenerationConfig(max_new_tokens=tokens + 1)
    for _ in engine.stream(model, inputs, config, set(), timings=timings):
        pass
    return (timings["steps"] - 1) / timings["decode_s"]


def run(path: Path, rounds: int, tokens: int) -> dict:
    model = paligemma.load_model(path, dtype=torch.bfloat16)
    inputs = bench_generate.inputs(model.cfg, 1, 10)
    rate(model, inputs, 2, True)  # warm-up
    aten, own = [], []
    for r in range(rounds):
        aten.append(rate(model, inputs, tokens, False))
        own.append(rate(model, inputs, tokens, True))
        print(f"  round {r + 1}: ATen {aten[-1]:.2f} tok/s, loops {own[-1]:.2f}", flush=True)
    decode_block.OWN_OPS = True
    ratio = statistics.median(o / a for o, a in zip(own, aten, strict=True))
    return {"aten_tok_s": aten, "own_tok_s": own, "median_ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", type=Path, default=DEFAULT, help="bfloat16 checkpoint (default: %(default)s)"
    )
    ap.add_argument("--modes", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    ap.add_argument("--rounds", type=int, default=8, help="A/B rounds (default: %(default)s)")
    ap.add_argument(
        "--tokens", type=int, default=16, help="new tokens a run (default: %(default)s)"
    )
    ap.add_argument("--json", type=Path, help="write the rates and ratios here")
    args = ap.parse_args()
    out = {"host": cpu_name(), "threads": torch.get_num_threads()}
    for mode in args.modes:
        path = args.model.with_name(f"{args.model.name}-{mode}")
        if not (path / "config.json").is_file():
            sys.exit(f"{path}: no saved {mode} checkpoint (bench_vs_transformers.py makes it)")
        print(f"{mode}: {path}", flush=True)
        out[mode] = run(path, args.rounds, args.tokens)
        print(f"{mode}: loops / ATen, median of {args.rounds} rounds: "
              f"{out[mode]['median_ratio']:.3f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
