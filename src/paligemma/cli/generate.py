"""`paligemma generate`: answer prompts about images, one at a time, streamed, or a JSONL batch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import UsageError, add_model_flags, load_pipeline


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="answer a prompt about one or more images")
    gen.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    gen.add_argument("--video", help="a short video instead of --image (needs PyAV: [video])")
    gen.add_argument("--frames", type=int, help="with --video: frames sampled uniformly (16)")
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
    gen.add_argument(
        "--batch",
        help="JSONL file of {image, prompt} lines; exit code 3 when some lines failed",
    )
    gen.add_argument("--out", help="with --batch: JSONL output file (default: stdout)")
    gen.add_argument("--batch-size", type=int, default=8)
    add_model_flags(gen)
    gen.set_defaults(run=run)


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


def _record(result, load_s: float | None = None, batch_rows: int | None = None) -> dict[str, Any]:
    """A result as JSON. Timings are the engine's for the whole batch the row was decoded in:
    alone, they are the row's own (`timings`); in batch mode they are labelled as the batch's
    (`batch`: its rows, prefill, decode time and decoding steps), beside the row's own token
    count, so a 1-token answer never shows the batch's tokens per second as its own."""
    t = result.timings
    decode_s = t.get("decode_s", 0.0)
    timings = {
        "prefill_s": round(t.get("prefill_s", 0.0), 4),
        "decode_s": round(decode_s, 4),
    }
    record = {
        "text": result.text,
        "token_ids": result.token_ids,
        "num_tokens": len(result.token_ids),
        "finish_reason": result.finish_reason,
    }
    if batch_rows is not None:
        steps = t.get("steps", 0)
        rate = round(steps / decode_s, 2) if decode_s else None
        record["batch"] = {"rows": batch_rows, **timings, "steps": steps, "steps_per_s": rate}
        return record
    timings["decode_tokens_per_s"] = round(t.get("steps", 0) / decode_s, 2) if decode_s else None
    if load_s is not None:
        timings["load_s"] = round(load_s, 3)
    return record | {"timings": timings}


def run(args: argparse.Namespace) -> int | None:
    if args.batch:
        if args.image or args.prompt is not None or args.stream:
            raise UsageError(
                "--batch takes its images and prompts from the file (no --image/--prompt/--stream)"
            )
        return _generate_batch(args)
    if (not args.image and not args.video) or args.prompt is None:
        raise UsageError("generate needs --image and --prompt (or --video, or --batch FILE)")
    if args.stream and (args.json or args.beams > 1):
        raise UsageError("--stream prints text as it comes: not with --json or --beams")
    opts = _options(args)
    image = _images_or_frames(args)  # fail on a bad image or video before loading the model
    pipe, load_s = load_pipeline(args)
    if args.stream:
        for piece in pipe.stream(image, args.prompt, **opts):
            print(piece, end="", flush=True)
        print()
        return
    result = pipe.generate(image, args.prompt, **opts)
    print(json.dumps(_record(result, load_s), ensure_ascii=False) if args.json else result.text)


def _images_or_frames(args: argparse.Namespace) -> Any:
    """--image files (one, or a list), or --video's --frames frames sampled uniformly."""
    from ..processor import load_image
    from ..tasks.video import DEFAULT_FRAMES, read_frames

    if args.video and args.image:
        raise UsageError("give --image or --video, not both")
    if args.frames is not None and (not args.video or args.frames < 1):
        raise UsageError("--frames N (N >= 1) goes with --video")
    if args.video:
        try:
            return read_frames(args.video, args.frames or DEFAULT_FRAMES)
        except ImportError as e:  # PyAV missing: one line, not a traceback
            raise UsageError(str(e)) from None
    images = [load_image(p) for p in args.image]
    return images if len(images) > 1 else images[0]


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


BATCH_FAILED = 3  # exit code: the run finished, but some lines got an "error"


def _generate_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..processor import ImageError, load_image

    path = Path(args.batch)
    if not path.is_file():
        raise UsageError(f"no such batch file: {path}")
    jobs = _read_jobs(path)
    opts = _options(args)
    pipe, _ = load_pipeline(args)
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
                    images, prompts = [j["images"] for j in ready], [j["prompt"] for j in ready]
                    results = pipe.generate(images, prompts, batch_size=len(ready), **opts)
                    for job, result in zip(ready, results, strict=True):
                        job["result"] = _record(result, batch_rows=len(ready))
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
            f'paligemma: {failed} of {len(jobs)} lines failed (see their "error"); '
            f"exit code {BATCH_FAILED}",
            file=sys.stderr,
        )
        return BATCH_FAILED
    return 0
