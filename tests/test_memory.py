"""Peak memory while loading stays within 1.3x the model's size in the target dtype.

Each load runs in a fresh process that resets its peak-RSS counter (/proc/self/clear_refs) just
before loading, so the number is the loader's own high-water mark above the settled baseline
(after torch's one-time lazy initialisation, a fixed ~75 MB that does not grow with the model).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bigvision_npz import write_bigvision_npz

import paligemma
from paligemma.checkpoints.names import our_name_to_hf

# ~120M parameters: 480 MB in float32, large against allocator and interpreter noise.
CFG = dataclasses.replace(
    paligemma.TINY,
    vision=paligemma.config.SiglipConfig(width=256, depth=2, num_heads=4, mlp_dim=512),
    text=paligemma.config.GemmaConfig(
        width=1024,
        depth=6,
        num_heads=8,
        num_kv_heads=1,
        head_dim=128,
        mlp_dim=4096,
        vocab_size=32_000,
    ),
    image_size=224,
    image_token_id=31_999,
)

PROBE = """
import sys, torch, paligemma
sys.path.insert(0, sys.argv[3])
from test_memory import CFG
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
with torch.device("meta"):  # torch's one-time lazy initialisation (~75 MB), not the loader's
    paligemma.PaliGemma(paligemma.TINY)
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
base = rss("VmRSS")
model = paligemma.load_model(sys.argv[1], dtype=getattr(torch, sys.argv[2]), config=CFG)
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(rss("VmHWM") - base, size)
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.manual_seed(0)
    model = paligemma.PaliGemma(CFG)
    root = tmp_path_factory.mktemp("mem")
    paligemma.save_model(model, root / "hf")  # float32, one file
    state = {our_name_to_hf(k, CFG): v for k, v in model.state_dict().items()}
    t = CFG.text
    write_bigvision_npz(
        state,
        root / "bv.npz",
        gemma2=False,
        num_heads=t.num_heads,
        num_kv_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        vision_heads=CFG.vision.num_heads,
        bf16_as_void=True,
    )
    return root


def peak_over_size(path: Path, dtype: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), dtype, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    peak, size = map(int, out.stdout.split()[-2:])
    return peak / size


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("hf", "float32"), ("hf", "bfloat16"), ("bv.npz", "bfloat16"), ("bv.npz", "float32")],
)
def test_peak_memory_within_1_3x(checkpoints, name, dtype):
    ratio = peak_over_size(checkpoints / name, dtype)
    print(f"{name} -> {dtype}: peak {ratio:.3f}x the model size")
    assert ratio <= 1.3, ratio
