"""A short FSDP2 full fine-tune under torchrun, timing its steps: the prepared GPU check (nccl,
one process per GPU, bfloat16 compute) that also runs on the CPU (gloo) with a tiny model, as
tests/test_distributed.py runs it.

    python benchmarks/gpu_fsdp.py --model google/paligemma2-3b-pt-224        # every GPU
    python benchmarks/gpu_fsdp.py --model DIR --nproc 2 --steps 3             # CPU: gloo

It writes a synthetic data set (noise images, one caption each), runs `torchrun --standalone
--nproc-per-node N -m paligemma finetune --mode full --strategy fsdp` on it (with
--autocast on GPUs) and prints one JSON line: the median step time after the first step (the
first includes warm-up), examples/s and suffix tokens/s, from the run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_data(root: Path, n: int, size: int) -> Path:
    """`n` records of random-noise images with the same caption."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        name = f"noise-{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
        records.append({"image": name, "prefix": "caption en", "suffix": "random noise"})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    gpus = torch.cuda.device_count()
    p.add_argument("--nproc", type=int, default=gpus or 2, help="processes (default: GPUs, or 2)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8, help="over all processes")
    p.add_argument("--image-size", type=int, default=224, help="px of the synthetic images")
    p.add_argument("--out", help="run directory (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        data = write_data(Path(tmp), args.batch_size * 2, args.image_size)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(args.nproc), "-m", "paligemma", "finetune"]
        cmd += ["--model", args.model, "--data", str(data), "--out", str(out)]
        cmd += ["--mode", "full", "--strategy", "fsdp", "--steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size), "--save-every", str(args.steps)]
        cmd += ["--autocast"] if gpus else []
        subprocess.run(cmd, check=True)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = statistics.median(r["seconds"] for r in rows[1:] or rows)
    result = {
        "device": torch.cuda.get_device_name() if gpus else "cpu",
        "backend": "nccl" if gpus else "gloo",
        "processes": args.nproc,
        "batch_size": args.batch_size,
        "steps": len(rows),
        "step_s": round(step_s, 4),
        "examples_per_s": round(args.batch_size / step_s, 2),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rows[1:] or rows), 1),
        "final_loss": rows[-1]["loss"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
