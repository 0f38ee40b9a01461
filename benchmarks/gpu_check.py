"""The GPU path, proven in one short run (not a test; tests/test_gpu_check.py runs it on the CPU):

    python benchmarks/gpu_check.py                          # CUDA, about 8 minutes on one H100
    python benchmarks/gpu_check.py --device cpu --quick     # the CPU path, tiny models, < 1 min

1. Greedy tokens of the tiny oracle models (tests/conftest.py: PaliGemma 1 and 2 with random
   weights) in float32 on DEVICE against the CPU's, and the largest logit difference; on CUDA
   once with torch's defaults (cuDNN convolutions may use TF32) and once with TF32 off, each
   with decode steps replayed from a CUDA graph (decode_graph.py, the default) and without.
2. The embedded model's `embedded_eval` scores (paligemma.demo.evaluate) on DEVICE against the
   CPU on the same scenes (a GPU-trained run scored far below its loss: is CUDA at fault?).
3. PaliGemma-3B-224, random weights, bfloat16 (skipped with --quick): first token, decode tok/s
   at batch 1 and throughput at batch 32, ours (decode steps replayed from a CUDA graph, the
   default, and eager steps) vs transformers on the same device, and how many greedy tokens
   the two ways of ours agree on.
4. transformers' static cache (compiled: CUDA graphs) and ours under
   torch.compile(mode="reduce-overhead"); each attempt in try/except, the failure is
   reported, not raised.

--time-budget (seconds) is checked before each section: what would not fit is reported as
skipped. Everything printed is also written as JSON (--json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tiny oracle models live in tests/conftest.py
sys.path.insert(0, str(ROOT / "benchmarks"))

TINY_NEW_TOKENS = 12
BIG_NEW_TOKENS = 32
BIG_BATCH = 32


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


# -- 1. tiny oracle models ---------------------------------------------------------------------


def tiny_greedy(
    path: Path, device: str, inputs: dict, graphs: bool = True
) -> tuple[list, torch.Tensor]:
    import paligemma
    from paligemma import generate as engine

    model = paligemma.load_model(path, dtype=torch.float32, device=device)
    cfg = engine.GenerationConfig(max_new_tokens=TINY_NEW_TOKENS)
    with cuda_graphs(graphs):
        out = engine.generate(model, inputs, cfg, set())
    with torch.inference_mode():
        x = {k: v.to(device) for k, v in inputs.items()}
        logits = model(x["input_ids"], x["pixel_values"], x["attention_mask"], x["token_type_ids"])
    return out.tokens, logits.float().cpu()


def check_tiny(device: str) -> list[dict]:
    from conftest import make_batch, tiny_hf_model

    ids, mask, types, pixels = make_batch(0)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "pixel_values": pixels,
    }
    rows = []
    for v2 in (False, True):
        path = Path(tempfile.mkdtemp()) / ("pg2" if v2 else "pg1")
        tiny_hf_model(v2, seed=3, lively=True).save_pretrained(path)
        cpu_tokens, cpu_logits = tiny_greedy(path, "cpu", inputs)
        cuda = device.startswith("cuda")
        for tf32, graphs in (
            [(t, g) for t in (True, False) for g in (True, False)] if cuda else [(False, False)]
        ):
            set_tf32(tf32)
            tokens, logits = tiny_greedy(path, device, inputs, graphs)
            rows.append(
                {
                    "model": "pg2" if v2 else "pg1",
                    "tf32_allowed": tf32,
                    "cuda_graphs": graphs,
                    "tokens_equal": tokens == cpu_tokens,
                    "max_logit_diff": (logits - cpu_logits).abs().max().item(),
                    "tokens": tokens,
                    "cpu_tokens": cpu_tokens,
                }
            )
    set_tf32(False)
    return rows


# -- 2. the embedded model ---------------------------------------------------------------------


def embedded_scores(device: str, scenes: int) -> dict:
    from paligemma import load
    from paligemma.demo.evaluate import evaluate

    pipe = load(dtype=torch.float32, device=device)
    return evaluate(pipe, scenes, progress=False)["summary"]


def check_embedded(device: str, scenes: int) -> dict:
    cpu = embedded_scores("cpu", scenes)
    # on the CPU itself (the CI run) the comparison is with itself: scored once
    scores = cpu if device == "cpu" else embedded_scores(device, scenes)
    out = {"scenes": scenes, "cpu": cpu, "device": scores}
    out["equal"] = out["device"] == cpu
    if device.startswith("cuda"):  # with torch's TF32 defaults, as a training run would have
        set_tf32(True)
        out["device_tf32"] = embedded_scores(device, scenes)
        out["equal_tf32"] = out["device_tf32"] == cpu
        set_tf32(False)
    return out


# -- 3./4. PaliGemma-3B-224 in bfloat16 --------------------------------------------------------


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def speed(generate, device: str, inputs1: dict, inputs_b: dict) -> dict:
    """generate(inputs, new_tokens) runs greedy decoding to exactly new_tokens tokens; decode
    time = median time for 1 + N tokens - median time for 1 token."""
    out = {}
    for x in (inputs1, inputs_b):
        b = x["input_ids"].shape[0]
        generate(x, 2)  # warm-up
        first = statistics.median(timed(lambda x=x: generate(x, 1), device) for _ in range(3))
        total = statistics.median(
            timed(lambda x=x: generate(x, BIG_NEW_TOKENS + 1), device) for _ in range(2)
        )
        out[f"first_token_s_b{b}"] = first
        out[f"decode_tok_s_b{b}"] = b * BIG_NEW_TOKENS / max(total - first, 1e-9)
    return out


@contextlib.contextmanager
def cuda_graphs(on: bool):
    """Decode steps replayed from a CUDA graph (on) or eager (off) inside the block."""
    from paligemma import decode_graph

    before, decode_graph.ENABLED = decode_graph.ENABLED, on
    try:
        yield
    finally:
        decode_graph.ENABLED = before


def ours_generate(model, graphs: bool = True):
    from paligemma import generate as engine

    def run(inputs: dict, new: int):
        with cuda_graphs(graphs):
            cfg = engine.GenerationConfig(max_new_tokens=new)
            return engine.generate(model, inputs, cfg, set())

    return run


def graph_agreement(model, inputs: dict) -> dict:
    """Greedy tokens of ours with recorded decode steps against eager steps (bfloat16: the
    two sum the attention in another order, so near-ties may flip; the count says how often)."""
    graphed = ours_generate(model, True)(inputs, BIG_NEW_TOKENS).tokens
    eager = ours_generate(model, False)(inputs, BIG_NEW_TOKENS).tokens
    rows = list(zip(graphed, eager, strict=True))
    pairs = [(a, b) for g, e in rows for a, b in zip(g, e, strict=False)]
    first_diff = [
        next((i for i, (a, b) in enumerate(zip(g, e, strict=False)) if a != b), None)
        for g, e in rows
    ]
    return {
        "rows": len(graphed),
        "rows_equal": sum(g == e for g, e in rows),
        "token_agreement": sum(a == b for a, b in pairs) / max(len(pairs), 1),
        "first_difference_per_row": first_diff,
    }


def hf_generate(model, device: str, **options):
    def run(inputs: dict, new: int):
        x = {k: v.to(device) for k, v in inputs.items()}
        x["pixel_values"] = x["pixel_values"].to(torch.bfloat16)
        with torch.no_grad():
            return model.generate(
                **x, max_new_tokens=new, min_new_tokens=new, do_sample=False, **options
            )

    return run


def build_hf(cfg, device: str):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    from paligemma.checkpoints.hf_config import to_hf_json

    hf_cfg = PaliGemmaConfig.from_dict(to_hf_json(cfg, "bfloat16"))
    with torch.device(device):  # not meta: buffers (position ids) must be real
        model = PaliGemmaForConditionalGeneration._from_config(
            hf_cfg, attn_implementation="sdpa", dtype=torch.bfloat16
        )
    g = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    model.tie_weights()
    return model.eval()


class OutOfTime(Exception):
    pass


def _out_of_time(signum, frame):
    raise OutOfTime("time budget spent during this attempt")


def attempt(results: dict, name: str, fn, deadline: float) -> None:
    """results[name] = fn(), or what stopped it: an error, or the deadline (SIGALRM, Unix)."""
    left = int(deadline - time.monotonic())
    if left <= 0:
        results[name] = {"skipped": "time budget spent"}
    else:
        old = signal.signal(signal.SIGALRM, _out_of_time)
        signal.alarm(left)
        try:
            results[name] = fn()
        except Exception as e:  # reported, not raised: the run goes on
            traceback.print_exc()
            results[name] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    print(f"  {name}: {json.dumps(results[name])}", flush=True)


def check_big(device: str, preset: str, deadline: float, skip: frozenset = frozenset()) -> dict:
    """Plain decoding of both first (the figures that matter), then the compiled attempts."""
    import bench_generate

    import paligemma

    cfg = paligemma.CONFIGS[preset]
    x1 = bench_generate.inputs(cfg, 1, 10)
    xb = bench_generate.inputs(cfg, BIG_BATCH, 10)
    out: dict = {"preset": preset, "batch": BIG_BATCH, "new_tokens": BIG_NEW_TOKENS}
    ours = bench_generate.build(preset, torch.bfloat16, device)
    hf = build_hf(cfg, device)  # two 3B bfloat16 copies: 12 GB, fits one GPU
    runs = [
        ("ours bfloat16", ours_generate(ours)),
        ("ours bfloat16 eager steps", ours_generate(ours, graphs=False)),
        ("transformers bfloat16 sdpa", hf_generate(hf, device)),
        (
            "transformers bfloat16 static cache (compiled)",
            hf_generate(hf, device, cache_implementation="static"),
        ),
        (
            "ours bfloat16 compile reduce-overhead",
            ours_generate(torch.compile(ours, mode="reduce-overhead", dynamic=True), False),
        ),
    ]
    name = "ours cuda graphs vs eager steps, greedy tokens"
    if name not in skip:
        attempt(out, name, lambda: graph_agreement(ours, xb), deadline)
    for name, generate in runs:
        if name in skip:
            out[name] = {"skipped": "--skip"}
            continue
        attempt(out, name, lambda g=generate: speed(g, device, x1, xb), deadline)
    return out


# -- driver ------------------------------------------------------------------------------------


def section(results: dict, name: str, deadline: float, fn, out: Path, skip=frozenset()) -> None:
    """results[name] = fn() unless skipped or the deadline has passed; the JSON is rewritten
    after each section, so a run stopped from outside keeps what it measured."""
    if name in skip:
        results[name] = {"skipped": "--skip"}
        print(f"{name}: skipped (--skip)", flush=True)
        return
    if time.monotonic() >= deadline:
        results[name] = {"skipped": "time budget spent"}
        print(f"{name}: skipped (time budget spent)", flush=True)
        return
    start = time.monotonic()
    print(f"{name} ...", flush=True)
    try:
        results[name] = fn()
    except Exception as e:  # reported, not raised: the sections after it still run
        traceback.print_exc()
        results[name] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    results[name + "_s"] = round(time.monotonic() - start, 1)
    print(f"{name}: {json.dumps(results[name])}", flush=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny models and 2 scenes only")
    ap.add_argument("--scenes", type=int, help="embedded scenes per task (default 24; quick: 2)")
    ap.add_argument("--preset", default="paligemma-3b-224")
    ap.add_argument("--time-budget", type=float, default=480.0, help="seconds for the whole run")
    ap.add_argument("--json", default="gpu_check.json")
    ap.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="NAME",
        help="sections (tiny_greedy, embedded_eval, big) or 3B runs (their printed names) to skip",
    )
    ap.add_argument(
        "--big-needs", type=float, default=240.0, help="seconds the 3B section must have left"
    )
    args = ap.parse_args(argv)
    skip = frozenset(args.skip)
    deadline, out = time.monotonic() + args.time_budget, Path(args.json)
    set_tf32(False)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results: dict = {"device": args.device, "device_name": name, "torch": torch.__version__}
    try:
        import transformers

        results["transformers"] = transformers.__version__
    except ImportError:
        results["transformers"] = None
    print(f"device {args.device} ({name}), torch {torch.__version__}", flush=True)
    section(results, "tiny_greedy", deadline, lambda: check_tiny(args.device), out, skip)
    scenes = args.scenes or (2 if args.quick else 24)
    embedded = lambda: check_embedded(args.device, scenes)  # noqa: E731
    section(results, "embedded_eval", deadline, embedded, out, skip)
    if not args.quick:
        # the 3B section may start only with --big-needs seconds left (4 of its ~5 minutes)
        big = lambda: check_big(args.device, args.preset, deadline, skip)  # noqa: E731
        section(results, "big", deadline - args.big_needs, big, out, skip)
    tiny = results["tiny_greedy"]  # a list of rows, or a dict saying why there is none
    tiny_ok = "tiny_greedy" in skip or (
        isinstance(tiny, list) and all(r["tokens_equal"] for r in tiny if not r["tf32_allowed"])
    )
    embedded_ok = results.get("embedded_eval", {}).get("equal", "embedded_eval" in skip)
    results["all_equal"] = tiny_ok and embedded_ok
    print(f"ALL EQUAL: {results['all_equal']}", flush=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
