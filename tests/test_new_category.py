"""The README's COCO -> fine-tune -> eval walk-through, end to end on a few images: the dataset
is official COCO instances JSON, and every step is the real command line (data convert,
finetune, eval), so a broken link in the loop fails here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_loop_runs_and_the_new_category_starts_at_zero(tmp_path):
    out, results = tmp_path / "stars", tmp_path / "result.json"
    args = ["--out", str(out), "--train", "8", "--val", "4", "--steps", "2", "--batch-size", "4"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "new_category.py"), *args]
    subprocess.run([*cmd, "--json", str(results)], check=True, timeout=600)
    result = json.loads(results.read_text())
    coco = json.loads((out / "val.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["star"]
    assert coco["annotations"] and all(a["segmentation"] for a in coco["annotations"])
    assert result["mAP50"]["before"] == 0.0  # the embedded model has never seen a star
    assert 0.0 <= result["mAP50"]["after"] <= 1.0
    assert (out / "run" / "model" / "model.safetensors").is_file()
    lines = (out / "train.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all('"detect star"' in line for line in lines)
    scores = json.loads((out / "eval_after" / "scores.json").read_text())
    assert {"mAP", "mAP50", "per_class"} <= scores.keys() and "star" in scores["per_class"]
