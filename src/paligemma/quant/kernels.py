"""Our CPU kernels (kernels.cpp and the sources it lists: quantised decoding, the bfloat16 and
quantised prefill GEMMs, attention, GELU, the decode step's loops), built once per machine on
first use.

`available()` compiles the C++ source with the system's C++ compiler (-O3 -mtune=native, against
the installed torch) into a cache directory and loads it; the ops then live under
`torch.ops.paligemma_cpu`. No compiler, a failed build, or PALIGEMMA_CPU_KERNELS=0: `available()`
is False and the quantised layers use PyTorch's own kernels (same results, slower decoding).
The source holds an AVX-512, an AVX2 + FMA and a scalar loop, chosen at run time from the CPU's
flags; PALIGEMMA_CPU_ISA=avx2 | scalar forces a lower one (`isa()` says which runs). The int4 x
int8-activation kernel (int4_dot.cpp) also uses VNNI where the CPU has it, and AMX-INT8 tiles
for AMX_ROWS rows and more where the CPU has them and the OS grants them (`amx()`; the same
results bit for bit): PALIGEMMA_CPU_ISA=avx512 | avx2 forces VNNI off, avx512vnni | avxvnni
names the VNNI levels without AMX, amx the default (`vnni()`). The quantised prefill
(dequant.cpp's dequant_mm, bfloat16 x) runs AMX-BF16 tiles with the dequantisation fused in
where `amx_bf16()`, under the same levels; so does the plain bfloat16 prefill (bf16_mm, from
matvec.py). gelu.cpp has the bfloat16 tanh GELU (and GeGLU product) that gelu.py runs.

    if cpu_kernels.available():
        y = torch.ops.paligemma_cpu.int8_matmul(x, q, scale, cpu_kernels.isa())   # f32[M, O]
        y = torch.ops.paligemma_cpu.int4_matmul(x, q, scale, group, cpu_kernels.isa())
        y = torch.ops.paligemma_cpu.int4_dot(x, q, scale, group, isa(), vnni())  # int8 x

Cache: $PALIGEMMA_CACHE or ~/.cache/paligemma, keyed by the source, torch's version and build
flags, and the CPU's model and flags, so a copied home directory never loads a foreign build.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.cpp")
OTHERS = (
    "dequant.cpp",
    "int4_dot.cpp",
    "int4_dot_isa.cpp",
    "quantize.cpp",
    "gelu.cpp",
    "decode_block.cpp",
    "decode_ops.cpp",
    "attend_amx.cpp",
    "bf16_mv.cpp",
)
SOURCES = (SOURCE, *(SOURCE.with_name(name) for name in OTHERS))  # one library
HEADERS = tuple(
    SOURCE.with_name(h)
    for h in (
        "amx_tile.h",
        "bf16_round.h",
        "f32_vec.h",
        "dequant_isa.h",
        "dequant_rows.h",
        "f32_gemm.h",
        "dequant_amx.h",
        "int4_dot_common.h",
        "int4_dot_body.h",
        "int4_quantize_x.h",
        "int4_dot_row.h",
        "int4_dot_batch.h",
        "int4_dot_slab.h",
        "int4_dot_amx.h",
        "decode_ops.h",
        "attend_avx512.h",
        "gelu_isa.h",
    )
)
# Sources compiled several times, once per -DPG_DOT_PART=k (an instruction set's loop each, so
# the parts compile in parallel: ~2 minutes as one file, the longest of the library).
PARTS = {"int4_dot_isa.cpp": 4}
ENV_SWITCH = "PALIGEMMA_CPU_KERNELS"
ENV_ISA = "PALIGEMMA_CPU_ISA"
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2}  # the kernels' paths, lowest first
VNNI = {"avxvnni": 1, "avx512vnni": 2}  # int4_dot's VNNI levels: name -> path
AMX = {"amx": 2}  # ... and the AMX level above them (its epilogue is AVX-512's)
AMX_ROWS = 8  # int4_dot.cpp's kAmxRows: the layers' AMX from this many rows (fewer: VNNI's faster)

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool, "error": str, "path": Path


def cache_dir() -> Path:
    root = os.environ.get("PALIGEMMA_CACHE") or Path.home() / ".cache" / "paligemma"
    return Path(root) / "kernels"


def cpuinfo() -> str:
    """/proc/cpuinfo's text, read once ("" where there is none)."""
    if "cpuinfo" not in _state:
        try:
            _state["cpuinfo"] = Path("/proc/cpuinfo").read_text()
        except OSError:
            _state["cpuinfo"] = ""
    return str(_state["cpuinfo"])


def _cpu_id() -> str:
    text = cpuinfo()
    if not text:
        return platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) against the installed torch."""
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    compile_ = ["-fPIC", "-std=c++17", "-O3", "-mtune=native", "-fopenmp"]
    compile_ += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w"]
    compile_ += ["-I" + p for p in cpp_extension.include_paths()]
    compile_ += ["-I" + sysconfig.get_paths()["include"]]
    link = []
    for lib in cpp_extension.library_paths():
        link += ["-L" + lib, "-Wl,-rpath," + lib]
    return compile_, [*link, "-lc10", "-ltorch", "-ltorch_cpu"]


def _jobs(compiler: str, compile_: list[str], tmp: Path) -> list[tuple[list[str], Path]]:
    """(compile command, object file) per translation unit: each source once, PARTS' sources
    once per part."""
    jobs = []
    for src in SOURCES:
        for k in range(1, PARTS.get(src.name, 0) + 1) or [None]:
            defines = [] if k is None else [f"-DPG_DOT_PART={k}"]
            obj = tmp / f"{src.stem}{'' if k is None else k}.o"
            jobs.append(([compiler, "-c", str(src), *defines, "-o", str(obj), *compile_], obj))
    return jobs


def _key(compiler: str, compile_: list[str], link: list[str]) -> str:
    """The build's identity: sources, headers, how they are compiled, torch, the CPU."""
    h = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES + HEADERS))
    commands = [cmd for cmd, _ in _jobs(Path(compiler).name, compile_, Path("obj"))]
    flags = " ".join([*map(" ".join, commands), *link])
    for part in (torch.__version__, torch.__config__.show(), flags, _cpu_id()):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the C++ build failed:\n{done.stderr[-2000:]}")


def _build() -> Path:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) found")
    compile_, link = _flags()
    path = cache_dir() / f"paligemma_cpu_{_key(compiler, compile_, link)}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(
        "paligemma: building the CPU kernels (once per machine and torch; 1-2 minutes)...",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        jobs = _jobs(compiler, compile_, Path(tmp))
        # one compiler per translation unit, as many at once as there are cores
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            list(pool.map(_run, [cmd for cmd, _ in jobs]))
        tmp_out = Path(tmp) / path.name
        objects = [str(obj) for _, obj in jobs]
        _run([compiler, *objects, "-o", str(tmp_out), "-shared", "-fopenmp", *link])
        os.replace(tmp_out, path)  # atomic: a concurrent process sees all or nothing
    return path


def available() -> bool:
    """True when torch.ops.paligemma_cpu is loaded (building it the first time)."""
    if "ok" in _state:
        return bool(_state["ok"])
    with _lock:
        if "ok" not in _state:
            if os.environ.get(ENV_SWITCH, "1") == "0":
                _state.update(ok=False, error=f"disabled by {ENV_SWITCH}=0")
            else:
                try:
                    path = _build()
                    torch.ops.load_library(str(path))
                    _state.update(ok=True, path=path)
                except Exception as e:  # any failure: fall back to PyTorch's kernels
                    _state.update(ok=False, error=str(e))
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    print(
                        f"paligemma: CPU kernels unavailable ({first}); using PyTorch's "
                        "(cpu_kernels.why_not() has the details)",
                        file=sys.stderr,
                    )
    return bool(_state["ok"])


def isa() -> int:
    """The kernels' path to run: the best this CPU has (2 AVX-512, 1 AVX2 + FMA, 0 scalar), or
    a lower one that PALIGEMMA_CPU_ISA names (for tests and comparisons). Needs available()."""
    if "best" not in _state:
        _state["best"] = int(torch.ops.paligemma_cpu.cpu_isa())
    best = int(_state["best"])
    name = os.environ.get(ENV_ISA, "")
    levels = ISAS | VNNI | AMX
    if name and name not in levels:
        raise ValueError(f"{ENV_ISA} must be one of {', '.join(levels)}, got {name!r}")
    return min(levels[name], best) if name else best


def vnni() -> int:
    """int4_dot's dot product: -1 the CPU's (AMX where `amx()`, else VNNI where it has it), -2
    VNNI without AMX (PALIGEMMA_CPU_ISA names a VNNI level), 0 without VNNI (it names a level
    below them). Needs available()."""
    name = os.environ.get(ENV_ISA, "")
    return 0 if name in ISAS else (-2 if name in VNNI else -1)


def amx() -> bool:
    """True when int4_dot / int8_dot run AMX-INT8 tiles for AMX_ROWS rows and more: the CPU has
    them, the OS granted them to this process, and PALIGEMMA_CPU_ISA names no lower level."""
    return vnni() == -1 and isa() == 2 and bool(torch.ops.paligemma_cpu.cpu_amx())


def amx_bf16() -> bool:
    """True when dequant_mm (the quantised prefill) runs its AMX-BF16 GEMM: the CPU has AMX-BF16
    and AVX512-BF16, the OS granted the tiles, and PALIGEMMA_CPU_ISA names no lower level."""
    if "amx_bf16" not in _state:
        _state["amx_bf16"] = bool(torch.ops.paligemma_cpu.cpu_amx_bf16())
    return vnni() == -1 and isa() == 2 and bool(_state["amx_bf16"])


# bfloat16 prefill products in float32 (dequant_mm's f32, f32_mm): None where PyTorch has no fast
# bfloat16 GEMM on this CPU, True / False always / never. Measured on a 2-core AMD EPYC (AVX2):
# F.linear at 266 x 2048 -> 16384, bfloat16 20 GFLOP/s against float32 99 GFLOP/s.
F32_PREFILL: bool | None = None


def f32_prefill() -> bool:
    """True when bfloat16 prefills should run float32 products (F32_PREFILL; by default where
    PyTorch's oneDNN has no bfloat16 GEMM for this CPU: AVX-512 or AVX2-VNNI-2 missing)."""
    if F32_PREFILL is not None:
        return F32_PREFILL
    if "f32_prefill" not in _state:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        _state["f32_prefill"] = check is None or not bool(check())
    return bool(_state["f32_prefill"])


# int4_dot / int8_dot at up to this many rows run AVX-VNNI's 256-bit code where the CPU has it,
# even with AVX-512-VNNI: measured 1.9x faster at 1 row and 1.25-1.6x at 4 rows on a Xeon with
# both (1 thread, 16384 x 2048, the weight in cache), while from 8 rows the wider AVX-512 one is
# 1.4-1.9x faster.
NARROW_VNNI_ROWS = 4
# ... but a single row takes AVX-512-VNNI where the CPU has it, unless it is AMD's (None: by
# the vendor; True / False: AVX-512-VNNI's / AVX-VNNI's everywhere). Decoding PaliGemma-3B-224
# (weights from memory, 2 threads, paired rounds in one process, wide / narrow): on a 2-vCPU
# Xeon with both, int4 1 row 1.034x (10 of 10 rounds faster), 2 rows 1.003x, 4 rows 0.954x;
# int8 2 rows 1.026x, 4 rows 0.894x (one int8 row takes the float kernel here); on a 2-vCPU AMD
# EPYC (Zen 5) with both, int4 1 row 0.831x (`ab_decode_ops.py --switch WIDE_ONE_ROW`).
WIDE_ONE_ROW: bool | None = None


def dot_path(rows: int) -> tuple[int, int]:
    """(isa, vnni) for int4_dot / int8_dot on `rows` rows: the CPU's best, except AVX-VNNI's
    256-bit path for up to NARROW_VNNI_ROWS rows (but a single row where the CPU has
    AVX-512-VNNI, `wide_one_row()`); PALIGEMMA_CPU_ISA, when set, decides alone. Needs
    available()."""
    return _dot_path(rows)


def _dot_path(rows: int) -> tuple[int, int]:
    """dot_path's answer (tests spy on dot_path's calls as the kernels' calls)."""
    few = not os.environ.get(ENV_ISA) and rows <= NARROW_VNNI_ROWS and _avx_vnni()
    if few and not (rows == 1 and wide_one_row() and _wide()):
        return 1, 1
    return isa(), vnni()


def wide_one_row() -> bool:
    """WIDE_ONE_ROW, or where it is None whether the CPU is not AMD's."""
    return (not amd()) if WIDE_ONE_ROW is None else WIDE_ONE_ROW


def amd() -> bool:
    """The CPU is AMD's (/proc/cpuinfo's vendor_id AuthenticAMD; False where unknown)."""
    lines = cpuinfo().splitlines()
    return any(ln.startswith("vendor_id") and "AuthenticAMD" in ln for ln in lines)


def _wide() -> bool:
    """The CPU's best dot path is AVX-512-VNNI (or AMX). Needs available()."""
    return isa() == 2 and bool(_vnni_flags() & 2)


def _avx_vnni() -> bool:
    """The CPU has AVX-VNNI (the 256-bit VNNI). Needs available()."""
    return bool(_vnni_flags() & 1)


def _vnni_flags() -> int:
    """cpu_vnni(): 1 AVX-VNNI, 2 AVX-512-VNNI, 3 both, 0 neither. Needs available()."""
    if "vnni" not in _state:
        _state["vnni"] = int(torch.ops.paligemma_cpu.cpu_vnni())
    return int(_state["vnni"])


def int8_dot_from() -> int:
    """The fewest rows at which int8 layers take int8_dot (int8 activations, integer products)
    rather than the float kernel int8_matmul: 1 where a row runs int8_dot's AVX2 loop without
    VNNI (its one-row loop, int4_dot_row.h; on a 2-core AMD EPYC 34.6 GB/s a core from cache
    against 13.7 for the transposing loop, and batch-1 int8 decoding 1.10x the float kernel's
    rate, median of 6 rounds alternating in one process), else 2 (the VNNI / AMX hosts'
    measurement: there the float kernel leads at one row). Needs available(). Asked per layer
    and decode step, so kept per PALIGEMMA_CPU_ISA value."""
    key = "int8_dot_from:" + os.environ.get(ENV_ISA, "")
    if key not in _state:
        path, level = _dot_path(1)  # level -1 / -2: VNNI where the CPU has it
        _state[key] = 1 if path == 1 and (level == 0 or not _avx_vnni()) else 2
    return int(_state[key])


def library() -> str | None:
    """The built library's path (None until `available()` has loaded it)."""
    path = _state.get("path")
    return None if path is None else str(path)


def why_not() -> str | None:
    """Why `available()` is False (None when it is True or was not asked yet)."""
    return None if _state.get("ok", True) else str(_state.get("error"))
