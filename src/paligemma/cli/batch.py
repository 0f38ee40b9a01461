"""`paligemma batch`: offline batch inference over a directory / JSONL / Parquet of images, in one
process or on Ray Data; Parquet parts in --output, one row per input, resumable."""

from __future__ import annotations

import argparse
import json
import sys

from .common import UsageError, add_model_flags, available_cores

TASKS = ["caption", "detect", "segment", "answer", "prompt"]  # as paligemma.batch.TASKS


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="answer a task for many images; Parquet out (local or Ray)")
    p.add_argument("--input", required=True, help="image directory, FILE.jsonl or FILE.parquet")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument(
        "--prompt",
        help="caption: language (default en); answer: the question; detect / segment: labels "
        "separated by ';'; prompt: the whole prompt (a record's own 'prompt' wins)",
    )
    p.add_argument("--output", required=True, help="directory for the Parquet parts")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=1, help="Ray actors (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument(
        "--threads-per-worker",
        type=int,
        help="torch CPU threads per worker (default: --threads or the cores here, / workers)",
    )
    p.add_argument("--num-gpus-per-worker", type=float, default=0, help="Ray GPUs per actor")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--max-new-tokens", type=int, help="default 32 (128 for detect / segment)")
    p.add_argument("--rows-per-part", type=int, default=256, help="rows per Parquet part")
    p.add_argument("--max-restarts", type=int, default=3, help="restarts of a crashed actor")
    add_model_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..batch import run_batch
    except ImportError as e:
        need = f"paligemma batch needs pyarrow ({e}): pip install 'paligemma[batch]'"
        raise RuntimeError(need) from None

    for flag in ("workers", "batch_size", "rows_per_part"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    workers = args.workers if args.engine == "ray" else 1
    total = args.threads or available_cores()  # --threads: all workers together
    threads = args.threads_per_worker or max(1, total // workers)
    load = {"source": args.model, "dtype": args.dtype, "device": args.device}
    load |= {"tokenizer": args.tokenizer, "config": args.config, "quantize": args.quantize}
    load |= {"adapter": args.adapter, "reference": args.reference}
    summary = run_batch(
        args.input,
        args.task,
        args.output,
        prompt=args.prompt,
        engine=args.engine,
        workers=workers,
        batch_size=args.batch_size,
        threads=threads,
        num_gpus_per_worker=args.num_gpus_per_worker,
        address=args.address,
        load={k: v for k, v in load.items() if v is not None},
        max_new_tokens=args.max_new_tokens,
        rows_per_part=args.rows_per_part,
        max_restarts=args.max_restarts,
        max_task_retries=args.max_restarts,
    )
    print(json.dumps(summary), file=sys.stderr)
    return 0
