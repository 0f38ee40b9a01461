"""Batch inference with one GPU worker on Ray Data (`--num-gpus-per-worker 1`): images/s.

    python benchmarks/gpu_batch.py                      # on a GPU machine (cuda, 1 GPU worker)
    python benchmarks/gpu_batch.py --device cpu         # the same path on the CPU (CI runs this)
    python benchmarks/gpu_batch.py --model google/paligemma2-3b-pt-224 --images 512

Writes synthetic scenes, runs `run_batch(engine="ray", workers=1)` over them (the model on the
worker's device; one GPU reserved per worker when the device is cuda), prints one line with
images/s and returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np


def scenes(directory: Path, n: int) -> Path:
    from paligemma.demo.synthetic import make_scene

    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_scene(np.random.default_rng(i)).image.save(directory / f"scene{i:05d}.png")
    return directory


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", help="default: the model's (float32 embedded, bfloat16 others)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--task", default="caption")
    p.add_argument("--out", help="working directory (default: a temporary one)")
    args = p.parse_args(argv)

    import ray
    import torch

    from paligemma.batch import read_output, run_batch

    work = Path(args.out or tempfile.mkdtemp(prefix="gpu_batch-"))
    images = scenes(work / "images", args.images)
    gpu = args.device.startswith("cuda")
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    load = {"source": args.model, "device": args.device}
    load |= {"dtype": args.dtype} if args.dtype else {}
    summary = run_batch(
        images, args.task, work / "output", engine="ray", workers=1, threads=None if gpu else 1,
        batch_size=args.batch_size, num_gpus_per_worker=1 if gpu else 0, load=load,
    )  # fmt: skip
    table = read_output(work / "output")
    result = {
        "device": torch.cuda.get_device_name(0) if gpu else platform.processor() or "cpu",
        "model": args.model,
        "rows": table.num_rows,
        "errors": table.num_rows - table["error"].null_count,
        "seconds": summary["seconds"],
        "images_per_s": round(table.num_rows / summary["seconds"], 2),
    }
    print(f"{result['images_per_s']} images/s on {result['device']}: {json.dumps(result)}")
    return result


if __name__ == "__main__":
    main()
