"""What every command shares: the model flags, loading a pipeline from them, the usage error."""

from __future__ import annotations

import argparse
import time

import torch

MODEL_HELP = "checkpoint directory, .npz or hub id (default: the embedded demo model)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANT_CHOICES = ["int8", "int4"]


class UsageError(ValueError):
    """A flag combination that cannot work; printed as one `paligemma: error:` line."""


def add_model_flags(parser: argparse.ArgumentParser, described: bool = True) -> None:
    """--model --dtype --device --tokenizer --config --quantize (help texts when `described`)."""

    def text(s: str) -> str | None:
        return s if described else None

    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help=text("default: bfloat16 (GPU if present, else CPU)")
    )
    parser.add_argument("--device", help=text("cpu, cuda, cuda:1, ... (default: GPU if present)"))
    parser.add_argument(
        "--tokenizer", help=text("tokenizer.model / tokenizer.json, if not in the checkpoint")
    )
    parser.add_argument("--config", help=text("preset / config.json for an .npz"))
    parser.add_argument(
        "--quantize", choices=QUANT_CHOICES, help=text("weight-only quantised decoder")
    )


def load_pipeline(args: argparse.Namespace):
    """The pipeline the model flags name, and the seconds it took to load."""
    from ..pipeline import load

    start = time.perf_counter()
    pipe = load(
        args.model,
        dtype=DTYPES.get(args.dtype),
        device=args.device,
        tokenizer=args.tokenizer,
        config=args.config,
        mask_vae=getattr(args, "mask_vae", None),
        quantize=getattr(args, "quantize", None),
    )
    return pipe, time.perf_counter() - start
