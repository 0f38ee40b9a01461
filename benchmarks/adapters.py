"""Many adapters on one base: per-row LoRA in one batch vs grouping the rows by adapter (not a
timed test; numbers go in the README).

    python benchmarks/adapters.py [--requests 16] [--adapters 2 4] [--rank 8] [--repeats 5]

The embedded model with K random LoRA adapters (rank 8, every decoder projection, as
`finetune --mode lora` makes them) installed per row (lora/multi.py). N caption requests, the
adapters dealt round-robin, are answered three ways: all N rows as one batch with each row's
own adapter (mixed), one batch per adapter (grouped: what a batcher that never mixes adapters
does with the same queue), and all N rows on the base alone (the LoRA-free floor). Reports the
median and best wall time of each (repeats interleaved: the machine is shared) and checks that
mixed and grouped give the same answers. Writes benchmarks/results/adapters.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import paligemma
from paligemma.demo import synthetic
from paligemma.lora import Adapters, apply_lora_, lora_modules, save_adapter

RESULTS = Path(__file__).parent / "results"


def make_adapters(base, k: int, rank: int, root: Path) -> dict[str, str]:
    dirs = {}
    for i in range(k):
        pipe = copy.deepcopy(base)
        torch.manual_seed(i)
        apply_lora_(pipe.model, rank=rank, alpha=2 * rank)
        with torch.no_grad():
            for m in lora_modules(pipe.model).values():
                m.lora_B.normal_(0, 0.1)
        save_adapter(pipe.model, root / f"a{i}")
        dirs[f"a{i}"] = str(root / f"a{i}")
    return dirs


def run(pipe, adapters: Adapters, images, rows: list, how: str, tokens: int):
    """The answers (in request order) and seconds, for one way of batching `rows`."""
    start = time.perf_counter()
    answers: dict[int, str] = {}
    groups = {"mixed": [list(range(len(rows)))], "base": [list(range(len(rows)))]}.get(how)
    if groups is None:  # grouped: one batch per adapter
        groups = [[i for i, a in enumerate(rows) if a == name] for name in dict.fromkeys(rows)]
    for group in groups:
        adapters.select([None if how == "base" else rows[i] for i in group])
        out = pipe.generate(
            [images[i] for i in group],
            ["caption en"] * len(group),
            max_new_tokens=tokens,
            batch_size=len(group),
        )
        answers.update({i: r.text for i, r in zip(group, out, strict=True)})
    return [answers[i] for i in range(len(rows))], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--adapters", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    base = paligemma.load()
    rng = np.random.default_rng(0)
    images = [synthetic.make_scene(rng, size=(224, 224)).image for _ in range(args.requests)]
    report = []
    for k in args.adapters:
        with tempfile.TemporaryDirectory() as tmp:
            pipe = copy.deepcopy(base)
            adapters = Adapters(pipe.model, make_adapters(base, k, args.rank, Path(tmp)))
        rows = [f"a{i % k}" for i in range(args.requests)]
        times: dict[str, list[float]] = {"mixed": [], "grouped": [], "base": []}
        answers = {}
        run(pipe, adapters, images, rows, "mixed", args.tokens)  # warm-up
        for _ in range(args.repeats):
            for how in times:
                answers[how], seconds = run(pipe, adapters, images, rows, how, args.tokens)
                times[how].append(seconds)
        med = {how: statistics.median(t) for how, t in times.items()}
        best = {how: min(t) for how, t in times.items()}
        entry = {
            "adapters": k,
            "requests": args.requests,
            "median_s": {how: round(s, 4) for how, s in med.items()},
            "best_s": {how: round(s, 4) for how, s in best.items()},
            "all_s": {how: [round(s, 4) for s in t] for how, t in times.items()},
            "grouped_over_mixed": round(med["grouped"] / med["mixed"], 3),
            "grouped_over_mixed_best": round(best["grouped"] / best["mixed"], 3),
            "mixed_over_base": round(med["mixed"] / med["base"], 3),
            "mixed_equals_grouped": answers["mixed"] == answers["grouped"],
            "adapters_change_answers": answers["mixed"] != answers["base"],
        }
        print(json.dumps(entry))
        report.append(entry)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    settings = {"rank": args.rank, "max_new_tokens": args.tokens, "repeats": args.repeats}
    out = {"machine": machine, "settings": settings, "results": report}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adapters.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
