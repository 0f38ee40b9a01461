"""One prefill, ours against transformers, on a 3B-shaped random model (not a test):

    python benchmarks/profile_prefill.py [--size 224 448] [--layers 2] [--vision-layers 2]
                                         [--attn eager sdpa] [--top 25] [--repeats 5]

Builds a PaliGemma-3B-shaped model with only a few layers (the real widths: Gemma 2048 wide,
MLP 16384, 8 heads, 1 KV head, head dim 256, vocabulary 257,216; SigLIP 1152 x 4304, 16 heads)
in bfloat16 with random weights, and transformers' PaliGemma on the same tensors (shared, not
copied). Per image size: medians of interleaved prefills (vision + decoder over the prompt,
through a KV cache, one logit row: what `generate` does first), then a torch.profiler table of
one prefill each (self CPU time per op, with shapes), largest first.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

import paligemma
from paligemma.checkpoints.hf_config import to_hf_json
from paligemma.checkpoints.names import our_name_to_hf
from paligemma.quant.matvec import install_matvec_

sys.path.insert(0, str(Path(__file__).parent))
import bench_generate


def shaped_config(size: int, layers: int, vision_layers: int) -> paligemma.PaliGemmaConfig:
    cfg = paligemma.CONFIGS[f"paligemma-3b-{size}"]
    text = dataclasses.replace(cfg.text, depth=layers)
    vision = dataclasses.replace(cfg.vision, depth=vision_layers)
    return dataclasses.replace(cfg, text=text, vision=vision)


def random_model(cfg, dtype: torch.dtype = torch.bfloat16) -> paligemma.PaliGemma:
    with torch.device("meta"):
        model = paligemma.PaliGemma(cfg)
    model = model.to_empty(device="cpu").to(dtype).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.02, generator=g)
    return install_matvec_(model)  # the CPU linears, as load_model installs them


def _live_name(name: str) -> str:
    """A checkpoint name (as saved) -> the module path in transformers' live model."""
    for old, new in LIVE_PREFIXES:
        if name.startswith(old):
            return new + name.removeprefix(old)
    return name


LIVE_PREFIXES = (
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("language_model.model.", "model.language_model."),
)


def transformers_twin(model: paligemma.PaliGemma, attn: str):
    """transformers' PaliGemma holding `model`'s tensors (no copy)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    hf_cfg = PaliGemmaConfig(**to_hf_json(model.cfg, str(model.dtype).removeprefix("torch.")))
    hf = PaliGemmaForConditionalGeneration._from_config(
        hf_cfg, attn_implementation=attn, dtype=model.dtype
    )  # its own random weights are dropped below
    state = {_live_name(our_name_to_hf(k, model.cfg)): v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    hf.tie_weights()
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    return hf.eval()


def prefill_ours(model, x: dict) -> torch.Tensor:
    cache = model.new_cache(x["input_ids"].shape[0], x["input_ids"].shape[1] + 1)
    return model(
        x["input_ids"],
        x["pixel_values"].to(model.dtype),
        x["attention_mask"],
        x["token_type_ids"],
        cache=cache,
        num_logits=1,
    )[:, -1]


def prefill_hf(hf, x: dict) -> torch.Tensor:
    out = hf(
        input_ids=x["input_ids"],
        pixel_values=x["pixel_values"].to(hf.dtype),
        attention_mask=x["attention_mask"],
        token_type_ids=x["token_type_ids"],
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


CLOCK = {"clock": time.perf_counter}  # --cpu-time: time.process_time


def timed(fn, *args) -> float:
    start = CLOCK["clock"]()
    with torch.inference_mode():
        fn(*args)
    return CLOCK["clock"]() - start


def profile_table(fn, model, x: dict, top: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with (
        torch.inference_mode(),
        profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p,
    ):
        fn(model, x)
    return p.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40
    )


def parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """The options shared with bench_prefill.py: sizes, layers, rounds."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--layers", type=int, default=2, help="Gemma layers")
    ap.add_argument("--vision-layers", type=int, default=2, help="SigLIP layers")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by this process's CPU seconds, not the wall clock: with --threads 1, the "
        "work done whatever else the machine runs (a shared machine's other jobs stretch the "
        "wall clock of multi-threaded runs by 2x and more)",
    )
    return ap


def setup(args: argparse.Namespace) -> None:
    """Apply --threads and --cpu-time; print what the numbers are."""
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK["clock"] = time.process_time if args.cpu_time else time.perf_counter
    clock = "CPU" if args.cpu_time else "wall"
    print(f"{torch.get_num_threads()} threads; {clock} seconds, medians of {args.repeats} rounds")


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds of each run over `repeats` rounds after a warm-up round; the order
    rotates round by round so that a noisy, shared machine hits every run alike."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats + 1):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t = runs[n]()
            if r:  # round 0 warms up
                times[n].append(t)
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    ap = parser(__doc__, 5)
    ap.add_argument("--attn", nargs="+", default=["eager", "sdpa"], help="transformers' attention")
    ap.add_argument("--top", type=int, default=25, help="profiler rows (0: no profile)")
    args = ap.parse_args()
    setup(args)
    for size in args.size:
        model = random_model(shaped_config(size, args.layers, args.vision_layers))
        runs = {"ours": (prefill_ours, model)}
        runs |= {f"hf-{a}": (prefill_hf, transformers_twin(model, a)) for a in args.attn}
        x = bench_generate.inputs(model.cfg, 1, 10)
        with torch.inference_mode():
            want = prefill_hf(runs[f"hf-{args.attn[0]}"][1], x).float()
            got = prefill_ours(model, x).float()
        print(f"{size} px: |ours - hf-{args.attn[0]}| max {(got - want).abs().max().item():.3g}")
        med = interleaved({n: partial(timed, *r, x) for n, r in runs.items()}, args.repeats)
        print(f"{size} px: " + ", ".join(f"{n} {v:.3f} s" for n, v in med.items()))
        print(f"{size} px: " + ", ".join(f"ours/{n} {med['ours'] / v:.3f}" for n, v in med.items()))
        for n in runs if args.top else []:
            print(f"--- {size} px, {n}")
            print(profile_table(*runs[n], x, args.top))


if __name__ == "__main__":
    main()
