"""`paligemma data convert`: a dataset in a format people have (COCO, VQAv2, RefCOCO, a folder
with a CSV/JSONL, Hugging Face / parquet) -> our fine-tuning JSONL."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    from ..data import FORMATS, TASKS

    data = sub.add_parser("data", help="dataset tools: convert a dataset to fine-tuning JSONL")
    commands = data.add_subparsers(dest="data_command", required=True)
    conv = commands.add_parser(
        "convert",
        help="write a dataset as fine-tuning JSONL",
        description="Read a dataset in one of the FORMATS and write the training examples of a "
        "task ({image, prefix, suffix} a line) to --out; image bytes (parquet / Hugging Face) go "
        "to a folder beside it.",
    )
    conv.add_argument("path", help="the dataset: annotation / questions / refs file, table, folder")
    conv.add_argument("--format", required=True, choices=FORMATS, help="how to read PATH")
    conv.add_argument("--out", required=True, help="the JSONL to write")
    conv.add_argument("--images", help="folder the image names are relative to (default: PATH's)")
    conv.add_argument(
        "--annotations",
        help="vqav2: the annotations JSON for the questions; refcoco: the COCO instances JSON",
    )
    conv.add_argument("--split", help="refcoco / hf: keep only this split")
    conv.add_argument(
        "--task",
        choices=TASKS,
        help="what to train (default: by format; detect for coco-instances and refcoco, caption "
        "for coco-captions, answer for vqav2 and question tables, prefix for prefix/suffix "
        "tables)",
    )
    conv.add_argument(
        "--negatives",
        action="store_true",
        help="detect / segment: also name categories absent from the image in the prompt",
    )
    conv.add_argument(
        "--max-objects",
        type=int,
        help="detect / segment: keep at most N objects per image (default: all)",
    )
    conv.add_argument(
        "--seed", type=int, default=0, help="seed of object order and negatives (default: 0)"
    )
    conv.add_argument(
        "--mask-vae", help="segment: the mask VQ-VAE (.npz / .safetensors; default: embedded)"
    )
    conv.add_argument(
        "--language", default="en", help="caption / answer: the prompt language (default: en)"
    )
    conv.add_argument("--limit", type=int, help="convert only the first N records (default: all)")
    conv.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    from ..data import read_dataset, to_examples
    from ..data.convert import default_task, write_examples

    dataset = read_dataset(
        args.format,
        args.path,
        images=args.images,
        annotations=args.annotations,
        split=args.split,
        limit=args.limit,
    )
    task = args.task or default_task(dataset)
    examples = to_examples(
        dataset,
        task,
        mask_vae=args.mask_vae,
        negatives=args.negatives,
        max_objects=args.max_objects,
        seed=args.seed,
        language=args.language,
        progress=True,
    )
    out = write_examples(examples, args.out)
    print(
        f"paligemma: {len(examples)} {task} examples from {len(dataset)} records -> {out}",
        file=sys.stderr,
    )
