"""A category the embedded model has never seen, end to end: a COCO detection dataset of stars
drawn into the demo's scenes -> `paligemma data convert` -> `paligemma finetune` ->
`paligemma eval --task coco-det`, before and after (the README's "Your datasets" numbers):

    python benchmarks/new_category.py                      # -> benchmarks/results/new_category.json
    python benchmarks/new_category.py --make-only --out DIR --train 300 --val 60   # the files only

The dataset is written in the official COCO instances format (images/*.png, train.json,
val.json; boxes [x, y, w, h], polygon segmentations, one category "star"), so nothing here is a
special path: the commands it runs are the ones the README shows. Each image is a demo scene
(1-2 known shapes: distractors) with 1-2 five-pointed stars drawn where nothing else is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from paligemma.demo import synthetic

RESULTS = Path(__file__).parent / "results" / "new_category.json"
STAR_COLOURS = ((140, 60, 200), (250, 130, 20))  # purple, orange: no known shape has them


def star_polygon(cx: float, cy: float, radius: float, turn: float) -> list[tuple[float, float]]:
    """The 10 vertices of a five-pointed star (inner radius 0.45 x outer), rotated by `turn`."""
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else 0.45 * radius
        a = turn + k * math.pi / 5 - math.pi / 2
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _free(box, taken) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + 2 < a or c + 2 < x0 or y1 + 2 < b or d + 2 < y0 for a, b, c, d in taken)


def star_scene(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """A demo scene with 1-2 stars added where no shape is: the image and the stars' COCO
    annotations (bbox [x, y, w, h] of the drawn pixels, a polygon, area)."""
    scene = synthetic.make_scene(rng, num_things=int(rng.integers(1, 3)), size=(224, 224))
    image = scene.image.copy()
    taken = [t.box for t in scene.things]
    stars = []
    for _ in range(int(rng.integers(1, 3))):
        for _attempt in range(50):
            radius = float(rng.uniform(18, 48))
            cx, cy = rng.uniform(radius, 224 - radius, size=2)
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            if _free(box, taken):
                break
        else:
            continue
        taken.append(box)
        poly = star_polygon(float(cx), float(cy), radius, float(rng.uniform(0, 2 * math.pi / 5)))
        colour = STAR_COLOURS[int(rng.integers(len(STAR_COLOURS)))]
        ImageDraw.Draw(image).polygon(poly, fill=colour)
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).polygon(poly, fill=1)
        ys, xs = np.nonzero(np.asarray(mask))
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        stars.append(
            {
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "segmentation": [[round(v, 2) for p in poly for v in p]],
                "area": len(xs),
                "iscrowd": 0,
            }
        )
    return image, stars


def make_dataset(out: Path, train: int, val: int, seed: int = 0) -> dict[str, Path]:
    """images/ + train.json + val.json (COCO instances) under `out`; returns their paths."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    ann_id = 0
    for split, n in (("train", train), ("val", val)):
        images, annotations = [], []
        for i in range(n):
            image_id = len(images) + 1 + (0 if split == "train" else 100_000)
            image, stars = star_scene(rng)
            name = f"{split}_{i:05d}.png"
            image.save(out / "images" / name)
            images.append({"id": image_id, "file_name": name, "width": 224, "height": 224})
            for s in stars:
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, **s})
        coco = {
            "info": {"description": f"stars ({split}), made by benchmarks/new_category.py"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "star", "supercategory": "shape"}],
        }
        paths[split] = out / f"{split}.json"
        paths[split].write_text(json.dumps(coco))
    return paths


def machine() -> str:
    """The CPU's model name and core count, as the benchmarks name their host."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line]
    return f"{names[0] if names else platform.processor()}, {os.cpu_count()} cores"


def run(cmd: list[str]) -> float:
    """Run a `paligemma` command as a user would; its wall time in seconds."""
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/stars", help="working directory (default: runs/stars)")
    p.add_argument("--train", type=int, default=400, help="training images (default: 400)")
    p.add_argument("--val", type=int, default=60, help="held-out images (default: 60)")
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps (default: 400)")
    p.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: 1e-3)")
    p.add_argument("--mode", default="full", choices=("full", "lora"), help="(default: full)")
    p.add_argument("--make-only", action="store_true", help="write the dataset and stop")
    p.add_argument("--json", default=str(RESULTS), help=f"results file (default: {RESULTS})")
    args = p.parse_args(argv)
    out = Path(args.out)
    files = make_dataset(out, args.train, args.val)
    if args.make_only:
        print(f"wrote {files['train']}, {files['val']} and {out / 'images'}")
        return
    pg = [sys.executable, "-m", "paligemma"]
    images = str(out / "images")
    ev = ["eval", "--task", "coco-det", "--data", str(files["val"]), "--images", images]
    t_before = run([*pg, *ev, "--out", str(out / "eval_before")])
    convert = ["data", "convert", "--format", "coco-instances", str(files["train"])]
    run([*pg, *convert, "--images", images, "--task", "detect", "--out", str(out / "train.jsonl")])
    data = ["--data", str(out / "train.jsonl"), "--out", str(out / "run"), "--mode", args.mode]
    steps = ["--steps", str(args.steps), "--save-every", str(args.steps)]
    t_train = run(
        [*pg, "finetune", *data, *steps, "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    )
    tuned = ["--model", str(out / "run" / "model")] if args.mode == "full" else []
    tuned += ["--adapter", str(out / "run" / "adapter")] if args.mode == "lora" else []
    t_after = run([*pg, *ev, *tuned, "--out", str(out / "eval_after")])
    scores = {
        k: json.loads((out / f"eval_{k}" / "scores.json").read_text()) for k in ("before", "after")
    }
    result = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "make_only")},
        "mAP50": {k: scores[k]["mAP50"] for k in scores},
        "mAP": {k: scores[k]["mAP"] for k in scores},
        "seconds": {"eval_before": t_before, "finetune": t_train, "eval_after": t_after},
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
