"""Peak memory and time of quantising at load (not a test; tests/test_quantize.py runs it small).

    python benchmarks/bench_quant_load.py                    # a mid-size random checkpoint
    python benchmarks/bench_quant_load.py --model CKPT_DIR   # any bfloat16 checkpoint (--path)
    python benchmarks/bench_quant_load.py --repeats 5 --threads 1 --isa avx2 --json F

Each load runs in its own process, so its peak resident memory (VmHWM, less the resident memory
after the imports) is its own: bfloat16, then quantize="int8" and "int4", which quantise each
tensor as it is read. With --repeats N the three run N rounds, interleaved (a busy host hits
them alike); prints, per mode, the medians of the peak, the wall time and the CPU time (all
threads) of the load, and their ratios to bfloat16. --isa forces a lower path for the
quantiser (PALIGEMMA_CPU_ISA), --threads sets torch's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = """
import json, re, sys, time, torch, paligemma
if sys.argv[3]:
    torch.set_num_threads(int(sys.argv[3]))
def rss(field):
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\\s+(\\d+) kB", text).group(1)) * 1024
with torch.device("meta"):  # torch's one-time imports for meta tensors (~75 MiB), as any load
    paligemma.PaliGemma(paligemma.TINY)
if sys.argv[2]:  # the CPU kernels loaded (once per process; decoding needs them anyway)
    from paligemma.quant import kernels
    kernels.available()
base = rss("VmRSS")
start, cpu = time.perf_counter(), time.process_time()
model = paligemma.load_model(sys.argv[1], dtype=torch.bfloat16, quantize=sys.argv[2] or None)
took, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"load_s": took, "cpu_s": cpu, "peak_bytes": rss("VmHWM") - base}))
"""
MODES = ("bfloat16", "int8", "int4")
KEYS = ("load_s", "cpu_s", "peak_bytes")


def mid_size_config(width: int = 1024, depth: int = 4, vocab: int = 25_600):
    """A decoder with the 3B model's proportions (linears ~4x the embedding, a small vision
    tower), about 140M parameters at the defaults."""
    from paligemma.config import GemmaConfig, PaliGemmaConfig, SiglipConfig

    vision = SiglipConfig(width=64, depth=1, num_heads=4, mlp_dim=128, patch_size=14)
    text = GemmaConfig(
        width=width,
        depth=depth,
        num_heads=8,
        num_kv_heads=1,
        head_dim=width // 8,
        mlp_dim=width * 8,
        vocab_size=vocab,
    )
    return PaliGemmaConfig(vision=vision, text=text, image_size=28, image_token_id=vocab - 1)


def write_checkpoint(path: Path, cfg) -> None:
    import torch

    import paligemma

    torch.manual_seed(0)
    with torch.device("meta"):
        model = paligemma.PaliGemma(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    paligemma.save_model(model, path)


def measure(path: Path, mode: str, threads: int | None = None, isa: str | None = None) -> dict:
    """Load `path` (quantize=mode, none for "bfloat16") in a fresh process: its load_s, cpu_s
    and peak_bytes."""
    env = dict(os.environ, **({"PALIGEMMA_CPU_ISA": isa} if isa else {}))
    quantize = "" if mode == "bfloat16" else mode
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), quantize, str(threads or "")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(path: Path, repeats: int = 1, threads: int | None = None, isa=None) -> dict:
    """Per mode (bfloat16, int8, int4): the medians over `repeats` interleaved rounds and, for
    the quantised modes, their ratios to bfloat16 (peak_ratio, time_ratio, cpu_ratio)."""
    runs = {mode: [] for mode in MODES}
    for round_ in range(repeats):
        for mode in MODES[round_ % 3 :] + MODES[: round_ % 3]:  # a rotating order
            runs[mode].append(measure(path, mode, threads, isa))
    out = {m: {k: statistics.median(r[k] for r in runs[m]) for k in KEYS} for m in MODES}
    base = out["bfloat16"]
    for mode in MODES[1:]:
        got = out[mode]
        got["peak_ratio"] = got["peak_bytes"] / base["peak_bytes"]
        got["time_ratio"] = got["load_s"] / base["load_s"]
        got["cpu_ratio"] = got["cpu_s"] / base["cpu_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--path", "--model", type=Path, help="a bfloat16 checkpoint (default: write one)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (medians)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--isa", choices=["scalar", "avx2", "avx512"], help="quantiser path")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path
        if path is None:
            path = Path(tmp) / "mid"
            write_checkpoint(path, mid_size_config())
        results = compare(path, args.repeats, args.threads, args.isa)
    for mode, r in results.items():
        line = f"{mode:9s} peak {r['peak_bytes'] / 2**20:8.1f} MiB  load {r['load_s']:6.2f} s"
        line += f" (CPU {r['cpu_s']:6.2f} s)"
        if mode != "bfloat16":
            line += f"  peak {r['peak_ratio']:.2f}x, time {r['time_ratio']:.2f}x"
            line += f" (CPU {r['cpu_ratio']:.2f}x)"
        print(line)
    if args.json:
        meta = {"repeats": args.repeats, "threads": args.threads, "isa": args.isa or "best"}
        args.json.write_text(json.dumps({**meta, **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
