"""`paligemma finetune`: one flag per TrainConfig field (with its choices and what it does),
then a resumable run. Only the flags given go to the run's settings, so that `--resume` takes
the others from the checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json

from .common import MODEL_HELP

HELP = {
    "eval_data": "held-out JSONL in the same format, scored by exact match (default: none)",
    "data_format": "how to read --data: our JSONL, or a dataset format converted on the way in "
    "(see paligemma data convert)",
    "images": "--data-format other than jsonl: the folder image names are relative to",
    "annotations": "--data-format vqav2: the annotations JSON; refcoco: the COCO instances JSON",
    "task": "--data-format other than jsonl: what to train (default: by format)",
    "mode": "what is trained: every weight, the decoder's attention, or LoRA adapters (over a "
    "float or, qlora, a quantised decoder)",
    "freeze_vision": "full mode: keep the image encoder fixed",
    "freeze_projector": "full mode: keep the image-to-text projector fixed",
    "lora_rank": "lora / qlora: rank of the adapters",
    "lora_alpha": "lora / qlora: scale numerator (the update is alpha / rank x B A)",
    "lora_dropout": "lora / qlora: dropout on the adapters' input",
    "lora_targets": "lora / qlora: leaf names of the linear layers to adapt",
    "lora_scope": "lora / qlora: which tower's layers to adapt",
    "quantize": "qlora only (ignored by the other modes): weight format of the frozen decoder",
    "steps": "optimiser steps in the whole run (may grow on --resume)",
    "batch_size": "examples per optimiser step",
    "grad_accum": "micro-batches per step (same result; memory ~ batch size / grad accum)",
    "lr": "peak learning rate",
    "weight_decay": "decoupled weight decay (adamw) or L2 (sgd)",
    "optimizer": "adamw, or sgd with momentum 0.9",
    "warmup_steps": "steps of linear warmup to --lr",
    "schedule": "after the warmup: cosine decay to 0 at --steps, or constant",
    "clip": "clip the gradients' global norm to this (0: no clipping)",
    "label_smoothing": "label smoothing of the cross-entropy, in [0, 1)",
    "loss_norm": "mean over all suffix tokens of a batch (token) or per example first (example)",
    "autocast": "run forward and backward in bfloat16 autocast",
    "checkpointing": "gradient checkpointing: less memory, more compute",
    "image_size": "fine-tune at this resolution (px; the position table is resampled; "
    "default: the checkpoint's)",
    "max_len": "refuse (or with --skip-bad leave out) examples with more text tokens than this "
    "(default: no limit)",
    "seed": "seed of the data order, initialisation and dropout",
    "save_every": "write a checkpoint every this many steps (and after the last)",
    "eval_every": "score --eval-data every this many steps (0: only at the end)",
    "eval_max_new_tokens": "longest answer generated when scoring --eval-data",
    "skip_bad": "leave out bad records (before the run, or when one fails during it) and say "
    "how many and why, instead of stopping",
    "merge": "lora / qlora: also save the base with the adapters merged (out/merged/)",
    "tensorboard": "also log every step's numbers to TensorBoard event files in this directory "
    "(needs pip install 'paligemma[tensorboard]')",
}
_OPTIONAL_TYPES = {
    "eval_data": str,
    "images": str,
    "annotations": str,
    "task": str,
    "image_size": int,
    "max_len": int,
    "clip": float,
    "tensorboard": str,
}


def add_parser(sub) -> None:
    tune = sub.add_parser(
        "finetune",
        help="fine-tune on a JSONL of {image, prefix, suffix}",
        description="Fine-tune on a JSONL of {image, prefix, suffix}. With --resume, the run's "
        "settings come from its checkpoint: give only those you change (--steps, ...).",
    )
    tune.add_argument("--model", help=MODEL_HELP)
    tune.add_argument(
        "--data", help="training JSONL or dataset (--data-format; on --resume: the checkpoint's)"
    )
    tune.add_argument(
        "--out", required=True, help="output directory (checkpoints, metrics, result)"
    )
    tune.add_argument(
        "--resume", action="store_true", help="continue the run in --out, with its settings"
    )
    _add_train_options(tune)
    tune.set_defaults(run=run)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (--lora-rank, --grad-accum, ...), with its choices and
    default. Options left out are absent from the parsed namespace (argparse.SUPPRESS)."""
    from ..data import FORMATS, TASKS
    from ..lora.layer import SCOPES
    from ..train import finetune as ft

    choices = {
        "mode": ft.MODES,
        "data_format": FORMATS,
        "task": TASKS,
        "lora_scope": tuple(SCOPES),
        "quantize": ft.QUANTIZE,
        "optimizer": ft.OPTIMIZERS,
        "schedule": ft.SCHEDULES,
        "loss_norm": ft.LOSS_NORMS,
    }
    for f in dataclasses.fields(ft.TrainConfig):
        if f.name in ("data", "out"):
            continue
        flag, text = "--" + f.name.replace("_", "-"), HELP.get(f.name, "")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
            continue
        shown = " ".join(f.default) if isinstance(f.default, tuple) else f.default
        text += "" if f.default is None else f" (default: {shown})"
        kw = {"help": text, "default": argparse.SUPPRESS}
        if isinstance(f.default, tuple):
            parser.add_argument(flag, nargs="+", **kw)
        else:
            kind = _OPTIONAL_TYPES.get(f.name, type(f.default))
            parser.add_argument(flag, type=kind, choices=choices.get(f.name), **kw)


def run(args: argparse.Namespace) -> None:
    from ..train.finetune import TrainConfig, train
    from ..train.resume import run_model, run_settings

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"out"}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if "lora_targets" in given:
        given["lora_targets"] = tuple(given["lora_targets"])
    cfg = run_settings(given, args.out, args.resume)
    result = train(run_model(args.model, args.out, args.resume), cfg, resume=args.resume)
    print(json.dumps(result))
