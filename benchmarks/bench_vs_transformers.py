"""Us against transformers on the same machine, weights and inputs (not a test).

    python benchmarks/bench_vs_transformers.py                      # PaliGemma-3B-224
    python benchmarks/bench_vs_transformers.py --preset paligemma2-3b-224 --json out.json

1. Creates (once, cached on disk) a full-size checkpoint with deterministic random weights in
   bfloat16, in the transformers layout.
2. Measures the machine's memory read bandwidth (a streaming sum over 1 GiB, best of 3, before
   each configuration and after the last: a configuration's limit uses the higher of the
   probes just before and after it), and
   each matrix-vector path's own GB/s on one decoder-sized weight (bench_kernels.py: int8 and
   int4, ours on each instruction set and torch's; `--kernels-only` prints just this and exits).
3. Runs each configuration in its own process (so peak RSS is its own): transformers in
   float32 and bfloat16 (eager attention; bfloat16 also with sdpa), ours in bfloat16 (the
   default), float32, int8, int4.
   Each reports load time, time to first token (vision + prefill, batch 1), decode tokens/s
   at batch 1 and summed over batch 8 (16 new tokens), and peak RSS. Batch 1 and batch 8 run
   in turn DECODE_REPEATS times; each figure is the best of its runs (first token: of the
   batch-1 prefills), for transformers and for us alike: on a shared host the memory
   bandwidth moves by 1.5x within seconds. Where PyTorch has no fast bfloat16 GEMM (AVX2-only
   hosts) transformers bfloat16 runs batch 1 only unless --full-bf16 (its batch-8 prefills
   would take most of an hour).
4. Quality of int8 / int4 against our float32: on 8 prompts, the float32 model's 64 greedy
   tokens are fed back to each quantised model (teacher forcing); we report the mean KL
   divergence of the next-token distributions and how often the argmax agrees.
5. Prints a table with ratios ours / reference (reference = transformers' best: its fastest
   first token among the runs, bfloat16 for decode and memory) and each decode rate as a
   fraction of the bandwidth limit (bandwidth / weight bytes read per token: for our runs the
   loaded model's own bytes, codes and scales, decode_weight_bytes; for transformers' the
   configuration's); writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_generate
import bench_kernels

PROMPT_TOKENS = 10


def inputs(cfg, batch: int, seed: int = 0) -> dict:
    return bench_generate.inputs(cfg, batch, PROMPT_TOKENS, seed)


def preset_config(preset: str, depth: int | None):
    import dataclasses

    import paligemma

    cfg = paligemma.CONFIGS[preset]
    if depth:  # a shallower decoder, for a quick look; the README's numbers use the full depth
        cfg = dataclasses.replace(
            cfg, text=dataclasses.replace(cfg.text, depth=depth, sliding_layers=None)
        )
    return cfg


def make_checkpoint(cfg, path: Path) -> None:
    import paligemma

    if (path / "config.json").is_file():
        return
    print(f"creating {path} (random weights, bfloat16) ...", flush=True)
    with torch.device("meta"):
        model = paligemma.PaliGemma(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
    paligemma.save_model(model, path)


def bandwidth_gbs() -> float:
    x = torch.ones(2**28)  # 1 GiB of float32
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


# -- workers (one process each) ---------------------------------------------------------------


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def best_of_runs(run, sizes: tuple[int, ...]) -> dict:
    """run(batch) -> (first token s, decode tok/s), DECODE_REPEATS rounds of the batch sizes in
    turn (ours and transformers' alike) -> the best decode rate per size and the best first
    token of batch 1."""
    out: dict = {}
    firsts = []
    for _ in range(DECODE_REPEATS):
        for b in sizes:
            first, rate = run(b)
            firsts += [first] if b == 1 else []
            out[f"decode_tok_s_b{b}"] = max(out.get(f"decode_tok_s_b{b}", 0.0), rate)
    return out | {"first_token_s": min(firsts)}


class StepClock:
    """A logits processor that only notes when each generation step's logits are ready: the
    first is the first token (prefill), the rest one per decode step (as our timings)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def worker_hf(path: Path, dtype: str, new_tokens: int, batch: int, attn: str = "eager") -> dict:
    from transformers import LogitsProcessorList, PaliGemmaForConditionalGeneration

    import paligemma

    start = time.perf_counter()
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation=attn
    ).eval()
    load_s = time.perf_counter() - start
    cfg = paligemma.from_hf_json(json.loads((path / "config.json").read_text()))
    out = {"load_s": load_s}
    sizes, xs = tuple(dict.fromkeys((1, batch))), {}  # --batch 1: one size
    with torch.no_grad():
        for b in sizes:
            xs[b] = inputs(cfg, b)
            xs[b]["pixel_values"] = xs[b]["pixel_values"].to(getattr(torch, dtype))
            model.generate(**xs[b], max_new_tokens=2, do_sample=False)  # warm-up (kernel setup)
            if b == 1:  # the peak of batch-1 work (ru_maxrss only grows)
                out["peak_rss_b1_gb"] = peak_rss_gb()

        def run(b: int) -> tuple[float, float]:
            clock = StepClock()
            start = time.perf_counter()
            model.generate(
                **xs[b],
                max_new_tokens=new_tokens + 1,
                min_new_tokens=new_tokens + 1,
                do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
            )
            return clock.times[0] - start, b * new_tokens / (clock.times[-1] - clock.times[0])

        out |= best_of_runs(run, sizes)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def quantized_checkpoint(path: Path, mode: str) -> Path:
    """Quantise once and save (as a user would with `paligemma convert --quantize`)."""
    import paligemma

    out = path.with_name(f"{path.name}-{mode}")
    if not (out / "quantization.json").is_file():
        print(f"creating {out} ...", flush=True)
        paligemma.save_model(paligemma.load_model(path, dtype=torch.bfloat16, quantize=mode), out)
    return out


def worker_ours(
    path: Path, dtype: str, quantize: str | None, new_tokens: int, batch: int, quality: str
) -> dict:
    import paligemma
    from paligemma import generate as engine

    if quantize:  # the saved quantised checkpoint, made once by quantized_checkpoint()
        path = path.with_name(f"{path.name}-{quantize}")
    start = time.perf_counter()
    model = paligemma.load_model(path, dtype=getattr(torch, dtype))
    out = {
        "load_s": time.perf_counter() - start,
        "weight_bytes_per_token": decode_weight_bytes(model),
    }
    cfg = model.cfg
    sizes = tuple(dict.fromkeys((1, batch)))  # --batch 1: one size
    for b in sizes:  # warm-up (one-time kernel setup), as for transformers
        for _ in engine.stream(
            model, inputs(cfg, b), engine.GenerationConfig(max_new_tokens=2), set()
        ):
            pass
        if b == 1:  # the peak of batch-1 work (ru_maxrss only grows)
            out["peak_rss_b1_gb"] = peak_rss_gb()

    def run(b: int) -> tuple[float, float]:
        timings: dict = {}
        config = engine.GenerationConfig(max_new_tokens=new_tokens + 1)
        for _ in engine.stream(model, inputs(cfg, b), config, set(), timings=timings):
            pass
        return timings["prefill_s"], b * (timings["steps"] - 1) / timings["decode_s"]

    out |= best_of_runs(run, sizes)
    out["peak_rss_gb"] = peak_rss_gb()
    if quality:
        out |= quality_pass(
            model, Path(quality), reference=(quantize is None and dtype == "float32")
        )
    return out


def quality_pass(model, file: Path, reference: bool, prompts: int = 8, tokens: int = 64) -> dict:
    """The float32 model writes its greedy continuations and log-probabilities; a quantised one
    reads them, feeds the same tokens, and compares next-token distributions."""
    from paligemma import generate as engine

    x = inputs(model.cfg, prompts, seed=1)
    if reference:
        out = engine.generate(model, x, engine.GenerationConfig(max_new_tokens=tokens), set())
        seq = torch.tensor(out.tokens)
    else:
        from safetensors.torch import load_file

        ref = load_file(str(file))
        seq = ref["tokens"]
    ids = torch.cat([x["input_ids"], seq], 1)
    types = torch.cat([x["token_type_ids"], torch.ones_like(seq)], 1)
    with torch.inference_mode():
        logits = model(
            ids,
            x["pixel_values"].to(model.dtype),
            torch.ones_like(ids),
            types,
            num_logits=tokens + 1,
        )[:, :-1].float()
    logp = logits.log_softmax(-1)
    if reference:
        from safetensors.torch import save_file

        save_file({"tokens": seq.contiguous(), "logp": logp.contiguous()}, str(file))
        return {}
    ref_logp = ref["logp"]
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean().item()
    agree = (ref_logp.argmax(-1) == logp.argmax(-1)).float().mean().item()
    return {"kl_vs_float32": kl, "greedy_agreement": agree}


# -- driver -----------------------------------------------------------------------------------

# Runs of batch 1 and batch 8 in turn per process (ours and transformers' alike); each figure
# (first token, decode rates) is the best of its runs: on a shared host one sample moved by up
# to 2x within a session, and the memory bandwidth by 1.5x within seconds.
DECODE_REPEATS = 3
RUNS = [  # name, kind, dtype, quantize
    ("transformers float32", "hf", "float32", None),
    ("transformers bfloat16", "hf", "bfloat16", None),
    ("transformers bfloat16 sdpa", "hf-sdpa", "bfloat16", None),
    ("ours float32", "ours", "float32", None),
    ("ours bfloat16 (default)", "ours", "bfloat16", None),
    ("ours int8", "ours", "bfloat16", "int8"),
    ("ours int4", "ours", "bfloat16", "int4"),
]


def weight_bytes_per_token(cfg, dtype_bytes: float, decoder_bytes: float) -> float:
    """Bytes a decode step must read: decoder linears + the tied output head (embedding)."""
    t = cfg.text
    per_layer = (
        t.width * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim
        + t.num_heads * t.head_dim * t.width
    )
    per_layer += 3 * t.width * t.mlp_dim
    return t.depth * per_layer * decoder_bytes + t.vocab_size * t.width * dtype_bytes


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads in our loaded model: every decoder block's
    projections and the output head (the tied embedding where the head has no matrix of its
    own), with their scales: int4 with bfloat16 scales per group of 64 reads 4.25 bits a
    weight, not 4 (session 36; earlier runs' limits counted the codes alone)."""
    decoder = model.decoder
    parts = [decoder.head if _own_bytes(decoder.head) else decoder.embed]
    for block in decoder.blocks:
        parts += [getattr(block.attn, f"{n}_proj") for n in "qkvo"]
        parts += [getattr(block.mlp, f"{n}_proj") for n in ("gate", "up", "down")]
    return sum(_own_bytes(m) for m in parts)


def _own_bytes(module) -> int:
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_worker(cmd: list[str]) -> dict | None:
    """One configuration's process: its RESULT line's figures, or None (reported) if it failed."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        print(f"  failed: {proc.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="paligemma-3b-224")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/paligemma-bench"))
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", nargs="+", help="run only these configurations (by name prefix)")
    ap.add_argument(
        "--depth", type=int, help="decoder layers (default: the preset's), for a quick look"
    )
    ap.add_argument("--json", default="bench_vs_transformers.json")
    ap.add_argument(
        "--full-bf16",
        action="store_true",
        help="transformers bfloat16 at batch 8 too where the CPU has no fast bfloat16 GEMM "
        "(AVX2-only hosts: its bfloat16 prefills take minutes each; by default batch 1 only)",
    )
    ap.add_argument(
        "--kernels-only", action="store_true", help="only the kernel-level GB/s table, then exit"
    )
    ap.add_argument(
        "--worker", nargs=4, metavar=("KIND", "DTYPE", "QUANT", "QUALITY"), help=argparse.SUPPRESS
    )
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--quantize-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    label = args.preset + (f"-depth{args.depth}" if args.depth else "")
    path = Path(args.path or Path(args.cache_dir) / label)

    if args.quantize_only:
        quantized_checkpoint(path, args.quantize_only)
        return
    if args.worker:
        kind, dtype, quant, quality = args.worker
        quant = None if quant == "-" else quant
        quality = "" if quality == "-" else quality
        if kind.startswith("hf"):
            attn = "sdpa" if kind == "hf-sdpa" else "eager"
            result = worker_hf(path, dtype, args.new_tokens, args.batch, attn)
        else:
            result = worker_ours(path, dtype, quant, args.new_tokens, args.batch, quality)
        print("RESULT " + json.dumps(result), flush=True)
        return

    bw = bandwidth_gbs()
    print(f"memory read bandwidth: {bw:.1f} GB/s; {torch.get_num_threads()} threads", flush=True)
    kernel_gbs = bench_kernels.kernel_table()  # each path's GB/s on one decoder-sized weight
    if args.kernels_only:
        return
    cfg = preset_config(args.preset, args.depth)
    make_checkpoint(cfg, path)
    quality_file = Path(tempfile.mkdtemp()) / "reference.safetensors"
    from paligemma.quant import kernels as cpu_kernels

    slow_bf16 = cpu_kernels.f32_prefill()  # PyTorch has no fast bfloat16 GEMM on this CPU
    results = {}
    for name, kind, dtype, quant in RUNS:
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        # Quality needs our float32 run's reference file: without that run, none is measured.
        wants_quality = kind == "ours" and (dtype == "float32" or (quant and quality_file.exists()))
        if quant:
            subprocess.run(
                [sys.executable, __file__, "--path", str(path), "--quantize-only", quant],
                check=True,
            )
        batch = args.batch
        if kind.startswith("hf") and dtype == "bfloat16" and slow_bf16 and not args.full_bf16:
            batch = 1  # its batch-8 prefills alone would take most of an hour here
            print(f"{name}: batch 1 only (no fast bfloat16 GEMM here; --full-bf16 for all)")
        cmd = [
            sys.executable,
            __file__,
            "--path",
            str(path),
            "--new-tokens",
            str(args.new_tokens),
            "--batch",
            str(batch),
            "--worker",
            kind,
            dtype,
            quant or "-",
            str(quality_file) if wants_quality else "-",
        ]
        before = bandwidth_gbs()  # this configuration's own time (the host drifts)
        print(f"running {name} ... (bandwidth {before:.1f} GB/s)", flush=True)
        result = run_worker(cmd)
        if result is None:
            continue
        results[name] = result
        print("  " + json.dumps({k: round(v, 3) for k, v in results[name].items()}), flush=True)
        results[name]["bandwidth_gbs"] = before

    # the reference is transformers' best per figure: its fastest first token among the runs
    firsts = [r["first_token_s"] for n, r in results.items() if n.startswith("transformers")]
    ref_first = min(firsts, default=None)
    theirs = [r for n, r in results.items() if n.startswith("transformers")]
    ref_decode = max((r["decode_tok_s_b1"] for r in theirs), default=None)
    # Memory against transformers' lowest peak; where a transformers run had batch 1 only (no
    # fast bfloat16 GEMM), the peaks after batch-1 work on both sides (8 caches weigh more).
    rss_key = "peak_rss_gb"
    if any(f"decode_tok_s_b{args.batch}" not in r for r in theirs):
        rss_key = "peak_rss_b1_gb"
    ref_rss = min((r[rss_key] for r in theirs), default=None)
    sizes = {
        "float32": (4, 4),
        "bfloat16": (2, 2),
        "int8": (1, 1),
        "int4": (0.5, 0.5),
    }  # head, layers
    b = args.batch
    # Each configuration's limit: the higher of the probes just before and just after it (a
    # busy moment once read 13 GB/s against 20-26 minutes later, flattering every "% of
    # limit"; and one configuration can run while the host is slower than during another).
    bw_end = bandwidth_gbs()
    print(f"memory read bandwidth after the runs: {bw_end:.1f} GB/s", flush=True)
    probes = [r["bandwidth_gbs"] for r in results.values()] + [bw_end]
    for r, after in zip(results.values(), probes[1:], strict=True):
        r["bandwidth_gbs"] = max(r["bandwidth_gbs"], after)
    bw = max([bw, *probes])
    print(f"\n{label}, {torch.get_num_threads()} threads, bandwidth {bw:.1f} GB/s")
    columns = [
        "load s",
        "1st tok s",
        "x ref",
        "tok/s",
        "x ref",
        "% bw",
        "bw GB/s",
        f"b{b} tok/s",
        f"b{b}/b1",
        "RSS GB",
        "x ref",
        "KL",
        "agree",
    ]
    print(f"{'':26}" + "".join(f"{c:>10}" for c in columns))

    def cell(value: float | None, spec: str = ".2f") -> str:
        return f"{'-' if value is None else format(value, spec):>10}"

    for run, r in results.items():
        dtype, quant = next((d, q) for n, _, d, q in RUNS if n == run)
        batched = r.get(f"decode_tok_s_b{b}")  # None: that run had batch 1 only
        nominal = weight_bytes_per_token(cfg, *sizes[quant or dtype])
        limit = r["bandwidth_gbs"] * 1e9 / r.get("weight_bytes_per_token", nominal)
        r["bandwidth_limit_tok_s"] = limit
        r["bandwidth_limit_codes_tok_s"] = r["bandwidth_gbs"] * 1e9 / nominal  # as before s36
        row = [
            cell(r["load_s"], ".1f"),
            cell(r["first_token_s"]),
            cell(ref_first / r["first_token_s"] if ref_first else None),
            cell(r["decode_tok_s_b1"]),
            cell(r["decode_tok_s_b1"] / ref_decode if ref_decode else None),
            cell(100 * r["decode_tok_s_b1"] / limit, ".0f"),
            cell(r["bandwidth_gbs"], ".1f"),
            cell(batched),
            cell(batched / r["decode_tok_s_b1"] if batched else None, ".1f"),
            cell(r["peak_rss_gb"], ".1f"),
            cell(r[rss_key] / ref_rss if ref_rss else None),
            cell(r.get("kl_vs_float32"), ".4f"),
            cell(r.get("greedy_agreement")),
        ]
        print(f"{run:26}" + "".join(row))
    print(
        "x ref: first token = reference time / ours (higher is better); decode = ours / reference; "
        "RSS = ours / reference (lower is better)"
        + (
            ", both after batch 1 (transformers ran batch 1 only)"
            if rss_key != "peak_rss_gb"
            else ""
        )
    )
    with open(args.json, "w") as f:
        json.dump(
            {
                "preset": args.preset,
                "bandwidth_gbs": bw,
                "kernel_gbs": kernel_gbs,
                "threads": torch.get_num_threads(),
                "new_tokens": args.new_tokens,
                "batch": args.batch,
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
