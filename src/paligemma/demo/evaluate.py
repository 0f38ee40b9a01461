"""Score a model on held-out synthetic scenes, per task, through the public pipeline:

    python -m paligemma.demo.evaluate [MODEL] [--scenes 200] [--json OUT.json]

MODEL defaults to the embedded model. Scenes come from a seed the training never uses
(`EVAL_SEED`), written out in COCO / JSONL formats (`export_scenes`) and scored by the same
harness as `paligemma eval` (no special path). Metrics: caption and VQA exact match
(`--task exact`); detection (`--task coco-det`): ground-truth objects matched one-to-one (same
label, IoU >= 0.5, best IoU first) as a fraction of all ground-truth objects, and unmatched
predictions per image; segmentation (`--task coco-seg`): mean over ground-truth objects of the
mask IoU of its one-to-one match (0 when unmatched), on full-resolution masks.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ..eval import evaluate_dataset
from ..eval.matching import match
from ..metrics import box_iou, mask_iou
from .export import EVAL_SEED, export_scenes

__all__ = ["EVAL_SEED", "box_iou", "evaluate", "mask_iou", "match"]

# summary key -> (harness task, exported file, the harness's metric)
RUNS = {
    "caption_exact_match": ("exact", "caption", "exact_match"),
    "vqa_accuracy": ("exact", "answer", "exact_match"),
    "detection_recall@0.5": ("coco-det", "detect", "recall50"),
    "detection_fp_per_image": ("coco-det", "detect", "false_pos_per_image"),
    "segmentation_miou": ("coco-seg", "segment", "matched_mIoU"),
}


def evaluate(pipe, scenes: int = 200, seed: int = EVAL_SEED, progress: bool = True) -> dict:
    """{"summary": {metric: value}, "examples": {task: [first few (prompt, truth, output)]},
    "harness": {file: the harness's whole scores}}: the scenes written out by
    `export_scenes`, scored by `paligemma eval`'s harness (paligemma.eval)."""
    summary, examples, harness = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        files = export_scenes(tmp, scenes, seed)
        for key, (task, name, metric) in RUNS.items():
            if name not in harness:
                out = Path(tmp) / f"out-{name}"
                harness[name] = evaluate_dataset(pipe, task, files[name], out, progress=progress)
                rows = [json.loads(x) for x in (out / "predictions.jsonl").open()][:5]
                examples[name] = [(r["prompt"], _truth(r), r["text"]) for r in rows]
            summary[key] = round(float(harness[name][metric]), 4)
    return {"summary": summary, "examples": examples, "harness": harness}


def _truth(row: dict) -> str:
    """A row's expected answer as text: the reference, or the true objects' count."""
    if "references" in row:
        return row["references"][0]
    found = row["match"]
    return f"{found['truths']} true object(s)"


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
