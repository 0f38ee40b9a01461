"""The plain bfloat16 prefill's GEMM (bf16_mm, quant/matvec.py) against F.linear (not a test):

    python benchmarks/bench_bf16_mm.py [--rows 260 384 1030] [--threads 2] [--cpu-time]
                                       [--repeats 5] [--e2e 224] [--layers 2 --vision-layers 2]

GEMM: PaliGemma-3B's prefill shapes (decoder 2048 -> 2048 / 256 / 16384, 16384 -> 2048;
SigLIP 1152 -> 1152 / 4304) at each row count, ours and F.linear interleaved, medians and the
ratio per shape and summed. --e2e SIZE: one prefill of profile_prefill.py's 3B-shaped model
(install_matvec_ as load_model does) with matvec.AMX_PREFILL on and off, interleaved.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench_generate
import profile_prefill as pp

from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import matvec

SHAPES = [(2048, 2048), (2048, 256), (2048, 16384), (16384, 2048), (1152, 1152), (1152, 4304)]


def timed(fn, *args) -> float:
    start = pp.CLOCK["clock"]()
    fn(*args)
    return pp.CLOCK["clock"]() - start


def gemms(rows: int, repeats: int) -> None:
    total = {"F.linear": 0.0, "ours": 0.0}
    for i, o in SHAPES:
        x = torch.randn(rows, i).to(torch.bfloat16)
        w = (torch.randn(o, i) * 0.02).to(torch.bfloat16)
        runs = {
            "F.linear": partial(timed, F.linear, x, w),
            "ours": partial(timed, torch.ops.paligemma_cpu.bf16_mm, x, w, None, matvec.TILE),
        }
        med = pp.interleaved(runs, repeats)
        for n, v in med.items():
            total[n] += v
        ratio = med["ours"] / med["F.linear"]
        print(
            f"{rows} rows {i} -> {o}: F.linear {med['F.linear'] * 1e3:.1f} ms, ours "
            f"{med['ours'] * 1e3:.1f} ms, ours / F.linear {ratio:.2f}"
        )
    print(f"{rows} rows, all shapes: ours / F.linear {total['ours'] / total['F.linear']:.3f}")


def prefill(size: int, args) -> None:
    model = pp.random_model(pp.shaped_config(size, args.layers, args.vision_layers))
    x = bench_generate.inputs(model.cfg, 1, 10)  # (random_model installs the CPU linears)

    def run(on: bool) -> float:
        matvec.AMX_PREFILL = on
        return pp.timed(pp.prefill_ours, model, x)

    med = pp.interleaved({"on": partial(run, True), "off": partial(run, False)}, args.repeats)
    print(
        f"{size} px prefill: on {med['on']:.3f} s, off {med['off']:.3f} s, "
        f"on / off {med['on'] / med['off']:.3f}"
    )


def main() -> None:
    ap = pp.parser(__doc__, 5)
    ap.add_argument("--rows", type=int, nargs="*", default=[260, 384, 1030])
    ap.add_argument("--e2e", type=int, nargs="*", default=[], help="image sizes, end to end")
    args = ap.parse_args()
    pp.setup(args)
    assert cpu_kernels.available() and cpu_kernels.amx_bf16(), "needs AMX-BF16"
    with torch.inference_mode():
        for rows in args.rows:
            gemms(rows, args.repeats)
    for size in args.e2e:
        prefill(size, args)


if __name__ == "__main__":
    main()
