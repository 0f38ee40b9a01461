"""What runs on this machine: the CPU's features, whether our kernels are built (and why not),
and the path each operation of bfloat16 CPU inference takes. Each answer is asked of the very
layers and functions that choose the path (a quantised layer's `_dot_rows` / `amx_prefill`,
matvec's `prefill_path`, attention's `attend`, ...), on small stand-in tensors, so it cannot
drift from what a model does. `paligemma info --kernels` prints it.

    report() -> {"cpu", "features", "threads", "torch", "env", "kernels", "paths", "cuda"}
    lines(report()) -> the text, one line a fact
"""

from __future__ import annotations

import os
import platform

import torch
from torch import nn

from . import attention, decode_block, decode_layers, gelu, matvec, rmsnorm
from . import kernels as cpu_kernels
from .linear import _HAS_KERNELS, DOT_ROWS, KERNEL_ROWS, Int4Linear, Int8Linear

# /proc/cpuinfo flag -> the name the paths below go by
FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512-BF16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}
ISA_NAMES = {0: "scalar", 1: "AVX2", 2: "AVX-512"}
PREFILL_ROWS = 268  # a 224 px prompt: 256 image tokens and a short prefix
WIDTH = 512  # the stand-in layers' width (a multiple of every group; 2^18 weights)


def cpu() -> tuple[str, list[str]]:
    """(the CPU's model name, its features of FEATURES' that matter here, in FEATURES' order)."""
    text = cpu_kernels.cpuinfo()
    if not text:
        return platform.processor() or platform.machine(), []
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return model, [name for flag, name in FEATURES.items() if flag in flags]


def dot_loop(rows: int) -> str:
    """The loop int4_dot / int8_dot run for `rows` rows of x: `cpu_kernels.dot_path`'s choice
    named as int4_dot.cpp's `path()` resolves it (VNNI where the path's width has it and the
    level allows it; AMX-INT8 tiles from AMX_ROWS rows where `cpu_kernels.amx()`)."""
    isa, level = cpu_kernels.dot_path(rows)
    has = cpu_kernels._vnni_flags()  # 1 AVX-VNNI, 2 AVX-512-VNNI
    can = (isa == 2 and has & 2) or (isa == 1 and has & 1)
    if level == -1 and isa == 2 and rows >= cpu_kernels.AMX_ROWS and cpu_kernels.amx():
        return "AMX-INT8 tiles"
    if isa == 0:
        return "scalar"
    vnni = can if level < 0 else level >= 1
    if isa == 2:
        return "AVX-512-VNNI" if vnni else "AVX-512 (no VNNI)"
    return "AVX-VNNI (256-bit)" if vnni else "AVX2 (no VNNI)"


def _quantized(mode: str) -> nn.Module:
    linear = nn.Linear(WIDTH, WIDTH, bias=False, dtype=torch.bfloat16)
    return Int8Linear.from_linear(linear) if mode == "int8" else Int4Linear.from_linear(linear)


def _decoding(layer: nn.Module, rows: int) -> str:
    """A quantised layer's product for `rows` bfloat16 rows (linear.py's order of choices)."""
    x = torch.zeros(rows, WIDTH, dtype=torch.bfloat16)
    if layer._dot_rows(x, layer._dot_kind()):
        return f"ours, int8 activations: {dot_loop(rows)}"
    if cpu_kernels.available() and rows <= KERNEL_ROWS:
        op = "int8_matmul" if isinstance(layer, Int8Linear) else "int4_matmul"
        return f"ours, float32 sums ({op}, {ISA_NAMES[cpu_kernels.isa()]})"
    return "PyTorch's packed kernel" if _HAS_KERNELS else "dequantised, PyTorch's GEMM"


def _by_rows(layer: nn.Module) -> dict[str, str]:
    """`_decoding` for 1..DOT_ROWS rows, runs of the same answer merged: {"2-4 rows": ...}."""
    answers = [_decoding(layer, rows) for rows in range(1, DOT_ROWS + 1)]
    out, start = {}, 1
    for end in range(1, DOT_ROWS + 1):
        if end == DOT_ROWS or answers[end] != answers[end - 1]:
            label = f"{start}-{end} rows" if start < end else f"{end} row{'s' * (end > 1)}"
            out[label] = answers[end - 1]
            start = end + 1
    return out


def _quantized_prefill(layer: nn.Module) -> str:
    x = torch.zeros(PREFILL_ROWS, WIDTH, dtype=torch.bfloat16)
    if layer.amx_prefill(x):
        return "ours: AMX-BF16 tiles, the codes dequantised into them"
    if not cpu_kernels.available():
        return "dequantised in blocks (Python) into PyTorch's GEMM"
    if cpu_kernels.f32_prefill():
        return "ours: dequantised in blocks into our float32 GEMM"
    return "ours: dequantised in blocks into PyTorch's bfloat16 GEMM"


def _dense_prefill() -> str:
    x = torch.zeros(PREFILL_ROWS, WIDTH, dtype=torch.bfloat16)
    w = torch.zeros(WIDTH, WIDTH, dtype=torch.bfloat16)
    path = matvec.prefill_path(x, w, None, rows_alone=False)
    names = {"amx": "ours: AMX-BF16 tiles (bf16_mm)", "f32": "ours: float32 GEMM (f32_mm)"}
    return names.get(path, "PyTorch's F.linear")


def _attention() -> str:
    q = torch.zeros(1, 1, attention.MIN_QUERIES, 64, dtype=torch.bfloat16)
    if attention.attend(q, q, q, None, 0.125) is not None:
        return "ours: AMX-BF16 tiles (attend_amx)"
    return "PyTorch's scaled_dot_product_attention"


def _dense_decode(x: torch.Tensor) -> str:
    w = torch.zeros(matvec.MV_MIN_WEIGHTS // WIDTH + 1, WIDTH, dtype=torch.bfloat16)  # model-sized
    if matvec.own_mv(x, w, None, rows_alone=False):
        return f"ours (bf16_mv, {ISA_NAMES[cpu_kernels.isa()]})"
    return "torch.mv" if matvec._matvec(x) else "F.linear"


def _decode_step() -> str:
    x = torch.zeros(1, 1, WIDTH, dtype=torch.bfloat16)
    # (a stand-in cache: plain_step asks only that there is one; the cache's own layout is
    # asked per step, step_key)
    if not decode_block.plain_step(x, cache=object(), start=0):
        return "Python, an ATen call per operation"
    if decode_layers.ONE_CALL:
        return "ours: a C++ call per block (decode_block.cpp), int8 / int4: all blocks in one"
    return "ours: a C++ call per block (decode_block.cpp)"


def paths() -> dict[str, str]:
    """Each operation of bfloat16 inference on this CPU -> the path it takes (module docstring)."""
    with torch.inference_mode():
        out = {}
        for mode in ("int8", "int4"):
            layer = _quantized(mode)
            for label, path in _by_rows(layer).items():
                out[f"{mode} decoding, {label}"] = path
            out[f"{mode} prefill"] = _quantized_prefill(layer)
        out["bfloat16 prefill products"] = _dense_prefill()
        x = torch.zeros(1, WIDTH, dtype=torch.bfloat16)
        out["bfloat16 decoding, 1 row"] = _dense_decode(x)
        out["prefill attention"] = _attention()
        out["decode step"] = _decode_step()
        ours = gelu._kernel_takes(x, None)
        out["tanh GELU"] = "ours (gelu.cpp)" if ours else "PyTorch's"
        wide = torch.zeros(1, rmsnorm.MIN_WIDTH, dtype=torch.bfloat16)
        ours = rmsnorm.kernel_takes(wide, torch.ones(rmsnorm.MIN_WIDTH))
        out["RMSNorm"] = "ours (decode_ops.cpp)" if ours else "PyTorch's"
    return out


def report() -> dict:
    """Everything `paligemma info --kernels` prints (JSON-ready)."""
    model, features = cpu()
    built = cpu_kernels.available()  # builds the kernels the first time
    kernels = {"built": built, "library": cpu_kernels.library(), "why_not": cpu_kernels.why_not()}
    if built:
        kernels["isa"] = ISA_NAMES[cpu_kernels.isa()]
        kernels["amx_int8"], kernels["amx_bf16"] = cpu_kernels.amx(), cpu_kernels.amx_bf16()
    envs = (cpu_kernels.ENV_SWITCH, cpu_kernels.ENV_ISA, "OMP_NUM_THREADS")
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": model,
        "features": features,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "env": {name: os.environ.get(name) for name in envs},
        "kernels": kernels,
        "paths": paths(),
        "cuda": cuda,
    }


def lines(r: dict) -> list[str]:
    """report()'s text: the machine, the kernels, then one line an operation."""
    out = [f"CPU        {r['cpu']} ({r['threads']} threads for torch {r['torch']})"]
    none = "(none of " + ", ".join(FEATURES.values()) + ")"
    out.append(f"features   {' '.join(r['features']) or none}")
    set_env = [f"{k}={v}" for k, v in r["env"].items() if v is not None]
    out.append(f"env        {' '.join(set_env) or '(none of ' + ', '.join(r['env']) + ' set)'}")
    k = r["kernels"]
    if k["built"]:
        amx = [n for n, on in (("AMX-INT8", k["amx_int8"]), ("AMX-BF16", k["amx_bf16"])) if on]
        tiles = f", {' and '.join(amx)} tiles granted" if amx else ", no AMX tiles"
        out.append(f"kernels    built, path {k['isa']}{tiles}: {k['library']}")
    else:
        out.append(f"kernels    NOT built ({k['why_not']}): PyTorch's kernels run instead")
    width = max(map(len, r["paths"]))
    out += [f"  {name:<{width}}  {path}" for name, path in r["paths"].items()]
    out.append(f"CUDA       {r['cuda'] or 'none'}")
    return out
