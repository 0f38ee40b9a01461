"""A/B of a prefill switch (not a test): the first token's time with the switch off and on,
paired round by round, on a saved checkpoint:

    python benchmarks/ab_prefill.py --switch MALLOC [--model DIR] [--rounds 4] [--prefills 4]
                                    [--json F]
    python benchmarks/ab_prefill.py --switch PRUNE  [--model DIR] [--rounds 10] [--json F]
    python benchmarks/ab_prefill.py --switch GEGLU  [--model DIR] [--rounds 10] [--json F]
    python benchmarks/ab_prefill.py --switch GELU   [--model DIR] [--rounds 10] [--json F]
    python benchmarks/ab_prefill.py --switch TOGETHER [--model DIR] [--rounds 10] [--json F]
    python benchmarks/ab_prefill.py --switch ATTENTION [--model DIR] [--rounds 10] [--json F]

MALLOC: glibc's malloc keeping freed activations (quant/malloc.py; PALIGEMMA_MALLOC=0 turns it
off). It is a process's setting, so each round runs two processes, off and on (the order
alternating from round to round), each the best of `--prefills` prefills after a warm-up, plus
one batch-1 decode rate and the process's peak RSS. PRUNE: the final block for the last
position only (gemma.PRUNE_MIN_TOKENS: 128, or off), toggled in one process, one prefill each
way per round (the order alternating). GEGLU: Gemma's MLP prefill as one fused call on AMX
(quant/gelu.py's FUSED_GEGLU: bf16_geglu, or two bf16_mm calls and gelu_tanh_), toggled the
same way. GELU: SigLIP's fc1 with its GELU in the GEMM's store (FUSED_GELU: bf16_mm gelu=True,
or bf16_mm and gelu_tanh_), the same way. TOGETHER: attention's q, k, v prefill projections as
one AMX call (quant/matvec.py's TOGETHER: bf16_mms, or a bf16_mm call each), the same way.
ATTENTION: the prefill attention on our AMX kernel where it applies (quant/attention.py's
ATTENTION: attend_amx, or PyTorch's fused attention), the same way.

DIR is a saved checkpoint (default: bench_vs_transformers.py's cached PaliGemma-3B-224; its
`--preset paligemma-3b-448` run saves the 448 px one beside it). On a shared host a process's
speed drifts, so the figure is the median of the per-round ratios on / off (below 1: the switch
makes the prefill faster), with every round's values kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ab_decode_ops import cpu_name
from bench_vs_transformers import inputs

import paligemma
from paligemma import gemma
from paligemma import generate as engine
from paligemma.quant import attention, malloc, matvec
from paligemma.quant import gelu as cpu_gelu

DEFAULT = Path.home() / ".cache" / "paligemma-bench" / "paligemma-3b-224"
PRUNE_OFF = 1 << 62  # a PRUNE_MIN_TOKENS no input reaches
# The switches toggled in one process: (module, setting, its value when off).
TOGGLES = {
    "PRUNE": (gemma, "PRUNE_MIN_TOKENS", PRUNE_OFF),
    "GEGLU": (cpu_gelu, "FUSED_GEGLU", False),
    "GELU": (cpu_gelu, "FUSED_GELU", False),
    "TOGETHER": (matvec, "TOGETHER", False),
    "ATTENTION": (attention, "ATTENTION", False),
}
SWITCHES = ("MALLOC", *TOGGLES)


def timings(model, batch_inputs: dict, new_tokens: int) -> dict:
    """One generation's timings (prefill_s, decode_s, steps)."""
    out: dict = {}
    config = engine.GenerationConfig(max_new_tokens=new_tokens)
    for _ in engine.stream(model, batch_inputs, config, set(), timings=out):
        pass
    return out


def worker(path: Path, prefills: int) -> dict:
    """This process's figures (MALLOC's rounds): best prefill, decode tok/s, peak RSS GB, and
    whether malloc's thresholds are set in it (the load sets them unless PALIGEMMA_MALLOC=0)."""
    model = paligemma.load_model(path, dtype=torch.bfloat16)
    one = inputs(model.cfg, 1)
    timings(model, one, 2)  # warm-up (kernels, caches)
    first = [timings(model, one, 1)["prefill_s"] for _ in range(prefills)]
    t = timings(model, one, 9)
    return {
        "prefill_s": min(first),
        "prefills_s": first,
        "decode_tok_s": (t["steps"] - 1) / t["decode_s"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "malloc_set": malloc.keep_freed_blocks(),
    }


def malloc_rounds(path: Path, rounds: int, prefills: int) -> dict:
    """Processes off / on, alternating; per figure the values and the paired ratios on / off."""
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for r in range(rounds):
        for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
            env = os.environ | {"PALIGEMMA_MALLOC": "1" if side == "on" else "0"}
            cmd = [sys.executable, __file__, "--worker", str(path), "--prefills", str(prefills)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"worker failed ({side}):\n{proc.stderr[-2000:]}")
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  round {r + 1} {side}: {json.dumps(runs[side][-1])}", flush=True)
    out: dict = {"off": runs["off"], "on": runs["on"]}
    for key in ("prefill_s", "decode_tok_s", "peak_rss_gb"):
        ratios = [b[key] / a[key] for a, b in zip(runs["off"], runs["on"], strict=True)]
        out[f"{key}_ratios"] = ratios
        out[f"{key}_median_ratio"] = statistics.median(ratios)
    return out


def toggle_rounds(path: Path, rounds: int, switch: str) -> dict:
    """One process, the module setting of `switch` (TOGGLES) at its default / off alternating:
    prefill seconds each way; the setting put back after."""
    module, name, off = TOGGLES[switch]
    model = paligemma.load_model(path, dtype=torch.bfloat16)
    one = inputs(model.cfg, 1)
    default = getattr(module, name)
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for side in ("on", "off"):  # warm-up both ways
            setattr(module, name, default if side == "on" else off)
            timings(model, one, 1)
        for r in range(rounds):
            for side in ("on", "off") if r % 2 == 0 else ("off", "on"):
                setattr(module, name, default if side == "on" else off)
                times[side].append(timings(model, one, 1)["prefill_s"])
            print(f"  round {r + 1}: off {times['off'][-1]:.3f} s, on {times['on'][-1]:.3f} s")
    finally:
        setattr(module, name, default)
    ratios = [b / a for a, b in zip(times["off"], times["on"], strict=True)]
    return {
        "off_prefill_s": times["off"],
        "on_prefill_s": times["on"],
        "prefill_s_ratios": ratios,
        "prefill_s_median_ratio": statistics.median(ratios),
        name.lower(): default,
    }


def main(argv: list[str] | None = None) -> dict:
    """Runs the A/B (or, with --worker, one MALLOC process) and returns what it prints / writes."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--switch", choices=SWITCHES, help="what to toggle (required)")
    ap.add_argument(
        "--model", type=Path, default=DEFAULT, help="saved checkpoint (default: %(default)s)"
    )
    ap.add_argument("--rounds", type=int, help="paired rounds (default: MALLOC 4, the others 10)")
    ap.add_argument(
        "--prefills", type=int, default=4, help="MALLOC: prefills a process (default: 4)"
    )
    ap.add_argument("--json", type=Path, help="write every round and the ratios here")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # MALLOC's processes
    args = ap.parse_args(argv)
    if args.worker:
        result = worker(args.worker, args.prefills)
        print(json.dumps(result))
        return result
    if not args.switch:
        ap.error(f"--switch is required (one of {', '.join(SWITCHES)})")
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model}: no saved checkpoint (bench_vs_transformers.py makes one)")
    rounds = (4 if args.switch == "MALLOC" else 10) if args.rounds is None else args.rounds
    if rounds < 1 or args.prefills < 1:
        ap.error("--rounds and --prefills take a count of 1 or more")
    out = {"host": cpu_name(), "threads": torch.get_num_threads(), "switch": args.switch}
    out["model"] = args.model.name
    print(f"{args.switch} off / on, {rounds} rounds, {args.model}", flush=True)
    if args.switch == "MALLOC":
        out |= malloc_rounds(args.model, rounds, args.prefills)
        keys = ("prefill_s", "decode_tok_s", "peak_rss_gb")
    else:
        out |= toggle_rounds(args.model, rounds, args.switch)
        keys = ("prefill_s",)
    for key in keys:
        print(f"{key}: on / off, median of {rounds} paired rounds {out[f'{key}_median_ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
