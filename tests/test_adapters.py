"""Many LoRA adapters on one base (lora/multi.py): each row answers as its adapter alone, and
`paligemma serve --adapter NAME=DIR` serves them by the request's `model`."""

from __future__ import annotations

import concurrent.futures as cf
import copy

import httpx
import numpy as np
import pytest
import torch
from server_util import chat_body, running

import paligemma
from paligemma.demo import synthetic
from paligemma.lora import Adapters, apply_lora_, lora_modules, save_adapter
from paligemma.serve import Settings, create_app  # noqa: F401


def make_adapter(base, out_dir, seed: int, targets=None) -> str:
    """A trained-looking adapter on the embedded model: B random (seeded), so it answers its own
    way; written as save_adapter writes it (PEFT's format)."""
    pipe = copy.deepcopy(base)
    torch.manual_seed(seed)
    kwargs = {} if targets is None else {"targets": targets}
    apply_lora_(pipe.model, rank=4, alpha=8, **kwargs)
    with torch.no_grad():
        for m in lora_modules(pipe.model).values():
            m.lora_B.normal_(0, 0.5)
    save_adapter(pipe.model, out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, embedded_pipe):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "red": make_adapter(embedded_pipe, root / "red", 1),
        "blue": make_adapter(
            embedded_pipe, root / "blue", 2, targets=("q_proj", "v_proj", "down_proj")
        ),
    }


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(7)
    return [synthetic.make_scene(rng, size=(96, 96)).image for _ in range(4)]


@pytest.fixture(scope="module")
def alone(adapter_dirs, scenes, embedded_pipe):
    """Each adapter's (and the base's) answers from `paligemma.load(base, adapter=DIR)`."""
    out = {}
    for name, d in [(None, None), *adapter_dirs.items()]:
        pipe = embedded_pipe if d is None else paligemma.load(adapter=d)
        out[name] = [r.text for r in pipe.generate(scenes, ["caption en"] * 4, max_new_tokens=12)]
    return out


def test_per_row_adapters_answer_as_each_adapter_alone(adapter_dirs, scenes, alone, embedded_pipe):
    assert len({tuple(v) for v in alone.values()}) == 3  # the adapters answer differently
    pipe = copy.deepcopy(embedded_pipe)
    adapters = Adapters(pipe.model, adapter_dirs)
    assert adapters.names == ["red", "blue"]
    rows = ["red", None, "blue", "red"]
    adapters.select(rows)
    got = [r.text for r in pipe.generate(scenes, ["caption en"] * 4, max_new_tokens=12)]
    assert got == [alone[name][i] for i, name in enumerate(rows)]
    adapters.select(["blue"] * 4)  # one adapter for every row: the plain path
    got = [r.text for r in pipe.generate(scenes, ["caption en"] * 4, max_new_tokens=12)]
    assert got == alone["blue"]
    with pytest.raises(KeyError, match="unknown adapters"):
        adapters.select(["green"])
