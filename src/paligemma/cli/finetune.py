"""`paligemma finetune`: one flag per TrainConfig field, then a resumable run."""

from __future__ import annotations

import argparse
import dataclasses
import json

from .common import MODEL_HELP


def add_parser(sub) -> None:
    tune = sub.add_parser("finetune", help="fine-tune on a JSONL of {image, prefix, suffix}")
    tune.add_argument("--model", help=MODEL_HELP)
    tune.add_argument("--data", required=True, help="training JSONL")
    tune.add_argument(
        "--out", required=True, help="output directory (checkpoints, metrics, result)"
    )
    tune.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_train_options(tune)
    tune.set_defaults(run=run)


_OPTIONAL_TYPES = {
    "eval_data": str,
    "image_size": int,
    "max_len": int,
    "clip": float,
    "tensorboard": str,
}


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (--lora-rank, --grad-accum, ...), defaults from it."""
    from ..train.finetune import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true")
        elif isinstance(f.default, tuple):
            parser.add_argument(
                flag, nargs="+", default=list(f.default), help=f"(default: {' '.join(f.default)})"
            )
        else:
            kind = _OPTIONAL_TYPES.get(f.name, type(f.default))
            parser.add_argument(flag, type=kind, default=f.default, help="default: %(default)s")


def run(args: argparse.Namespace) -> None:
    from ..train.finetune import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["lora_targets"] = tuple(values["lora_targets"])
    cfg = TrainConfig(**values)
    result = train(args.model, cfg, resume=args.resume)
    print(json.dumps(result))
