"""Batch inference throughput: the local engine vs Ray Data actors at equal total threads.

    python benchmarks/bench_batch.py                       # 400 scenes, 2 Ray workers, all cores
    python benchmarks/bench_batch.py --images 64 --workers 2 --threads 2

Both runs caption the same synthetic scenes with the embedded model (float32, greedy) through
`run_batch`: local = one process with T threads; Ray = a local Ray cluster of T CPUs, W actors of
T / W threads. Two rates each: end to end (model loading, and for Ray the actors' start,
included; `ray.init` itself is reported apart) and steady (from the first results to the
last). Prints images/s, Ray's overhead and the machine, and writes
benchmarks/results/batch.json. Run it on a quiet machine: the numbers are only as good as the
cores are free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from gpu_batch import scenes

RESULTS = Path(__file__).parent / "results" / "batch.json"


def machine() -> dict:
    import ray
    import torch

    from paligemma.cli.common import available_cores

    cpu = platform.processor()
    try:
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_available": available_cores(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def run(images: Path, out: Path, engine: str, workers: int, threads: int, batch: int) -> dict:
    """One engine over the images: end-to-end images/s, and steady images/s (from the first
    results to the last: without model loading and the actors' start)."""
    from paligemma.batch import read_output, run_batch

    stamps: list[tuple[float, int]] = []
    start = time.perf_counter()
    run_batch(
        images, "caption", out, engine=engine, workers=workers, threads=threads,
        batch_size=batch, progress=lambda n: stamps.append((time.perf_counter(), n)),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    rows = read_output(out).num_rows
    later = sum(n for _, n in stamps[1:])
    steady = later / (stamps[-1][0] - stamps[0][0]) if later else float("nan")
    return {"engine": engine, "workers": workers, "threads_per_worker": threads, "rows": rows,
            "seconds": round(seconds, 2), "images_per_s": round(rows / seconds, 2),
            "first_results_s": round(stamps[0][0] - start, 2),
            "steady_images_per_s": round(steady, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, help="total threads (default: the cores available)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    import ray

    info = machine()
    total = args.threads or info["cores_available"]
    work = Path(tempfile.mkdtemp(prefix="bench_batch-"))
    images = scenes(work / "images", args.images)
    local = run(images, work / "local", "local", 1, total, args.batch_size)
    start = time.perf_counter()
    ray.init(num_cpus=total, include_dashboard=False)
    init_s = time.perf_counter() - start
    per = max(1, total // args.workers)
    on_ray = run(images, work / "ray", "ray", args.workers, per, args.batch_size)
    ray.shutdown()
    overhead = 1 - on_ray["images_per_s"] / local["images_per_s"]
    steady = 1 - on_ray["steady_images_per_s"] / local["steady_images_per_s"]
    result = {"machine": info, "images": args.images, "batch_size": args.batch_size,
              "total_threads": total, "local": local, "ray": on_ray,
              "ray_init_s": round(init_s, 2), "ray_overhead": round(overhead, 3),
              "ray_overhead_steady": round(steady, 3)}  # fmt: skip
    load = info["load_average_at_start"]
    print(f"machine: {info['cpu']}, {info['cores_available']} cores, load average {load}")
    for r in (local, on_ray):
        print(f"{r['engine']:5s} {r['workers']} x {r['threads_per_worker']} threads: "
              f"{r['rows']} images in {r['seconds']} s = {r['images_per_s']} images/s end to end, "
              f"{r['steady_images_per_s']} images/s after the first results "
              f"({r['first_results_s']} s)")  # fmt: skip
    print(f"Ray overhead at {total} threads: {overhead:.1%} end to end, {steady:.1%} steady "
          f"(ray.init {init_s:.1f} s, not counted)")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
