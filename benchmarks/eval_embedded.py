"""The full held-out evaluation of the shipped embedded model, float32 and with an int8 / int4
decoder, written where the README's score table is checked against it (not a test; about 40 s
per model on 2 CPU cores):

    python benchmarks/eval_embedded.py        # -> benchmarks/results/embedded_eval.json

The file records the SHA-256 of the weights it scored and, beside the 200-scene scores, the
float32 scores of the first `SUBSET` scenes per task (the same scenes, in the same batches):
tests/test_embedded.py re-evaluates that subset in a few seconds, which ties the README's
numbers to the weights in the package without running the whole evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from paligemma import load
from paligemma.demo.evaluate import EVAL_SEED, evaluate
from paligemma.pipeline import EMBEDDED_DIR

SUBSET = 16  # one generate() batch of 16 per text task: exactly the full run's first batch
RESULTS = Path(__file__).parent / "results" / "embedded_eval.json"


def weights_sha256() -> str:
    return hashlib.sha256((Path(EMBEDDED_DIR) / "model.safetensors").read_bytes()).hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenes", type=int, default=200, help="held-out scenes per task")
    p.add_argument("--json", default=str(RESULTS))
    args = p.parse_args()
    result = {"weights_sha256": weights_sha256(), "seed": EVAL_SEED, "scenes": args.scenes}
    for mode in ("float32", "int8", "int4"):
        pipe = load(dtype=torch.float32, quantize=None if mode == "float32" else mode)
        result[mode] = evaluate(pipe, args.scenes, progress=False)["summary"]
        print(mode, result[mode], flush=True)
        if mode == "float32":
            subset = evaluate(pipe, SUBSET, progress=False)["summary"]
            result["subset"] = {"scenes": SUBSET, "float32": subset}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
