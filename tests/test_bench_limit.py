"""benchmarks/bench_vs_transformers.py's bandwidth limit: the bytes a decode step reads are the
loaded model's own, codes and scales (int4's bfloat16 scale per group is part of its stream)."""

from __future__ import annotations

import pytest
import torch
from conftest import bench_module, tiny_hf_model

import paligemma


@pytest.fixture(scope="module")
def bench():
    return bench_module("bench_vs_transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-limit")
    tiny_hf_model(False, seed=3).save_pretrained(path)
    return path


def test_bfloat16_reads_what_the_configuration_says(bench, checkpoint):
    model = paligemma.load_model(checkpoint, dtype=torch.bfloat16)
    assert bench.decode_weight_bytes(model) == bench.weight_bytes_per_token(model.cfg, 2, 2)


@pytest.mark.parametrize("mode, nominal", [("int8", 1.0), ("int4", 0.5)])
def test_quantised_models_add_their_scales(bench, checkpoint, mode, nominal):
    model = paligemma.load_model(checkpoint, dtype=torch.bfloat16, quantize=mode)
    codes = bench.weight_bytes_per_token(model.cfg, nominal, nominal)
    t = model.cfg.text
    head = model.decoder.head
    if mode == "int4":  # one 2-byte scale per group of weights, over every matrix
        group = model.decoder.blocks[0].mlp.down_proj.group
        assert head.group == group and head.scale.dtype == torch.bfloat16
        scales = codes / nominal / group * 2
    else:  # one 2-byte scale per output row
        rows = t.depth * ((t.num_heads + 2 * t.num_kv_heads) * t.head_dim + t.width)
        scales = (rows + t.depth * (2 * t.mlp_dim + t.width) + t.vocab_size) * 2
    assert bench.decode_weight_bytes(model) == pytest.approx(codes + scales, abs=0.5)
    assert bench.decode_weight_bytes(model) > codes
