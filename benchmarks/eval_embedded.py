"""The full held-out evaluation of the shipped embedded model, in float32, in bfloat16 and with
an int8 / int4 decoder (float32 otherwise), written where the README's score table is checked
against it (not a test; about 40 s per model on 2 CPU cores):

    python benchmarks/eval_embedded.py        # -> benchmarks/results/embedded_eval.json
    python benchmarks/eval_embedded.py --modes int4   # re-score one, keep the file's others

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

MODES = ("float32", "bfloat16", "int8", "int4")  # bfloat16: the reference of int8 / int4
SUBSET = 16  # one generate() batch of 16 per text task: exactly the full run's first batch
RESULTS = Path(__file__).parent / "results" / "embedded_eval.json"


def weights_sha256() -> str:
    return hashlib.sha256((Path(EMBEDDED_DIR) / "model.safetensors").read_bytes()).hexdigest()


def pipeline(mode: str):
    """The embedded model as `mode` scores it: float32 or bfloat16 weights and activations, or
    a float32 model whose decoder is quantised at load ("int8", "int4")."""
    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    return load(dtype=dtype, quantize=mode if mode in ("int8", "int4") else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenes", type=int, default=200, help="held-out scenes per task")
    p.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}")
    p.add_argument("--json", default=str(RESULTS))
    args = p.parse_args()
    result = {"weights_sha256": weights_sha256(), "seed": EVAL_SEED, "scenes": args.scenes}
    modes = args.modes.split(",")
    if set(modes) != set(MODES):  # a partial run updates the file's other scores
        old = json.loads(Path(args.json).read_text())
        if {k: old[k] for k in result} != result:
            raise SystemExit(f"{args.json} scored other weights, seed or scenes: run every mode")
        result = old
    for mode in modes:
        pipe = pipeline(mode)
        result[mode] = evaluate(pipe, args.scenes, progress=False)["summary"]
        print(mode, result[mode], flush=True)
        if mode == "float32":
            subset = evaluate(pipe, SUBSET, progress=False)["summary"]
            result["subset"] = {"scenes": SUBSET, "float32": subset}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
