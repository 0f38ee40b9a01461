"""glibc's malloc told to keep a CPU model's freed activations for reuse (Linux with glibc only).

By default glibc serves every block of 128 KB and more (the threshold rises to at most 32 MB as
blocks are freed) with its own mmap and gives it back to the kernel on free, and trims the heap's
free top past 128 KB. A prefill's activations are exactly such blocks, allocated and freed
layer after layer, so each one's pages are faulted in and zeroed by the kernel again: one
PaliGemma-3B-448 prefill took ~430,000 page faults (~1.7 GB of zeroed pages, 2 threads of an
AMX Xeon), one with the settings below ~370. `keep_freed_blocks()` raises the mmap threshold to
MMAP_THRESHOLD and the trim threshold to TRIM_THRESHOLD, so freed blocks stay in the heap and
the next layer reuses them; what the process holds after a prefill is what it held during it
(the peak RSS does not grow; benchmarks/bench_vs_transformers.py measures both).

`install_matvec_` (matvec.py) calls it once a CPU model is loaded (not before: the load's
large weights keep their own maps). The settings are the process's (malloc has no other
scope); PALIGEMMA_MALLOC=0 leaves glibc's defaults, for an embedding program that tunes malloc
itself.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

ENV = "PALIGEMMA_MALLOC"
MMAP_THRESHOLD = 256 << 20  # blocks under 256 MB from the heap (a 448 px prefill's largest: 34 MB)
TRIM_THRESHOLD = 1 << 30  # the heap's free top kept up to 1 GB
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache  # once per process
def keep_freed_blocks() -> bool:
    """Set glibc's thresholds (module docstring) once per process; True when they are set
    (now or before), False on other C libraries or with PALIGEMMA_MALLOC=0."""
    if os.environ.get(ENV, "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
