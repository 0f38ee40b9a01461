"""quant/malloc.py: after a CPU model's load, a freed activation-sized block is reused without
the kernel faulting its pages in again; PALIGEMMA_MALLOC=0 leaves glibc's defaults."""

import json
import os
import platform
import subprocess
import sys

import pytest

# In a fresh process (the settings are the process's): load the embedded model on the CPU (which
# calls keep_freed_blocks), then allocate, touch and free a 32 MB tensor (a 448 px prefill's
# largest activation) a few times and count the page faults of doing it three times more.
PROBE = """
import json, resource, torch, paligemma
from paligemma.quant import malloc
paligemma.load()
def touch():
    x = torch.ones(8 << 20)  # 32 MB of float32
    del x
for _ in range(3):  # the heap grows to hold it (one or two touches)
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"set": malloc.keep_freed_blocks(), "faults": faults}))
"""


def probe(setting: str) -> dict:
    env = os.environ | {"PALIGEMMA_MALLOC": setting}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_blocks_are_reused_without_page_faults():
    on, off = probe("1"), probe("0")
    assert on["set"] is True and off["set"] is False
    # glibc's defaults map and unmap each 32 MB block: ~8,192 faults a touch (4 KB pages)
    assert off["faults"] > 3 * 4000, off
    assert on["faults"] < 200, on
