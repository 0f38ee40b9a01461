"""Peak memory and time of quantising at load (not a test; tests/test_quantize.py runs it small).

    python benchmarks/bench_quant_load.py                    # a mid-size random checkpoint
    python benchmarks/bench_quant_load.py --path CKPT_DIR    # any bfloat16 checkpoint

Each load runs in its own process, so its peak resident memory (VmHWM, less the resident memory
after the imports) is its own: bfloat16, then quantize="int8" and "int4", which quantise each
tensor as it is read. Prints, per mode, the peak and time and their ratios to bfloat16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = """
import json, re, sys, time, torch, paligemma
def rss(field):
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\\s+(\\d+) kB", text).group(1)) * 1024
with torch.device("meta"):  # torch's one-time imports for meta tensors (~75 MiB), as any load
    paligemma.PaliGemma(paligemma.TINY)
if sys.argv[2]:  # the CPU kernels loaded (once per process; decoding needs them anyway)
    from paligemma.quant import kernels
    kernels.available()
base = rss("VmRSS")
start = time.perf_counter()
model = paligemma.load_model(sys.argv[1], dtype=torch.bfloat16, quantize=sys.argv[2] or None)
print(json.dumps({"load_s": time.perf_counter() - start, "peak_bytes": rss("VmHWM") - base}))
"""


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


def measure(path: Path, mode: str | None) -> dict:
    """Load `path` (quantize=mode) in a fresh process: its load_s and peak_bytes."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), mode or ""],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(path: Path) -> dict:
    """Per mode (bfloat16, int8, int4): the measurement and its ratios to bfloat16."""
    base = measure(path, None)
    out = {"bfloat16": base}
    for mode in ("int8", "int4"):
        got = measure(path, mode)
        got["peak_ratio"] = got["peak_bytes"] / base["peak_bytes"]
        got["time_ratio"] = got["load_s"] / base["load_s"]
        out[mode] = got
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, help="a bfloat16 checkpoint (default: write one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path
        if path is None:
            path = Path(tmp) / "mid"
            write_checkpoint(path, mid_size_config())
        results = compare(path)
    for mode, r in results.items():
        line = f"{mode:9s} peak {r['peak_bytes'] / 2**20:8.1f} MiB  load {r['load_s']:6.2f} s"
        if mode != "bfloat16":
            line += f"  peak {r['peak_ratio']:.2f}x, time {r['time_ratio']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
