"""Command line: `paligemma info SRC` and `paligemma convert SRC OUT`."""

from __future__ import annotations

import argparse
import sys

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _info(args: argparse.Namespace) -> None:
    from .config import CONFIGS
    from .model import PaliGemma

    if args.source in CONFIGS:
        cfg = CONFIGS[args.source]
        with torch.device("meta"):
            model = PaliGemma(cfg)
    else:
        from .checkpoint import load_model

        model = load_model(args.source, dtype=_DTYPES.get(args.dtype), config=args.config)
        cfg = model.cfg
    params = sum(p.numel() for p in model.parameters())
    t, v = cfg.text, cfg.vision
    print(f"PaliGemma {'2' if cfg.is_v2 else '1'}: {params:,} parameters")
    print(f"  image      {cfg.image_size}px, patch {v.patch_size} -> {cfg.num_image_tokens} tokens")
    print(
        f"  vision     SigLIP width {v.width}, depth {v.depth}, heads {v.num_heads}, "
        f"mlp {v.mlp_dim}"
    )
    print(
        f"  decoder    Gemma{' 2' if cfg.is_v2 else ''} width {t.width}, depth {t.depth}, "
        f"heads {t.num_heads}/{t.num_kv_heads} kv, head_dim {t.head_dim}, mlp {t.mlp_dim}, "
        f"vocab {t.vocab_size}"
    )
    if cfg.is_v2:
        print(
            f"  gemma 2    attn softcap {t.attn_softcap}, final softcap {t.final_softcap}, "
            f"sliding window {t.sliding_window}, query scale {t.query_scale:.6g}"
        )
    if args.list:
        print("presets: " + ", ".join(CONFIGS))


def _convert(args: argparse.Namespace) -> None:
    from .checkpoint import load_model, save_model

    model = load_model(args.source, dtype=_DTYPES.get(args.dtype), config=args.config)
    save_model(model, args.out)
    print(f"wrote {args.out} (transformers layout, {model.dtype})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paligemma", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a preset or checkpoint")
    info.add_argument("source", help="preset name, checkpoint directory, .npz or hub id")
    info.add_argument("--config", help="preset / config.json for an .npz")
    info.add_argument("--dtype", choices=list(_DTYPES))
    info.add_argument("--list", action="store_true", help="also list every preset")
    info.set_defaults(run=_info)
    conv = sub.add_parser("convert", help="load any layout, save in the transformers layout")
    conv.add_argument("source", help="checkpoint directory, .npz or hub id")
    conv.add_argument("out", help="output directory")
    conv.add_argument("--config", help="preset / config.json for an .npz")
    conv.add_argument("--dtype", choices=list(_DTYPES))
    conv.set_defaults(run=_convert)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as e:  # ConfigError, CheckpointError and file errors
        print(f"paligemma: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
