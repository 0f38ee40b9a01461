"""Command line: `paligemma demo | generate | detect | segment | finetune | serve | info |
convert`. Each command is a thin call into the API;
every expected failure (bad image, bad checkpoint, bad option) is one line on stderr, exit 1."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

MODEL_HELP = "checkpoint directory, .npz or hub id (default: the embedded demo model)"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# generate


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "num_beams": args.beams,
        "repetition_penalty": args.repetition_penalty,
        "stop": args.stop,
    }
    if args.sample:
        opts |= {
            "do_sample": True,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "seed": args.seed,
        }
    elif args.seed is not None or args.temperature != 1.0 or args.top_p != 1.0 or args.top_k:
        raise UsageError("--temperature/--top-p/--top-k/--seed need --sample")
    return opts


def _load(args: argparse.Namespace):
    from ..pipeline import load

    start = time.perf_counter()
    pipe = load(
        args.model,
        dtype=_DTYPES.get(args.dtype),
        device=args.device,
        tokenizer=args.tokenizer,
        config=args.config,
        mask_vae=getattr(args, "mask_vae", None),
        quantize=getattr(args, "quantize", None),
    )
    return pipe, time.perf_counter() - start


def _record(result, load_s: float | None = None) -> dict[str, Any]:
    t = result.timings
    n = len(result.token_ids)
    timings = {
        "prefill_s": round(t.get("prefill_s", 0.0), 4),
        "decode_s": round(t.get("decode_s", 0.0), 4),
        "decode_tokens_per_s": round(t.get("steps", 0) / t["decode_s"], 2)
        if t.get("decode_s")
        else None,
    }
    if load_s is not None:
        timings["load_s"] = round(load_s, 3)
    return {
        "text": result.text,
        "token_ids": result.token_ids,
        "num_tokens": n,
        "finish_reason": result.finish_reason,
        "timings": timings,
    }


def _generate(args: argparse.Namespace) -> None:
    if args.batch:
        if args.image or args.prompt is not None or args.stream:
            raise UsageError(
                "--batch takes its images and prompts from the file (no --image/--prompt/--stream)"
            )
        return _generate_batch(args)
    if not args.image or args.prompt is None:
        raise UsageError("generate needs --image and --prompt (or --batch FILE.jsonl)")
    if args.stream and (args.json or args.beams > 1):
        raise UsageError("--stream prints text as it comes: not with --json or --beams")
    opts = _options(args)
    from ..processor import load_image

    images = [load_image(p) for p in args.image]  # fail on a bad image before loading the model
    pipe, load_s = _load(args)
    image = images if len(images) > 1 else images[0]
    if args.stream:
        for piece in pipe.stream(image, args.prompt, **opts):
            print(piece, end="", flush=True)
        print()
        return
    result = pipe.generate(image, args.prompt, **opts)
    print(json.dumps(_record(result, load_s), ensure_ascii=False) if args.json else result.text)


def _read_jobs(path: Path) -> list[dict[str, Any]]:
    """One job per JSONL line: {"image": path or [paths], "prompt": str}; relative paths are
    relative to the file. A bad line becomes a job with an "error" and is reported, not fatal."""
    jobs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        job: dict[str, Any] = {"line": n}
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise ValueError('expected {"image": ..., "prompt": "..."}')
            images = rec.get("image")
            images = [images] if isinstance(images, str) else images
            if not images or not all(isinstance(i, str) for i in images):
                raise ValueError('"image" must be a path or a list of paths')
            job |= {
                "image": rec["image"],
                "prompt": rec["prompt"],
                "paths": [path.parent / i for i in images],
            }
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            job["error"] = f"line {n}: {e}"
        jobs.append(job)
    return jobs


def _generate_batch(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ..processor import ImageError, load_image

    path = Path(args.batch)
    if not path.is_file():
        raise UsageError(f"no such batch file: {path}")
    jobs = _read_jobs(path)
    opts = _options(args)
    pipe, _ = _load(args)
    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115
    try:
        with tqdm(total=len(jobs), desc="generate", unit="prompt", file=sys.stderr) as bar:
            for i in range(0, len(jobs), args.batch_size):
                chunk = jobs[i : i + args.batch_size]
                ready = []
                for job in chunk:
                    if "error" in job:
                        continue
                    try:
                        job["images"] = [load_image(p) for p in job["paths"]]
                        ready.append(job)
                    except ImageError as e:
                        job["error"] = f"line {job['line']}: {e}"
                if ready:
                    results = pipe.generate(
                        [j["images"] for j in ready], [j["prompt"] for j in ready], **opts
                    )
                    for job, result in zip(ready, results, strict=True):
                        job["result"] = _record(result)
                for job in chunk:  # in input order, written as each batch completes
                    rec = {
                        "line": job["line"],
                        "image": job.get("image"),
                        "prompt": job.get("prompt"),
                    }
                    rec |= {"error": job["error"]} if "error" in job else job["result"]
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    job.pop("images", None)
                out.flush()
                bar.update(len(chunk))
    finally:
        if out is not sys.stdout:
            out.close()
    failed = sum("error" in j for j in jobs)
    if failed:
        print(
            f'paligemma: {failed} of {len(jobs)} lines failed (see their "error")', file=sys.stderr
        )


# ---------------------------------------------------------------------------------------------
# detect, segment


def _task(args: argparse.Namespace) -> None:
    from ..processor import load_image
    from ..tasks.draw import draw_objects

    image = load_image(args.image)
    pipe, load_s = _load(args)
    run = pipe.segment if args.command == "segment" else pipe.detect
    objects = run(image, args.label, max_new_tokens=args.max_new_tokens, convention=args.convention)
    if args.out:
        draw_objects(image, objects).save(args.out)
    if args.json:
        record = {
            "text": objects.text,
            "width": objects.width,
            "height": objects.height,
            "objects": [o.to_dict() for o in objects],
            "coco": objects.to_coco(),
            "load_s": round(load_s, 3),
        }
        print(json.dumps(record, ensure_ascii=False))
        return
    for obj in objects:
        where = "x0={} y0={} x1={} y1={}".format(*obj.box) if obj.box else "no box"
        state = "" if obj.valid else f"  [invalid: {obj.problem}]"
        area = f"  mask {int(obj.mask.sum())} px" if obj.mask is not None else ""
        print(f"{obj.label or '(no label)'}: {where}{area}{state}")
    if not objects:
        print(f"(no objects) raw answer: {objects.text!r}")


def _demo(args: argparse.Namespace) -> None:
    from ..demo.run import run
    from ..pipeline import load

    run(load(args.model, dtype=torch.float32), args.out, args.seed)


# `paligemma serve` flag -> server.Settings field. The flags default to None, so the limits'
# defaults live in one place, Settings (imported only by `serve`: it pulls in FastAPI).
_SERVE_SETTINGS = {
    "api_key": "api_key",
    "max_batch": "max_batch",
    "max_queue": "max_queue",
    "timeout": "timeout_s",
    "max_tokens": "max_tokens",
    "allow_dir": "allow_dir",
    "allow_remote_images": "allow_remote",
}


def _serve_settings(args: argparse.Namespace):
    from ..serve import Settings

    given = {field: getattr(args, flag) for flag, field in _SERVE_SETTINGS.items()}
    return Settings(**{k: v for k, v in given.items() if v is not None})


def _serve(args: argparse.Namespace) -> None:
    from ..serve import serve

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    settings = _serve_settings(args)
    serve(args.model, args.host, args.port, settings, _DTYPES.get(args.dtype), args.quantize)


# ---------------------------------------------------------------------------------------------
# finetune

_OPTIONAL_TYPES = {"eval_data": str, "image_size": int, "max_len": int, "clip": float}


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


def _finetune(args: argparse.Namespace) -> None:
    from ..train.finetune import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["lora_targets"] = tuple(values["lora_targets"])
    cfg = TrainConfig(**values)
    result = train(args.model, cfg, resume=args.resume)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# info, convert


def _info(args: argparse.Namespace) -> None:
    from ..config import CONFIGS
    from ..model import PaliGemma

    if args.source in CONFIGS:
        cfg = CONFIGS[args.source]
        with torch.device("meta"):
            model = PaliGemma(cfg)
    else:
        from ..checkpoints.load import load_model

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
    from ..checkpoints.load import load_model, resolve_source, save_model
    from ..pipeline import copy_assets

    model = load_model(
        args.source, dtype=_DTYPES.get(args.dtype), config=args.config, quantize=args.quantize
    )
    save_model(model, args.out)
    copy_assets(resolve_source(args.source), args.out)
    layout = f"{args.quantize}, our layout" if args.quantize else "transformers layout"
    print(f"wrote {args.out} ({layout}, {model.dtype})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paligemma", description="PaliGemma 1 and 2 in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer a prompt about one or more images")
    gen.add_argument("--model", help=MODEL_HELP)
    gen.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    gen.add_argument("--prompt", help='e.g. "caption en", "answer en what is this?"')
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--beams", type=int, default=1, help="beam search with K beams")
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--json", action="store_true", help="print JSON: text, token ids, timings")
    gen.add_argument("--stream", action="store_true", help="print text as it is generated")
    gen.add_argument("--batch", help="JSONL file of {image, prompt} lines")
    gen.add_argument("--out", help="with --batch: JSONL output file (default: stdout)")
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument(
        "--dtype", choices=list(_DTYPES), help="default: bfloat16 (GPU if present, else CPU)"
    )
    gen.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: GPU if present)")
    gen.add_argument(
        "--tokenizer", help="tokenizer.model / tokenizer.json, if not in the checkpoint"
    )
    gen.add_argument("--config", help="preset / config.json for an .npz")
    gen.add_argument("--quantize", choices=["int8", "int4"], help="weight-only quantised decoder")
    gen.set_defaults(run=_generate)

    for name, what in (("detect", "boxes"), ("segment", "boxes and masks")):
        task = sub.add_parser(name, help=f"{what} of labelled things in an image")
        task.add_argument("--model", help=MODEL_HELP)
        task.add_argument("--image", required=True, help="image file")
        task.add_argument(
            "--label", action="append", required=True, help="thing to find (repeatable)"
        )
        task.add_argument("--out", help="write a picture with the results drawn on the image")
        task.add_argument(
            "--json", action="store_true", help="print JSON (objects, COCO annotations)"
        )
        task.add_argument("--max-new-tokens", type=int, default=128)
        task.add_argument(
            "--convention",
            choices=["big_vision", "hf_demo"],
            default="big_vision",
            help="location-bin to pixel rule (default: big_vision's evaluator)",
        )
        task.add_argument("--mask-vae", help="vae-oid.npz, if not in the checkpoint directory")
        task.add_argument("--dtype", choices=list(_DTYPES))
        task.add_argument("--device")
        task.add_argument("--tokenizer")
        task.add_argument("--config")
        task.add_argument("--quantize", choices=["int8", "int4"])
        task.set_defaults(run=_task)

    tune = sub.add_parser("finetune", help="fine-tune on a JSONL of {image, prefix, suffix}")
    tune.add_argument("--model", required=True, help="checkpoint directory, .npz or hub id")
    tune.add_argument("--data", required=True, help="training JSONL")
    tune.add_argument(
        "--out", required=True, help="output directory (checkpoints, metrics, result)"
    )
    tune.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_train_options(tune)
    tune.set_defaults(run=_finetune)

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
    conv.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        help="save a quantised checkpoint (quantise once, load fast)",
    )
    conv.set_defaults(run=_convert)

    demo = sub.add_parser("demo", help="caption, answer, detect and segment a generated scene")
    demo.add_argument("--model", help=MODEL_HELP)
    demo.add_argument("--out", default="demo.png", help="picture to write (default demo.png)")
    demo.add_argument("--seed", type=int, default=0, help="which scene (default 0)")
    demo.set_defaults(run=_demo)

    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web page")
    srv.add_argument("--model", help=MODEL_HELP)
    srv.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", help="require Authorization: Bearer KEY (all but /health)")
    srv.add_argument("--max-batch", type=int, help="requests decoded together (default 16)")
    srv.add_argument("--max-queue", type=int, help="waiting requests before 503 (default 64)")
    srv.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    srv.add_argument("--max-tokens", type=int, help="most tokens a request may ask (default 512)")
    srv.add_argument("--allow-dir", help="serve file:// image URLs from this directory only")
    srv.add_argument(
        "--allow-remote-images", action="store_true", default=None, help="fetch http(s) images"
    )
    srv.add_argument("--dtype", choices=list(_DTYPES))
    srv.add_argument("--quantize", choices=["int8", "int4"])
    srv.set_defaults(run=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, RuntimeError) as e:  # our errors are ValueErrors; files: OSError
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"paligemma: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("paligemma: interrupted", file=sys.stderr)
        return 130
    return 0
