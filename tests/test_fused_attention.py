"""The opt-in fused attention (model.set_fused_attention_): close to the exact eager path on the
tiny oracle models, left padding included (fully masked padding rows give no NaN), and off by
default; soft-capped Gemma 2 layers keep the eager path."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_hf_model

import paligemma
from paligemma.model import set_fused_attention_


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
def test_fused_attention_matches_the_eager_path(tmp_path, v2):
    tiny_hf_model(v2, seed=3, lively=True).save_pretrained(tmp_path)
    model = paligemma.load_model(tmp_path, dtype=torch.float32)
    ids, mask, types, pixels = make_batch(0)
    assert not any(getattr(m, "fused", False) for m in model.modules())
    with torch.inference_mode():
        eager = model(ids, pixels, mask, types)
        set_fused_attention_(model.decoder)
        text_only = model(ids, pixels, mask, types)
        fused = set_fused_attention_(model)(ids, pixels, mask, types)
    # Gemma 2's layers are all soft-capped: they keep the eager path, exactly.
    assert torch.equal(text_only, eager) == v2
    assert torch.isfinite(fused).all()
    diff = (fused - eager)[mask.bool()].abs().max().item()
    assert 0 < diff < 1e-4, diff  # not bit-exact (hence off by default), but close
