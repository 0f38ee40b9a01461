"""`paligemma demo`: what a newcomer runs first. It draws a synthetic scene, then captions it,
answers questions, detects and segments its shapes with the embedded model (or any model), and
writes a picture: the scene, the detections, and the segmentation side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..tasks.draw import draw_objects
from . import synthetic
from .evaluate import mask_iou


def run(pipe, out: str | Path | None = "demo.png", seed: int = 0) -> dict[str, Any]:
    """Run the four tasks on the scene of `seed`; print each prompt and answer; write `out`."""
    rng = np.random.default_rng([seed, 2024])
    scene = synthetic.make_scene(rng, num_things=2, size=(224, 224), antialias=True)
    image, things = scene.image, scene.things
    print(f"scene (seed {seed}): {image.width}x{image.height}, truth: {synthetic.caption(scene)}")
    shapes = list(dict.fromkeys(t.shape for t in things))
    prompts = ["caption en", "answer en how many shapes are there?"]
    prompts.append(f"answer en what color is the {shapes[0]}?")
    answers = pipe.generate([image] * len(prompts), prompts, max_new_tokens=32)
    record: dict[str, Any] = {"truth": synthetic.caption(scene)}
    for prompt, answer in zip(prompts, answers, strict=True):
        print(f"{prompt:<40} -> {answer.text}")
        record[prompt] = answer.text

    detected = pipe.detect(image, shapes)
    boxes = ", ".join(f"{o.label} {list(o.box)}" for o in detected if o.valid) or "nothing"
    print(f"{'detect ' + ' ; '.join(shapes):<40} -> {boxes}")
    record["detect"] = [o.to_dict() for o in detected]

    target = things[0]
    segmented = pipe.segment(image, [target.shape]) if pipe.mask_vae is not None else []
    masks = [o for o in segmented if o.valid and o.mask is not None]
    if masks:
        best = max(mask_iou(o.mask, target.mask) for o in masks)
        summary = f"{len(masks)} mask(s), {int(masks[0].mask.sum())} px, IoU with truth {best:.2f}"
    else:
        summary = "no mask"
    print(f"{'segment ' + target.shape:<40} -> {summary}")
    record["segment"] = [o.to_dict() for o in segmented]

    if out is not None:
        panels = [image, draw_objects(image, detected), draw_objects(image, segmented)]
        sheet = Image.new("RGB", (sum(p.width for p in panels) + 20, image.height + 24), "white")
        draw = ImageDraw.Draw(sheet)
        x = 0
        for title, panel in zip(("scene", "detect", "segment"), panels, strict=True):
            sheet.paste(panel, (x, 24))
            draw.text((x + 4, 6), title, fill=(0, 0, 0))
            x += panel.width + 10
        sheet.save(out)
        print(f"wrote {out}")
    return record
