"""Score a model on held-out synthetic scenes, per task, through the public pipeline:

    python -m paligemma.demo.evaluate [MODEL] [--scenes 200] [--json OUT.json]

MODEL defaults to the embedded model. Scenes come from a seed the training never uses
(`EVAL_SEED`). Metrics: caption and VQA exact match; detection: ground-truth objects matched
one-to-one (same label, IoU >= 0.5, best IoU first) as a fraction of all ground-truth objects,
and unmatched predictions per image; segmentation: mean over ground-truth objects of the mask
IoU of its one-to-one match (0 when unmatched), on full-resolution masks.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from typing import Any

import numpy as np
import torch

from ..tasks.vqvae import mask_to_codes
from . import synthetic

EVAL_SEED = 90_210  # training seeds are (seed, step) pairs; this one is never used there


def box_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def match(truth: list, preds: list, iou) -> list[tuple[int, int, float]]:
    """One-to-one pairs (truth i, pred j, iou) with equal labels, greedily by IoU (> 0)."""
    pairs = sorted(
        (
            (iou(t, p), i, j)
            for i, t in enumerate(truth)
            for j, p in enumerate(preds)
            if t[0] == p[0]
        ),
        reverse=True,
    )
    used_t, used_p, out = set(), set(), []
    for v, i, j in pairs:
        if v > 0 and i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
            out.append((i, j, v))
    return out


def _scenes(kind: str, n: int, seed: int, encode=None):
    rng = np.random.default_rng([seed, synthetic.KINDS.index(kind)])
    for _ in range(n):
        scene = synthetic.make_scene(rng)
        yield scene, synthetic.make_example(scene, kind, rng, encode)


def evaluate(pipe, scenes: int = 200, seed: int = EVAL_SEED, progress: bool = True) -> dict:
    """{"summary": {metric: value}, "examples": {task: [first few (prompt, truth, output)]}}."""
    from tqdm import tqdm

    summary: dict[str, Any] = {}
    shown: dict[str, list] = {k: [] for k in synthetic.KINDS}
    bar = tqdm(total=4 * scenes, desc="evaluate", disable=not progress)

    for kind in ("caption", "answer"):
        items = list(_scenes(kind, scenes, seed))
        hits = 0
        for i in range(0, len(items), 16):
            chunk = items[i : i + 16]
            results = pipe.generate(
                [s.image for s, _ in chunk], [e["prefix"] for _, e in chunk], max_new_tokens=32
            )
            for (_, e), r in zip(chunk, results, strict=True):
                hits += r.text.strip() == e["suffix"]
                if len(shown[kind]) < 5:
                    shown[kind].append((e["prefix"], e["suffix"], r.text))
            bar.update(len(chunk))
        summary["caption_exact_match" if kind == "caption" else "vqa_accuracy"] = hits / scenes

    found = truths = false_pos = 0
    for scene, e in _scenes("detect", scenes, seed):
        objs = pipe.detect(scene.image, e["queries"])
        truth = [(_label(t, e["queries"]), t.box) for t in scene.things]
        truth = [t for t in truth if t[0] is not None]
        preds = [(o.label, o.box) for o in objs if o.valid]
        pairs = [p for p in match(truth, preds, lambda a, b: box_iou(a[1], b[1])) if p[2] >= 0.5]
        found, truths = found + len(pairs), truths + len(truth)
        false_pos += len(preds) - len(pairs)
        if len(shown["detect"]) < 5:
            shown["detect"].append((e["prefix"], e["suffix"], objs.text))
        bar.update(1)
    summary["detection_recall@0.5"] = found / max(truths, 1)
    summary["detection_fp_per_image"] = false_pos / scenes

    ious: list[float] = []
    encode = partial(mask_to_codes, pipe.mask_vae)  # renders the reference suffixes
    for scene, e in _scenes("segment", scenes, seed, encode):
        objs = pipe.segment(scene.image, e["queries"])
        truth = [(_label(t, e["queries"]), t.mask) for t in scene.things]
        truth = [t for t in truth if t[0] is not None]
        preds = [(o.label, o.mask) for o in objs if o.valid and o.mask is not None]
        pairs = match(truth, preds, lambda a, b: mask_iou(a[1], b[1]))
        ious += [v for _, _, v in pairs] + [0.0] * (len(truth) - len(pairs))
        if len(shown["segment"]) < 5:
            shown["segment"].append((e["prefix"], e["suffix"], objs.text))
        bar.update(1)
    bar.close()
    summary["segmentation_miou"] = float(np.mean(ious)) if ious else 0.0
    summary = {k: round(v, 4) for k, v in summary.items()}
    return {"summary": summary, "examples": shown}


def _label(thing: synthetic.Thing, queries: list[str]) -> str | None:
    return next((q for q in queries if q in (thing.shape, thing.name)), None)


def main(argv: list[str] | None = None) -> None:
    from ..pipeline import load

    p = argparse.ArgumentParser(prog="python -m paligemma.demo.evaluate", description=__doc__)
    p.add_argument("model", nargs="?", default=None, help="checkpoint (default: embedded model)")
    p.add_argument("--scenes", type=int, default=200, help="held-out scenes per task")
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--quantize", choices=["int8", "int4"], help="score the model with quantised decoder"
    )
    args = p.parse_args(argv)
    pipe = load(args.model, dtype=torch.float32, quantize=args.quantize)
    result = evaluate(pipe, args.scenes, args.seed)
    for kind, rows in result["examples"].items():
        for prompt, truth, output in rows[:2]:
            print(f"[{kind}] {prompt!r}: expected {truth!r}, got {output!r}")
    for k, v in result["summary"].items():
        print(f"{k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
