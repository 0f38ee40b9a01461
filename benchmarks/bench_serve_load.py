"""Load test of the server's schedulers: open-loop Poisson arrivals at several rates, mixed
answer lengths (4-64 tokens), the static batcher and the engine (continuous batching) side by
side in one run, on the embedded model and on a mid-size random model (448 px).

    python benchmarks/bench_serve_load.py [--requests 48] [--rates 0.5,1,2,4] [--quick]

The schedulers are driven in process (no HTTP: the numbers are the scheduling, not the
network). Rates are multiples of the model's capacity one request at a time (1 / the mean
time a request takes alone). For each model, scheduler and rate it reports throughput (output
tokens/s), p50/p99 time to first token and p50/p99 time per output token, and checks that
every answer equals the same request's answer alone (greedy) or with its seed (sampled).
Then, at 448 px, the time to first token of a second question about a cached image against
the first. Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import paligemma
from paligemma.config import GemmaConfig, PaliGemmaConfig, SiglipConfig
from paligemma.demo import synthetic
from paligemma.demo.init import new_model
from paligemma.pipeline import Pipeline
from paligemma.processor import ImageTransform, Processor
from paligemma.quant.matvec import install_matvec_
from paligemma.serve.batcher import Job
from paligemma.serve.engine import Engine
from paligemma.serve.static_batcher import Batcher

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["caption en", "answer en how many shapes are there?", "detect circle ; square"]


def mid_model(width: int, depth: int, mlp: int, vocab: int, dtype: torch.dtype) -> Pipeline:
    """A random PaliGemma at 448 px (1024 image tokens) with the embedded tokenizer and the
    published checkpoints' vocabulary size (257,216 rows: the head's cost per decoded token is
    the real one; ids past the tokenizer's are never picked, like the padding rows)."""
    embedded = paligemma.load()
    cfg = PaliGemmaConfig(
        vision=SiglipConfig(width=384, depth=6, num_heads=6, mlp_dim=1536, patch_size=14),
        text=GemmaConfig(
            width=width,
            depth=depth,
            num_heads=width // 128,
            num_kv_heads=1,
            head_dim=128,
            mlp_dim=mlp,
            vocab_size=max(vocab, embedded.model.cfg.text.vocab_size),
        ),
        image_size=448,
        image_token_id=embedded.model.cfg.image_token_id,
    )
    model = new_model(cfg, seed=0).eval()
    with torch.no_grad():  # std 0.12, not 0.02: greedy answers then vary with image and prompt
        for m in model.decoder.modules():  # (at 0.02 every answer repeats one token), so
            if isinstance(m, torch.nn.Linear):  # "equal to the answer alone" tests something
                m.weight.mul_(6)
    model = install_matvec_(model.to(dtype))  # single rows through torch.mv, as load_model does
    tok = embedded.tokenizer
    return Pipeline(model, Processor(tok, ImageTransform(448), cfg.num_image_tokens))


def make_requests(n: int, sampled_every: int = 4, seed: int = 0) -> list[dict]:
    """Mixed requests: distinct scenes (a few asked twice), max_tokens 4..64, one in
    `sampled_every` sampled with its own seed."""
    rng = np.random.default_rng([seed, 23])
    scenes = [synthetic.make_scene(rng).image for _ in range(max(1, n * 3 // 4))]
    out = []
    for i in range(n):
        sampled = i % sampled_every == sampled_every - 1
        out.append(
            {
                "image": scenes[int(rng.integers(len(scenes)))],
                "prompt": PROMPTS[i % len(PROMPTS)],
                "max_tokens": int(rng.integers(4, 65)),
                "temperature": 1.0 if sampled else 0.0,
                "seed": 1000 + i if sampled else None,
            }
        )
    return out


def alone(pipe: Pipeline, reqs: list[dict]) -> tuple[list[str], float]:
    """Each request's answer alone, and the mean seconds one takes."""
    texts, start = [], time.perf_counter()
    for r in reqs:
        options = {"do_sample": True, "temperature": 1.0, "seed": r["seed"]} if r["seed"] else {}
        res = pipe.generate(
            r["image"], r["prompt"], max_new_tokens=r["max_tokens"], ignore_eos=True, **options
        )
        texts.append(res.text)
    return texts, (time.perf_counter() - start) / len(reqs)


def run_load(scheduler, reqs: list[dict], rate: float, seed: int = 0) -> list[dict]:
    """Open loop: submit at Poisson arrival times (`rate` per second) whatever is running;
    per request the time to first token, the total time, the tokens and the text."""
    gaps = np.random.default_rng([seed, 5]).exponential(1 / rate, len(reqs))

    async def one(r: dict, delay: float, loop) -> dict:
        await asyncio.sleep(delay)
        job = Job([r["image"]], r["prompt"], r["max_tokens"], [], r["temperature"], 1.0, r["seed"])
        job.ignore_eos = True  # every answer is max_tokens long, as vLLM's benchmark does
        t0 = time.perf_counter()
        scheduler.submit(job, loop)
        first = None
        while True:
            kind, _, _ = await job.events.get()
            first = first or time.perf_counter()
            if kind == "done":
                break
        end = time.perf_counter()
        c = job.choices[0]
        return {
            "ttft": first - t0,
            "total": end - t0,
            "tokens": c.tokens,
            "text": c.text,
            "start": t0,
            "end": end,
            "error": repr(job.error) if job.error else None,
        }

    async def main() -> list[dict]:
        loop = asyncio.get_running_loop()
        arrivals = np.cumsum(gaps) - gaps[0]
        return await asyncio.gather(*[one(r, a, loop) for r, a in zip(reqs, arrivals, strict=True)])

    scheduler.start()
    try:
        return asyncio.run(main())
    finally:
        scheduler.stop()


def summarize(got: list[dict], expected: list[str]) -> dict:
    tokens = sum(g["tokens"] for g in got)
    span = max(g["end"] for g in got) - min(g["start"] for g in got)
    ttft = np.array([g["ttft"] for g in got])
    tpot = np.array([(g["total"] - g["ttft"]) / (g["tokens"] - 1) for g in got if g["tokens"] > 1])
    pct = lambda a, q: round(float(np.percentile(a, q)), 4) if len(a) else None  # noqa: E731
    return {
        "throughput_tok_s": round(tokens / span, 2),
        "requests_s": round(len(got) / span, 3),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "tpot_p50_s": pct(tpot, 50),
        "tpot_p99_s": pct(tpot, 99),
        "all_equal_alone": [g["text"] for g in got] == expected,
        "mismatches": sum(g["text"] != e for g, e in zip(got, expected, strict=True)),
        "errors": sum(g["error"] is not None for g in got),
    }


def bench_model(name: str, pipe: Pipeline, args) -> dict:
    reqs = make_requests(args.requests, args.sampled_every)
    expected, per_request = alone(pipe, reqs)
    capacity = 1 / per_request
    out = {"alone_s_per_request": round(per_request, 4), "rates": []}
    for mult in args.rates:
        rate = mult * capacity
        row = {"rate_x_capacity": mult, "rate_per_s": round(rate, 3)}
        for kind in ("static", "continuous"):
            sched = (Batcher if kind == "static" else Engine)(pipe, args.max_batch, 10_000)
            row[kind] = summarize(run_load(sched, reqs, rate), expected)
            print(name, mult, kind, row[kind], flush=True)
        s, c = row["static"], row["continuous"]
        row["throughput_ratio"] = round(c["throughput_tok_s"] / s["throughput_tok_s"], 2)
        row["ttft_p99_ratio"] = round(c["ttft_p99_s"] / s["ttft_p99_s"], 2)
        out["rates"].append(row)
    return out


def cached_image_ttft(pipe: Pipeline) -> dict:
    """TTFT of a first question about an image (SigLIP runs) and of a second one (cached),
    each on an idle engine; the second answer must equal the uncached one."""
    image = synthetic.make_scene(np.random.default_rng(99)).image
    engine = Engine(pipe, 1, 8)
    first = run_load(
        engine,
        [dict(image=image, prompt="caption en", max_tokens=4, temperature=0.0, seed=None)],
        1.0,
    )[0]
    second_req = dict(
        image=image,
        prompt="answer en how many shapes are there?",
        max_tokens=4,
        temperature=0.0,
        seed=None,
    )
    second = run_load(engine, [second_req], 1.0)[0]
    uncached = pipe.generate(image, second_req["prompt"], max_new_tokens=4).text
    return {
        "first_ttft_s": round(first["ttft"], 4),
        "second_ttft_s": round(second["ttft"], 4),
        "ratio": round(second["ttft"] / first["ttft"], 3),
        "hits": engine.images.hits,
        "second_equals_uncached": second["text"] == uncached,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--rates", default="0.5,1,2,4", help="multiples of one-at-a-time capacity")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--mid-width", type=int, default=1024)
    p.add_argument("--mid-depth", type=int, default=8)
    p.add_argument("--mid-mlp", type=int, default=8192)
    p.add_argument("--mid-vocab", type=int, default=257_216, help="the published size")
    p.add_argument("--mid-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--sampled-every", type=int, default=4, help="1 request in N is sampled")
    p.add_argument("--models", default="embedded,mid")
    p.add_argument("--quick", action="store_true", help="a short run that proves it works")
    args = p.parse_args()
    if args.quick:
        args.requests, args.rates, args.mid_depth = 12, "4", 2
    args.rates = [float(x) for x in args.rates.split(",")]
    torch.set_num_threads(torch.get_num_threads())
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "requests": args.requests,
        "max_batch": args.max_batch,
        "quick": args.quick,
    }
    pipes = {}
    if "embedded" in args.models:
        pipes["embedded"] = paligemma.load()
    if "mid" in args.models:
        shape = args.mid_width, args.mid_depth, args.mid_mlp, args.mid_vocab
        pipes["mid"] = mid_model(*shape, getattr(torch, args.mid_dtype))
        n = sum(x.numel() for x in pipes["mid"].model.parameters())
        result["mid_params"] = n
    for name, pipe in pipes.items():
        result[name] = bench_model(name, pipe, args)
    if "mid" in pipes:
        result["cached_image_448px"] = cached_image_ttft(pipes["mid"])
        print("cached image", result["cached_image_448px"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
