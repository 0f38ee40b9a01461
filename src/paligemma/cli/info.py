"""`paligemma info | convert`: describe a preset or checkpoint; re-save one in another layout."""

from __future__ import annotations

import argparse

import torch

from .common import DTYPES, QUANT_CHOICES, REFERENCES


def add_parsers(sub) -> None:
    info = sub.add_parser("info", help="describe a preset or checkpoint")
    info.add_argument("source", help="preset name, checkpoint directory, .npz or hub id")
    info.add_argument("--config", help="preset / config.json for an .npz")
    info.add_argument("--dtype", choices=list(DTYPES))
    info.add_argument("--list", action="store_true", help="also list every preset")
    info.set_defaults(run=run_info)

    conv = sub.add_parser("convert", help="load any layout, save in the transformers layout")
    conv.add_argument("source", help="checkpoint directory, .npz or hub id")
    conv.add_argument("out", help="output directory")
    conv.add_argument("--config", help="preset / config.json for an .npz")
    conv.add_argument("--dtype", choices=list(DTYPES))
    conv.add_argument(
        "--quantize",
        choices=QUANT_CHOICES,
        help="save a quantised checkpoint (quantise once, load fast)",
    )
    conv.add_argument(
        "--reference",
        choices=REFERENCES,
        default="transformers",
        help="the computation the saved config describes: transformers (default: the published "
        "architecture, Gemma 2's window and final soft-cap kept) or big_vision (neither)",
    )
    conv.set_defaults(run=run_convert)


def run_info(args: argparse.Namespace) -> None:
    from ..config import CONFIGS
    from ..model import PaliGemma

    if args.source in CONFIGS:
        cfg = CONFIGS[args.source]
        with torch.device("meta"):
            model = PaliGemma(cfg)
    else:
        from ..checkpoints.load import load_model

        model = load_model(args.source, dtype=DTYPES.get(args.dtype), config=args.config)
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


def run_convert(args: argparse.Namespace) -> None:
    from ..checkpoints.assets import copy_assets
    from ..checkpoints.load import load_model, resolve_source, save_model

    model = load_model(
        args.source,
        dtype=DTYPES.get(args.dtype),
        config=args.config,
        quantize=args.quantize,
        reference=args.reference,
    )
    save_model(model, args.out)
    copy_assets(resolve_source(args.source), args.out)
    layout = f"{args.quantize}, our layout" if args.quantize else "transformers layout"
    print(f"wrote {args.out} ({layout}, {model.dtype})")
