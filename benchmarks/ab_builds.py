"""Two builds of the CPU kernels, A/B at the kernel level: an earlier commit's tree against this
one, in alternating processes (not a test):

    python benchmarks/ab_builds.py --base 7aeb45a [--pairs 4] [--rows 1 2 4 8 16]
                                   [--only "dot ours default"] [--json F]

Each build is its own library (kernels.py keys its cache by the sources), so the two cannot load
in one process: the commit is checked out with `git worktree` into a temporary folder, and each
pair runs benchmarks/bench_kernels.py once from that tree and once from this one (PYTHONPATH
set to each tree's src; the order alternates from pair to pair). Prints and writes, per path and
row count, both builds' median time and the median (and range) of the per-pair ratios base /
this (above 1: this build is faster). On a shared host the speed of a whole process drifts, so
only the paired ratios are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tree(tree: Path, args, out: Path) -> dict:
    """bench_kernels.py's tables from `tree`'s sources: {rows: {path: {"ms", "gb_s"}}}."""
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_kernels.py"), "--json", str(out)]
    cmd += ["--rows", *map(str, args.rows), "--calls", str(args.calls), "--only", *args.only]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["tables"]


def compare(runs: list[tuple[dict, dict]]) -> dict:
    """{"<path> r<rows>": base / this medians and ranges} over the pairs (base, this)."""
    out = {}
    for rows, table in runs[0][1].items():
        for path in table:
            if path not in runs[0][0].get(rows, {}):
                continue
            base = [b[rows][path]["ms"] for b, _ in runs]
            this = [t[rows][path]["ms"] for _, t in runs]
            ratios = [b / t for b, t in zip(base, this, strict=True)]
            out[f"{path} r{rows}"] = {
                "base_ms": statistics.median(base),
                "this_ms": statistics.median(this),
                "ratio_median": statistics.median(ratios),
                "ratios": ratios,
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", required=True, help="the earlier commit")
    ap.add_argument("--pairs", type=int, default=4, help="process pairs (default 4)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--calls", type=int, default=20, help="bench_kernels.py's rounds (median)")
    ap.add_argument("--only", nargs="+", default=["dot ours default"], help="paths (substrings)")
    ap.add_argument("--json", help="write the comparison here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", str(base), args.base], check=True)
        try:
            runs = []
            for k in range(args.pairs):
                order = [base, ROOT] if k % 2 == 0 else [ROOT, base]
                got = {tree: run_tree(tree, args, Path(tmp) / "out.json") for tree in order}
                runs.append((got[base], got[ROOT]))
                print(f"pair {k + 1} of {args.pairs} done", flush=True)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(base)], check=True)
    result = compare(runs)
    for name, r in result.items():
        lo, hi = min(r["ratios"]), max(r["ratios"])
        print(
            f"  {name:32} base {r['base_ms']:7.3f} ms  this {r['this_ms']:7.3f} ms  "
            f"base / this {r['ratio_median']:.2f} ({lo:.2f}-{hi:.2f})"
        )
    if args.json:
        meta = {"base": args.base, "pairs": args.pairs, "rows": args.rows, "only": args.only}
        Path(args.json).write_text(json.dumps({**meta, "results": result}, indent=1))


if __name__ == "__main__":
    main()
