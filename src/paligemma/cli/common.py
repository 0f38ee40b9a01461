"""What every command shares: the model flags, loading a pipeline from them, the usage error."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

MODEL_HELP = (
    "checkpoint directory, .npz or hub id; 'embedded' (the default) is the demo model in the "
    "package"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANT_CHOICES = ["int8", "int4"]
REFERENCES = ["transformers", "big_vision"]
REFERENCE_HELP = (
    "whose PaliGemma 2 computation to reproduce: transformers (sliding window, final soft-cap) "
    "or big_vision (neither); default: big_vision for an .npz, transformers otherwise"
)


class UsageError(ValueError):
    """A flag combination that cannot work; printed as one `paligemma: error:` line."""


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--model --dtype --device --tokenizer --config --quantize --adapter --reference."""
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        help="default: float32 for the embedded model, bfloat16 for others",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: GPU if present)")
    parser.add_argument(
        "--tokenizer", help="tokenizer.model / tokenizer.json, if not in the checkpoint"
    )
    parser.add_argument("--config", help="preset / config.json for an .npz")
    parser.add_argument("--quantize", choices=QUANT_CHOICES, help="weight-only quantised decoder")
    parser.add_argument(
        "--adapter", help="LoRA adapter directory (ours or peft's) on top of the model"
    )
    parser.add_argument("--reference", choices=REFERENCES, help=REFERENCE_HELP)


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
        adapter=getattr(args, "adapter", None),
        reference=getattr(args, "reference", None),
    )
    return pipe, time.perf_counter() - start


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPU cores this process may really use: its CPU affinity, capped by a cgroup CPU quota
    (containers often see all the host's cores but may only use a few)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:  # cgroup v2: "max 100000" (no quota) or "<quota> <period>"
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads: `threads` if given; else OMP_NUM_THREADS when set (torch reads
    it itself); else the cores available (not the host's count, which oversubscribes a shared or
    CPU-limited machine). Returns the number in force."""
    import torch

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    torch.set_num_threads(threads or available_cores())
    return torch.get_num_threads()
