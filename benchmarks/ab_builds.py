"""Two builds of the CPU kernels, A/B at the kernel level: an earlier commit's tree against this
one, in alternating processes (not a test):

    python benchmarks/ab_builds.py --base 7aeb45a [--pairs 4] [--rows 1 2 4 8 16]
                                   [--only "dot ours default"] [--json F]

Each build is its own library (kernels.py keys its cache by the sources) whose ops have the same
names, so two whole libraries cannot load in one process: the commit is checked out with `git
worktree` into a temporary folder, and each pair runs benchmarks/bench_kernels.py once from that
tree and once from this one (PYTHONPATH set to each tree's src; the order alternates from pair
to pair). Prints and writes, per path and row count, both builds' median time and the median
(and range) of the per-pair ratios base / this (above 1: this build is faster). On a shared
host the speed of a whole process drifts, so only the paired ratios are compared.

    python benchmarks/ab_builds.py --base d9821fb --attention 224 448 [--pairs 6] [--json F]

--attention: the prefill attention kernel (bench_prefill_attention.py's "ours" at those sizes'
shapes, --calls rounds) instead of the dot kernels, the same way.

    python benchmarks/ab_builds.py --base 2baf5d4 --in-process [--rounds 30] [--json F]
                                   [--dtype bfloat16] [--isa 1 --vnni 0]

--in-process: the base commit's int4_dot / int8_dot (int4_dot.cpp, int4_dot_isa.cpp's parts,
their headers) is built as an op library of its own (torch.ops.paligemma_base) and loaded beside
this tree's, so both run in one process, one call after the other on the same inputs: drift
between processes drops out. For each of the decoder's shapes (q/k/v, o, gate/up, down) and the
output head, int4 and int8, at 1 row (or --rows), enough copies of the weight to pass the last
level cache are multiplied in turn, the two builds alternating round by round (the order
alternating too); per shape the GB/s of each, the median (and range) of the per-round ratios,
and whether the two agree bit for bit. --dtype: the products' output (bfloat16 as the decode
steps ask; default float32); --isa / --vnni: one instruction set's loop (e.g. plain AVX2 on a
CPU that has more) instead of the CPU's best.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# PaliGemma-3B's decoder (q, k, v as one; o; gate; down) and its output head: (O, I)
SHAPES = [(2_560, 2_048), (2_048, 2_048), (16_384, 2_048), (2_048, 16_384), (257_216, 2_048)]
COPY = 2**29  # --in-process: bytes of weight copies per shape (past the last level cache)
LIBS = {"base": "paligemma_base", "this": "paligemma_cpu"}


def run_tree(tree: Path, args, out: Path) -> dict:
    """bench_kernels.py's tables from `tree`'s sources: {rows: {path: {"ms", "gb_s"}}}; with
    --attention, bench_prefill_attention.py's times of our kernel: {"attention": {shape: ...}}."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    if args.attention:
        cmd = [sys.executable, str(tree / "benchmarks" / "bench_prefill_attention.py")]
        cmd += ["--sizes", *map(str, args.attention), "--rounds", str(args.calls)]
        subprocess.run([*cmd, "--json", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
        shapes = json.loads(out.read_text())["results"].items()
        return {"attention": {name: {"ms": r["ours"]["ms"]} for name, r in shapes}}
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_kernels.py"), "--json", str(out)]
    cmd += ["--rows", *map(str, args.rows), "--calls", str(args.calls), "--only", *args.only]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["tables"]


def build_base(base: Path, tmp: Path) -> None:
    """`base`'s int4_dot.cpp and its loops, loaded as torch.ops.paligemma_base."""
    import torch
    from ab_dot import STUB

    from paligemma.quant import kernels

    quant = base / "src" / "paligemma" / "quant"
    for header in quant.glob("*.h"):  # (int4_dot_common.h includes amx_tile.h)
        (tmp / header.name).write_text(header.read_text())
    for name in ("int4_dot.cpp", "int4_dot_isa.cpp"):
        (tmp / name).write_text(
            (quant / name).read_text().replace("paligemma_cpu", "paligemma_base")
        )
    (tmp / "stub.cpp").write_text(STUB)
    compile_, link = kernels._flags()
    compile_ += ["-fvisibility=hidden"]  # its loops' names are this tree's too
    units = [("int4_dot.cpp", []), ("stub.cpp", [])]
    parts = kernels.PARTS["int4_dot_isa.cpp"]
    units += [("int4_dot_isa.cpp", [f"-DPG_DOT_PART={k}"]) for k in range(1, parts + 1)]
    objects = []
    for k, (name, defines) in enumerate(units):
        objects.append(str(tmp / f"unit{k}.o"))
        cmd = ["g++", "-c", str(tmp / name), *defines, "-o", objects[-1], *compile_]
        subprocess.run(cmd, check=True)
    out = tmp / "base.so"
    subprocess.run(["g++", *objects, "-o", str(out), "-shared", "-fopenmp", *link], check=True)
    torch.ops.load_library(str(out))


def alternate(ops: dict, x, copies: list, group: int, rounds: int, *extra) -> dict[str, list]:
    """Seconds per product of each op over `copies` of a weight, round by round (order
    alternating; a warm-up round first, dropped); `extra`: the ops' further arguments."""
    times: dict[str, list[float]] = {k: [] for k in ops}
    for r in range(rounds + 1):
        for k in list(ops)[:: 1 if r % 2 else -1]:
            start = time.perf_counter()
            for w, s in copies:
                ops[k](x, w, s, group, *extra)
            times[k].append((time.perf_counter() - start) / len(copies))
    return {k: t[1:] for k, t in times.items()}


def in_process(args) -> dict:
    """{"int<bits> <O>x<I> r<rows>": GB/s of each, per-round ratios base / this, bit_exact}."""
    import torch
    from ab_dot import quantized

    from paligemma.quant import linear as q

    out = {}
    extra = (args.isa, args.vnni, getattr(torch, args.dtype))  # the path, the output's dtype
    for o, i in SHAPES:
        for bits, layer in quantized(o, i, torch.bfloat16).items():
            size = sum(t.numel() * t.element_size() for t in (layer.weight, layer.scale))
            copies = [(layer.weight.clone(), layer.scale.clone()) for _ in range(-(-COPY // size))]
            group = layer.group if bits == 4 else q.INT8_DOT_GROUP
            name = "int4_dot" if bits == 4 else "int8_dot"
            ops = {k: getattr(getattr(torch.ops, lib), name) for k, lib in LIBS.items()}
            for rows in args.rows:
                x = torch.randn(rows, i).to(torch.bfloat16)
                same = torch.equal(*(op(x, *copies[0], group, *extra) for op in ops.values()))
                times = alternate(ops, x, copies, group, args.rounds, *extra)
                ratios = [b / t for b, t in zip(times["base"], times["this"], strict=True)]
                r = {f"{k}_gb_s": size / statistics.median(t) / 1e9 for k, t in times.items()}
                r |= {"ratio_median": statistics.median(ratios), "ratios": ratios}
                out[f"int{bits} {o}x{i} r{rows}"] = r | {"bit_exact": same}
                print(
                    f"  int{bits} {o}x{i} r{rows}: base {r['base_gb_s']:5.1f} GB/s, this "
                    f"{r['this_gb_s']:5.1f} GB/s, base / this {r['ratio_median']:.2f} "
                    f"({min(ratios):.2f}-{max(ratios):.2f}), bit-exact {same}",
                    flush=True,
                )
    return out


def write_in_process(args, base: Path, tmp: Path) -> None:
    """--in-process: build `base`'s kernels, compare, print and write the JSON."""
    import torch
    from ab_decode_ops import cpu_name

    (tmp / "lib").mkdir()
    build_base(base, tmp / "lib")
    result = in_process(args)
    if args.json:
        meta = {"base": args.base, "in_process": True, "rows": args.rows, "rounds": args.rounds}
        meta |= {"dtype": args.dtype, "isa": args.isa, "vnni": args.vnni}
        meta["host"] = f"{cpu_name()}, {torch.get_num_threads()} threads"
        Path(args.json).write_text(json.dumps({**meta, "results": result}, indent=1))


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
            out[path if rows == "attention" else f"{path} r{rows}"] = {
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
    ap.add_argument(
        "--rows", type=int, nargs="+", help="rows of x (default: 1 2 4 8 16; --in-process: 1)"
    )
    ap.add_argument("--calls", type=int, default=20, help="bench_kernels.py's rounds (median)")
    ap.add_argument("--only", nargs="+", default=["dot ours default"], help="paths (substrings)")
    ap.add_argument("--json", help="write the comparison here")
    ap.add_argument("--in-process", action="store_true", help="both builds in one process")
    ap.add_argument(
        "--attention",
        type=int,
        nargs="+",
        choices=[224, 448, 896],
        help="compare the prefill attention kernel (bench_prefill_attention.py) at these sizes "
        "instead of the dot kernels; --calls: its rounds",
    )
    ap.add_argument("--rounds", type=int, default=30, help="--in-process: rounds (median)")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="--in-process: the products' output dtype (bfloat16: as the decode steps; default "
        "float32)",
    )
    ap.add_argument(
        "--isa",
        type=int,
        default=-1,
        help="--in-process: the kernels' instruction set (2 AVX-512, 1 AVX2, 0 scalar; default "
        "-1: the CPU's best)",
    )
    ap.add_argument(
        "--vnni",
        type=int,
        default=-1,
        help="--in-process: 0 without VNNI, 1 with, 2 AMX tiles (default -1: the CPU's best)",
    )
    args = ap.parse_args()
    args.rows = args.rows or ([1] if args.in_process else [1, 2, 4, 8, 16])
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", str(base), args.base], check=True)
        try:
            if args.in_process:
                return write_in_process(args, base, Path(tmp))
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
        meta["attention"] = args.attention
        Path(args.json).write_text(json.dumps({**meta, "results": result}, indent=1))


if __name__ == "__main__":
    main()
