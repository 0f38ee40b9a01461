"""Command line: `paligemma demo | generate | detect | segment | finetune | data | serve |
info | convert | eval | batch`. Each command is a module here (its flags and a thin call into
the API); every expected failure (bad image, bad checkpoint, bad option) is one line on stderr,
exit 1."""

from __future__ import annotations

import argparse
import sys

from . import batch, data, finetune, generate, info, serve, tasks
from . import eval as eval_cmd
from .common import set_threads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paligemma", description="PaliGemma 1 and 2 in PyTorch")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: the cores this process may use, from its CPU "
        "affinity and cgroup quota)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    tasks.add_parsers(sub)
    finetune.add_parser(sub)
    data.add_parser(sub)
    info.add_parsers(sub)
    serve.add_parser(sub)
    eval_cmd.add_parser(sub)
    batch.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        set_threads(args.threads)
        code = args.run(args)
    except (ValueError, OSError, RuntimeError) as e:  # our errors are ValueErrors; files: OSError
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"paligemma: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("paligemma: interrupted", file=sys.stderr)
        return 130
    return code or 0
