"""`paligemma detect | segment | demo`: boxes and masks, drawn or as JSON; the demo scene."""

from __future__ import annotations

import argparse
import json

import torch

from .common import MODEL_HELP, add_model_flags, load_pipeline


def add_parsers(sub) -> None:
    for name, what in (("detect", "boxes"), ("segment", "boxes and masks")):
        task = sub.add_parser(name, help=f"{what} of labelled things in an image")
        task.add_argument("--image", required=True, help="image file")
        task.add_argument(
            "--label", action="append", required=True, help="thing to find (repeatable)"
        )
        task.add_argument("--out", help="write a picture with the results drawn on the image")
        task.add_argument(
            "--json", action="store_true", help="print JSON (objects, COCO annotations)"
        )
        task.add_argument("--max-new-tokens", type=int, default=128)
        task.add_argument(
            "--convention",
            choices=["big_vision", "hf_demo"],
            default="big_vision",
            help="location-bin to pixel rule (default: big_vision's evaluator)",
        )
        task.add_argument("--mask-vae", help="vae-oid.npz, if not in the checkpoint directory")
        task.add_argument(
            "--image-id", type=int, default=0, help="image_id of the --json COCO results"
        )
        add_model_flags(task)
        task.set_defaults(run=run_task)

    demo = sub.add_parser("demo", help="caption, answer, detect and segment a generated scene")
    demo.add_argument("--model", help=MODEL_HELP)
    demo.add_argument("--out", default="demo.png", help="picture to write (default demo.png)")
    demo.add_argument("--seed", type=int, default=0, help="which scene (default 0)")
    demo.set_defaults(run=run_demo)


def run_task(args: argparse.Namespace) -> None:
    from ..processor import load_image
    from ..tasks.draw import draw_objects
    from ..tasks.objects import coco_categories

    image = load_image(args.image)
    pipe, load_s = load_pipeline(args)
    run = pipe.segment if args.command == "segment" else pipe.detect
    objects = run(image, args.label, max_new_tokens=args.max_new_tokens, convention=args.convention)
    labels = {x.strip(): i + 1 for i, x in enumerate(dict.fromkeys(args.label))}  # stable ids
    if args.out:
        draw_objects(image, objects).save(args.out)
    if args.json:
        record = {
            "text": objects.text,
            "width": objects.width,
            "height": objects.height,
            "objects": [o.to_dict() for o in objects],
            "coco": objects.to_coco(args.image_id, labels),
            "categories": coco_categories(labels),
            "load_s": round(load_s, 3),
        }
        print(json.dumps(record, ensure_ascii=False))
        return
    for obj in objects:
        where = "x0={} y0={} x1={} y1={}".format(*obj.box) if obj.box else "no box"
        state = "" if obj.valid else f"  [invalid: {obj.problem}]"
        area = f"  mask {int(obj.mask.sum())} px" if obj.mask is not None else ""
        print(f"{obj.label or '(no label)'}: {where}{area}{state}")
    if not objects:
        print(f"(no objects) raw answer: {objects.text!r}")


def run_demo(args: argparse.Namespace) -> None:
    from ..demo.run import run
    from ..pipeline import load

    run(load(args.model, dtype=torch.float32), args.out, args.seed)
