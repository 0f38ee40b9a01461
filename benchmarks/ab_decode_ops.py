"""A/B of a quantised decode step's small ops: ATen's (decode_block.OWN_OPS = False, the Python
block's bits) against decode_ops.cpp's loops (OWN_OPS = True), in one process (not a test); or,
with --switch KEEP_PLANS, each step's plan derived again (False) against kept (True); or, with
--switch ONE_CALL (decode_layers.py), the blocks called one by one (False) against all of a
step's blocks in one call (True); or, with --switch WIDE_ONE_ROW (kernels.py), a single row's
dot products on AVX-VNNI's 256-bit loop (False) against AVX-512-VNNI's (True; the same where the
CPU lacks either):

    python benchmarks/ab_decode_ops.py [--model DIR] [--modes int8 int4] [--rounds 8]
                                       [--tokens 16] [--switch OWN_OPS] [--json F]

Per mode, the saved quantised checkpoint DIR-<mode> (made by bench_vs_transformers.py; default
DIR: its cached PaliGemma-3B-224) is loaded once; each round decodes `--tokens` tokens at batch 1
with ATen's ops, then with the loops (the same prompt and image). A shared host's memory
bandwidth drifts by 1.5x within seconds, so the figure is the median of the per-round ratios
(loops / ATen: the switch on / off), with every round's rate kept in the JSON ("aten_tok_s" /
"own_tok_s" for OWN_OPS, "off_tok_s" / "on_tok_s" otherwise).
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
from paligemma.quant import decode_block, decode_layers
from paligemma.quant import kernels as cpu_kernels

SWITCHES = {
    "OWN_OPS": decode_block,
    "KEEP_PLANS": decode_block,
    "ONE_CALL": decode_layers,
    "WIDE_ONE_ROW": cpu_kernels,
}
DEFAULT = Path.home() / ".cache" / "paligemma-bench" / "paligemma-3b-224"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def rate(model, inputs: dict, tokens: int, switch: str, on: bool) -> float:
    """Decode tokens/s of one batch-1 generation with the module's <switch> = on."""
    setattr(SWITCHES[switch], switch, on)
    timings: dict = {}
    config = engine.GenerationConfig(max_new_tokens=tokens + 1)
    for _ in engine.stream(model, inputs, config, set(), timings=timings):
        pass
    return (timings["steps"] - 1) / timings["decode_s"]


def run(path: Path, rounds: int, tokens: int, switch: str) -> dict:
    model = paligemma.load_model(path, dtype=torch.bfloat16)
    inputs = bench_generate.inputs(model.cfg, 1, 10)
    rate(model, inputs, 2, switch, True)  # warm-up
    off, on = [], []
    for r in range(rounds):
        off.append(rate(model, inputs, tokens, switch, False))
        on.append(rate(model, inputs, tokens, switch, True))
        print(f"  round {r + 1}: {switch} off {off[-1]:.2f} tok/s, on {on[-1]:.2f}", flush=True)
    setattr(SWITCHES[switch], switch, True)
    ratio = statistics.median(o / a for o, a in zip(on, off, strict=True))
    names = ("aten_tok_s", "own_tok_s") if switch == "OWN_OPS" else ("off_tok_s", "on_tok_s")
    return {names[0]: off, names[1]: on, "median_ratio": ratio}


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
    ap.add_argument(
        "--switch", default="OWN_OPS", choices=sorted(SWITCHES),
        help="the switch to toggle (default: %(default)s)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="write the rates and ratios here")
    args = ap.parse_args()
    out = {"host": cpu_name(), "threads": torch.get_num_threads(), "switch": args.switch}
    for mode in args.modes:
        path = args.model.with_name(f"{args.model.name}-{mode}")
        if not (path / "config.json").is_file():
            sys.exit(f"{path}: no saved {mode} checkpoint (bench_vs_transformers.py makes it)")
        print(f"{mode}: {path}", flush=True)
        out[mode] = run(path, args.rounds, args.tokens, args.switch)
        print(f"{mode}: {args.switch} on / off, median of {args.rounds} rounds: "
              f"{out[mode]['median_ratio']:.3f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
