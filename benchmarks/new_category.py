"""A detection dataset with a category the embedded model has never seen (a "diamond": a square
turned 45 degrees, drawn into the held-out style scenes beside circles, squares and triangles),
in COCO instances format, for the README's `data convert -> finetune -> eval` example:

    python benchmarks/new_category.py DIR [--train 400] [--test 50]

writes DIR/train.json, DIR/test.json and DIR/images/. Every thing is annotated with its shape
name; the test images' entries list their labels ("labels": the prompt `paligemma eval` uses).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from paligemma.demo import synthetic

SEED = 31_337  # neither the training seeds nor the held-out EVAL_SEED
SHAPES = ("circle", "square", "triangle", "diamond")


def add_diamond(rng: np.random.Generator, scene: synthetic.Scene) -> tuple | None:
    """Draw a diamond where it overlaps no thing; (box, mask) or None when there is no room."""
    w, h = scene.size
    for _ in range(50):
        side = rng.uniform(0.15, 0.4) * min(w, h)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = (x0, y0, x0 + side, y0 + side)
        if all(
            box[2] + 2 < t.box[0] or t.box[2] + 2 < box[0] or box[3] + 2 < t.box[1]
            or t.box[3] + 2 < box[1]
            for t in scene.things
        ):  # fmt: skip
            break
    else:
        return None
    cx, cy, r = x0 + side / 2, y0 + side / 2, side / 2
    colour = synthetic.COLOUR_NAMES[int(rng.integers(len(synthetic.COLOUR_NAMES)))]
    layer = Image.new("L", scene.size, 0)
    ImageDraw.Draw(layer).polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], 255)
    mask = np.asarray(layer) >= 128
    ImageDraw.Draw(scene.image).bitmap((0, 0), layer, fill=tuple(synthetic.COLOURS[colour]))
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), mask


def write_split(directory: Path, name: str, n: int, rng: np.random.Generator) -> Path:
    images, annotations = [], []
    while len(images) < n:
        scene = synthetic.make_scene(rng, num_things=int(rng.integers(1, 3)))
        diamond = add_diamond(rng, scene)
        if diamond is None:
            continue
        image_id = len(images) + 1
        file = f"images/{name}_{image_id:05d}.png"
        scene.image.save(directory / file)
        things = [(t.shape, t.box) for t in scene.things] + [("diamond", diamond[0])]
        labels = sorted({s for s, _ in things})
        w, h = scene.size
        images.append({"id": image_id, "file_name": file, "width": w, "height": h})
        images[-1]["labels"] = labels
        for shape, (x0, y0, x1, y1) in things:
            ann = {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0}
            ann |= {"category_id": SHAPES.index(shape) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0]}
            annotations.append(ann | {"area": (x1 - x0) * (y1 - y0)})
    categories = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    path = directory / f"{name}.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("directory")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=50)
    args = p.parse_args()
    directory = Path(args.directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for name, n in (("train", args.train), ("test", args.test)):
        print(write_split(directory, name, n, rng))


if __name__ == "__main__":
    main()
