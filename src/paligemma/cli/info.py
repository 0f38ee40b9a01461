"""`paligemma info | convert`: describe a preset or checkpoint; re-save one in another layout."""

from __future__ import annotations

import argparse

import torch

from .common import DTYPES, QUANT_CHOICES, REFERENCES, UsageError


def add_parsers(sub) -> None:
    info = sub.add_parser("info", help="describe a preset or checkpoint")
    info.add_argument("source", nargs="?", help="preset name, checkpoint directory, .npz or hub id")
    info.add_argument("--config", help="preset / config.json for an .npz")
    info.add_argument("--dtype", choices=list(DTYPES))
    info.add_argument(
        "--list", action="store_true", help="list every preset (parameters, resolution, decoder)"
    )
    info.add_argument(
        "--kernels",
        action="store_true",
        help="this machine: CPU features, our CPU kernels (built? why not?) and the path each "
        "operation of CPU inference takes (int8 / int4 decoding by rows, prefill, attention)",
    )
    info.add_argument("--json", action="store_true", help="with --kernels: print it as JSON")
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


def _parameters(cfg) -> int:
    """The architecture's parameter count (a float model built on the meta device), whatever
    form the weights are stored in: packed int4 codes would count half their values."""
    from ..model import PaliGemma

    with torch.device("meta"):
        return sum(p.numel() for p in PaliGemma(cfg).parameters())


def _weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def run_info(args: argparse.Namespace) -> None:
    from ..config import CONFIGS

    if args.json and not args.kernels:
        raise UsageError("--json goes with --kernels")
    if args.kernels:
        _kernels(args.json)
    if args.list:
        _list_presets(CONFIGS)
    if args.source is None and (args.list or args.kernels):
        return
    if args.source is None:
        raise UsageError("info needs a preset name, checkpoint directory, .npz or hub id")
    model = None
    if args.source in CONFIGS:
        cfg = CONFIGS[args.source]
    else:
        from ..checkpoints.load import load_model
        from ..pipeline import embedded_source

        source = embedded_source(args.source)
        model = load_model(source, dtype=DTYPES.get(args.dtype), config=args.config)
        cfg = model.cfg
    _describe(cfg)
    if model is not None:
        from ..quant.store import LOOKUP, describe

        spec = describe(model)
        form = "float" if spec is None else f"quantised {spec['mode']}"
        if spec is not None:
            layers = [m for m in spec["modules"] if m != LOOKUP]
            form += f" ({len(layers)} layers"
            form += f", groups of {spec['group']}" if spec["group"] else ""
            form += ", embeddings read from the head's codes)" if LOOKUP in spec["modules"] else ")"
        print(f"  weights    {form}, {model.dtype}, {_weight_bytes(model) / 2**20:,.1f} MiB")


def _kernels(as_json: bool) -> None:
    """`--kernels`: quant.report's answers for this machine, as text or JSON."""
    import json

    from ..quant.report import lines, report

    r = report()
    print(json.dumps(r, indent=2) if as_json else "\n".join(lines(r)))


def _describe(cfg) -> None:
    t, v = cfg.text, cfg.vision
    print(f"PaliGemma {'2' if cfg.is_v2 else '1'}: {_parameters(cfg):,} parameters")
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


def _list_presets(configs) -> None:
    """One line per preset: family, parameters, resolution and image tokens, decoder size."""
    print(f"{'preset':<22} {'params':>15}  {'image':>6} {'tokens':>6}  decoder")
    for name, cfg in configs.items():
        t = cfg.text
        decoder = f"Gemma{' 2' if cfg.is_v2 else ''} {t.depth} x {t.width}"
        print(
            f"{name:<22} {_parameters(cfg):>15,}  {cfg.image_size:>4}px {cfg.num_image_tokens:>6}"
            f"  {decoder}"
        )


def run_convert(args: argparse.Namespace) -> None:
    from ..checkpoints.assets import copy_assets
    from ..checkpoints.load import load_model, resolve_source, save_model
    from ..pipeline import embedded_source

    source = embedded_source(args.source)
    model = load_model(
        source,
        dtype=DTYPES.get(args.dtype),
        config=args.config,
        quantize=args.quantize,
        reference=args.reference,
    )
    save_model(model, args.out)
    copy_assets(resolve_source(source), args.out)
    layout = f"{args.quantize}, our layout" if args.quantize else "transformers layout"
    print(f"wrote {args.out} ({layout}, {model.dtype})")
