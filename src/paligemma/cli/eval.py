"""`paligemma eval`: score a model on a benchmark's own files (see paligemma.eval)."""

from __future__ import annotations

import argparse
import json

from .common import add_model_flags, load_pipeline

EXAMPLE = """examples:
  paligemma eval --task coco-det --data instances_val2017.json --images val2017 --out runs/det
  paligemma eval --model DIR --task vqav2 --data questions.json --annotations answers.json \\
      --images val2014 --limit 1000 --batch-size 16 --out runs/vqav2
"""


def add_parser(sub) -> None:
    from ..eval.tasks import TASKS

    p = sub.add_parser(
        "eval",
        help="score a model on a benchmark (VQAv2, COCO captions / detection, RefCOCO, ...)",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--data", required=True, help="the dataset file or folder")
    p.add_argument("--annotations", help="the second file (VQAv2 answers, RefCOCO instances)")
    p.add_argument("--images", help="image folder (default: beside --data)")
    p.add_argument("--format", help="reader to use instead of the task's own (paligemma.data)")
    p.add_argument("--split", help="only this split (RefCOCO refs, Hugging Face data)")
    p.add_argument("--limit", type=int, help="only the first N examples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default="eval-out", help="output folder (default: eval-out)")
    p.add_argument("--prompt", help="prompt template instead of the task's; {q} = question")
    p.add_argument("--max-new-tokens", type=int, help="default: the task's")
    p.add_argument("--beams", type=int, help="beam count (default: the task's)")
    p.add_argument("--mask-vae", help="vae-oid.npz, if not in the checkpoint directory")
    p.add_argument(
        "--frames", type=int, default=16, help="frames sampled from each video (default: 16)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval import TASKS, evaluate_dataset

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    pipe, _ = load_pipeline(args)
    scores = evaluate_dataset(
        pipe,
        args.task,
        args.data,
        args.out,
        model=args.model or "embedded",
        annotations=args.annotations,
        images=args.images,
        fmt=args.format,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        prompt=args.prompt,
        frames=args.frames,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.beams,
        progress=not args.quiet,
    )
    headline = TASKS[args.task].headline
    shown = {k: v for k, v in scores.items() if not isinstance(v, dict)}
    print(json.dumps(shown))
    print(f"{args.task} {headline}: {scores.get(headline)}  (wrote {args.out}/scores.json)")
    return 0
