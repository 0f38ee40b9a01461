"""First token (vision + prefill, batch 1) of PaliGemma-3B-224 on a CPU without a fast bfloat16
GEMM (AVX2-only hosts), each configuration in its own process, best of 2 after a warm-up
(not a test): ours bfloat16 with float32 prefill products (the default there), the same with
them off (`cpu_kernels.F32_PREFILL = False`: PyTorch's bfloat16 GEMM), int8, int4, and
transformers float32 (its fastest first token on such hosts). Uses bench_vs_transformers.py's
cached checkpoint (created if missing).

    python benchmarks/avx2_first_token.py [--json out.json] [--only ours-bf16 hf-f32 ...]
                                          [--rounds 3] [--preset paligemma-3b-448]

--rounds N: the configurations run in turn N times (the order reversed every other round), so
that a shared host's slow minutes fall on all of them; each configuration keeps its best round,
and each round's first token over transformers float32's in the same round is reported with
the median of those ratios. --preset: another resolution (its checkpoint made and cached as
bench_vs_transformers.py does).
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
import bench_vs_transformers as bvt

RUNS = {  # name: (kind, dtype, quantize, float32 prefill products)
    "ours-bf16": ("ours", "bfloat16", None, None),
    "ours-bf16-no-f32": ("ours", "bfloat16", None, False),
    "ours-int8": ("ours", "bfloat16", "int8", None),
    "ours-int4": ("ours", "bfloat16", "int4", None),
    "hf-f32": ("hf", "float32", None, None),
}


def worker(path: Path, name: str) -> dict:
    kind, dtype, quant, f32 = RUNS[name]
    bvt.DECODE_REPEATS = 2
    if kind == "hf":
        return bvt.worker_hf(path, dtype, 2, 1)
    from paligemma.quant import kernels

    kernels.F32_PREFILL = f32
    out = bvt.worker_ours(path, dtype, quant, 2, 1, "")
    return out | {"f32_prefill": kernels.f32_prefill()}


def ratios(rounds: list[dict]) -> dict[str, dict]:
    """Per configuration: its first token over hf-f32's of the same round, and their median."""
    out = {}
    for name in {n for r in rounds for n in r} - {"hf-f32"}:
        each = [
            r[name]["first_token_s"] / r["hf-f32"]["first_token_s"]
            for r in rounds
            if name in r and "hf-f32" in r
        ]
        if each:
            out[name] = {"rounds": [round(x, 3) for x in each], "median": statistics.median(each)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/paligemma-bench").expanduser()))
    ap.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--json", default="avx2_first_token.json")
    ap.add_argument("--rounds", type=int, default=1, help="runs of every configuration, in turn")
    ap.add_argument("--preset", default="paligemma-3b-224", help="default: %(default)s")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = Path(args.cache_dir) / args.preset
    if args.worker:
        print("RESULT " + json.dumps(worker(path, args.worker)), flush=True)
        return
    bvt.make_checkpoint(bvt.preset_config(args.preset, None), path)
    results = {
        "preset": args.preset,
        "host": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    results["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    for name in args.only:
        if RUNS[name][2]:
            bvt.quantized_checkpoint(path, RUNS[name][2])
    rounds: list[dict] = []
    for r in range(args.rounds):
        rounds.append({})
        for name in args.only if r % 2 == 0 else args.only[::-1]:
            cmd = [sys.executable, __file__, "--cache-dir", args.cache_dir]
            cmd += ["--preset", args.preset, "--worker", name]
            result = bvt.run_worker(cmd)
            if result is None:
                continue
            rounds[-1][name] = result
            if name not in results or result["first_token_s"] < results[name]["first_token_s"]:
                results[name] = result
            figures = {k: round(v, 3) for k, v in result.items()}
            print(f"round {r + 1} {name:18s} " + json.dumps(figures), flush=True)
    results["rounds"] = rounds
    results["ratio_to_hf_f32"] = ratios(rounds)
    for name, ratio in results["ratio_to_hf_f32"].items():
        print(f"{name:18s} first token / transformers float32's, per round: {ratio}", flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
