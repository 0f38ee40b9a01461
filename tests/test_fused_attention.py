"""Fused attention (model.set_fused_attention_): close to the exact eager path on the tiny oracle
models, left padding included (fully masked padding rows give no NaN); by default only for calls
of at least config.FUSED_ATTENTION_MIN_TOKENS queries (prefill), so short calls and float32
decode steps stay bit-exact (half-precision CPU decode steps are fused, or on soft-capped layers
take float32 products); soft-capped Gemma 2 layers keep the eager path. The eager path's in-place
element-wise steps (without autograd) give the same bits as the out-of-place ones."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_hf_model

import paligemma
from paligemma import config
from paligemma.model import set_fused_attention_, set_rows_alone_


def float32_rounds_by_row_count() -> bool:
    """Whether this host's float32 matrix products give a row other bits in a batch of another
    size (MKL's do on the AVX2 hosts measured, not on the AVX-512 ones): there, float32 rows
    alone and batched differ by the products, whatever the attention does."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(45, 64, generator=g), torch.randn(128, 64, generator=g)
    full = x @ w.T
    return not all(torch.equal(x[a:b] @ w.T, full[a:b]) for a, b in ((0, 15), (3, 12), (7, 8)))


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


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
def test_default_fuses_long_calls_only(tmp_path, monkeypatch, v2):
    """With the threshold lowered below the prompt length, the default prefill is the fused one
    (for SigLIP too: 4 patches) and a batch row still equals the row alone; a decode step (one
    query) stays eager, bit for bit."""
    tiny_hf_model(v2, seed=3, lively=True).save_pretrained(tmp_path)
    model = paligemma.load_model(tmp_path, dtype=torch.float32)
    ids, mask, types, pixels = make_batch(0)
    one = torch.ones(3, 1, dtype=torch.long)
    with torch.inference_mode():
        eager = set_fused_attention_(model, False)(ids, pixels, mask, types)
        fused = set_fused_attention_(model, True)(ids, pixels, mask, types)
        set_fused_attention_(model, None)
        assert torch.equal(model(ids, pixels, mask, types), eager)  # 15 queries < 128
        monkeypatch.setattr(config, "FUSED_ATTENTION_MIN_TOKENS", 4)
        assert torch.equal(model(ids, pixels, mask, types), fused)
        assert not torch.equal(fused, eager)
        fused = set_rows_alone_(model)(ids, pixels, mask, types)  # the server's setting
        for row in range(3):  # rows 0 and 2 are padded: they run on their real span, as alone
            real = mask[row].bool()
            alone = model(
                ids[row : row + 1, real], pixels[row : row + 1], None, types[row : row + 1, real]
            )
            diff = (alone[0] - fused[row, real]).abs().max().item()
            # Gemma 1: fused, padded rows on their real span: the bits alone. Gemma 2's layers
            # are soft-capped, so eager: a padded row is within float rounding of alone (as
            # any row where the float32 products round by row count).
            exact = not v2 and not float32_rounds_by_row_count()
            assert diff == 0 if exact else diff < 1e-6, diff
        steps = {}
        for setting in (None, False, True):  # the same (fused) prefill, then one decode step
            cache = model.new_cache(3, ids.shape[1] + 1)
            set_fused_attention_(model, True)(ids, pixels, mask, types, cache=cache)
            set_fused_attention_(model, setting)
            steps[setting] = model(
                torch.full((3, 1), 7), attention_mask=one, token_type_ids=one, cache=cache
            )
    assert torch.equal(steps[None], steps[False])
    assert torch.equal(steps[None], steps[True]) == v2  # Gemma 2: every layer soft-capped


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
def test_half_precision_cpu_decode_steps_skip_the_slow_eager_products(tmp_path, v2):
    """bfloat16 on the CPU, by default: a decode step is fused (Gemma 1), or eager with float32
    products on soft-capped layers (Gemma 2); both as close to float32's step as the exact eager
    one is. `False` keeps the reference's products; the prefill is the same in every setting."""
    tiny_hf_model(v2, seed=3, lively=True).save_pretrained(tmp_path)
    ids, mask, types, pixels = make_batch(0)
    one = torch.ones(3, 1, dtype=torch.long)
    steps = {}
    for dtype, setting in [(torch.float32, False)] + [(torch.bfloat16, s) for s in (None, 0, 1)]:
        model = paligemma.load_model(tmp_path, dtype=dtype)
        cache = model.new_cache(3, ids.shape[1] + 1)
        with torch.inference_mode():
            set_fused_attention_(model, False)(ids, pixels.to(dtype), mask, types, cache=cache)
            set_fused_attention_(model, None if setting is None else bool(setting))
            step = model(torch.full((3, 1), 7), attention_mask=one, token_type_ids=one, cache=cache)
        steps[dtype, setting] = step.float()
    ref, exact = steps[torch.float32, False], steps[torch.bfloat16, 0]
    default, fused = steps[torch.bfloat16, None], steps[torch.bfloat16, 1]
    assert torch.equal(fused, exact) == v2  # Gemma 2: soft-capped, eager even when fused
    if not v2:  # (Gemma 2's float32 products round to the same bits on this tiny model)
        assert torch.equal(default, fused) and not torch.equal(default, exact)
    bound = 2 * (exact - ref).abs().max().item()
    assert (default - ref).abs().max().item() <= bound, bound


def test_fused_decode_steps_group_their_query_heads_and_prefills_let_the_kernel(
    tmp_path, monkeypatch
):
    """On the CPU a fused call of fewer than gemma.GQA_MIN_QUERIES queries (a decode step) hands
    PyTorch the G query heads of each key / value head as G rows (its own grouping, enable_gqa,
    is 5-15x slower there), a longer one (a prefill) uses enable_gqa; the grouped step is within
    bfloat16 rounding of the enable_gqa one. (The Python block's calls: the C++ decode block
    makes the same ones, tests/test_decode_block.py.)"""
    from paligemma import gemma
    from paligemma.quant import decode_block

    monkeypatch.setattr(decode_block, "FAST_DECODE", False)

    tiny_hf_model(False, seed=3, lively=True).save_pretrained(tmp_path)
    model = paligemma.load_model(tmp_path, dtype=torch.bfloat16)
    n, kv = model.cfg.text.num_heads, model.cfg.text.num_kv_heads
    assert kv < n  # the tiny oracle shares its key / value heads
    ids, mask, types, pixels = make_batch(0)
    one = torch.ones(3, 1, dtype=torch.long)
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        if k.shape[1] == kv:  # the decoder's (SigLIP's have a key head per query head)
            calls.append((tuple(q.shape), kw.get("enable_gqa", False)))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(gemma.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(config, "FUSED_ATTENTION_MIN_TOKENS", 4)  # the 15-token prefill fused
    steps = {}
    for least in (4, 1):  # prefill rows (4+ queries) on enable_gqa; then every call
        monkeypatch.setattr(gemma, "GQA_MIN_QUERIES", least)
        cache = model.new_cache(3, ids.shape[1] + 1)
        with torch.inference_mode():
            model(ids, pixels.to(torch.bfloat16), mask, types, cache=cache)
            prefill, calls[:] = list(calls), []
            step = model(torch.full((3, 1), 7), attention_mask=one, token_type_ids=one, cache=cache)
        steps[least], decode, calls[:] = step.float(), list(calls), []
        layers = model.cfg.text.depth
        assert len(prefill) >= layers and all(gqa and shape[1] == n for shape, gqa in prefill)
        grouped = least > 1
        assert len(decode) == layers
        for shape, gqa in decode:
            assert (shape == (3, kv, n // kv, model.cfg.text.head_dim)) == grouped != gqa
    diff = (steps[4] - steps[1]).abs().max().item()
    assert diff <= 0.02 * steps[1].abs().max().item(), diff


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_in_place_steps_change_no_bit(hf_checkpoint, dtype):
    """The eager path without autograd (in-place scale, soft-cap, mask, GELU, product) gives
    exactly the logits of the same path with autograd recording (out of place)."""
    model = set_fused_attention_(paligemma.load_model(hf_checkpoint[1], dtype=dtype), False)
    ids, mask, types, pixels = make_batch(0)
    with torch.inference_mode():
        in_place = model(ids, pixels.to(dtype), mask, types)
    with torch.enable_grad():
        recorded = model(ids, pixels.to(dtype), mask, types)
    assert recorded.requires_grad
    assert torch.equal(in_place, recorded.detach())


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_batched_prefill_and_decode_rows_equal_alone_bit_for_bit(tmp_path, v2, dtype):
    """`set_rows_alone_` (the server's setting): left-padded rows (eager prefill: short
    prompts) get the bits they get alone (float32: without it, ~4e-7 off); so does a decode
    step in a longer cache where the products allow it (bfloat16: torch.mv for one row and a
    few rows' products agree; float32's round by row count, so only the prefill is compared;
    on hosts where they do so for prefill rows too, within float32 rounding only)."""
    tiny_hf_model(v2, seed=3, lively=True).save_pretrained(tmp_path)
    model = paligemma.load_model(tmp_path, dtype=dtype)
    ids, mask, types, pixels = make_batch(0)
    pixels, one = pixels.to(dtype), torch.ones(3, 1, dtype=torch.long)

    def batch_and_rows():
        cache = model.new_cache(3, ids.shape[1] + 5)
        batched = model(ids, pixels, mask, types, cache=cache)
        step = model(torch.full((3, 1), 7), attention_mask=one, token_type_ids=one, cache=cache)
        same = []
        for row in range(3):
            real, r = mask[row].bool(), slice(row, row + 1)
            alone_cache = model.new_cache(1, int(real.sum()) + 9)
            alone = model(ids[r, real], pixels[r], None, types[r, real], cache=alone_cache)
            alone_step = model(
                torch.full((1, 1), 7),
                attention_mask=one[r],
                token_type_ids=one[r],
                cache=alone_cache,
            )
            same.append(
                (torch.equal(alone[0], batched[row, real]), torch.equal(alone_step, step[r]))
            )
        return same

    with torch.inference_mode():
        plain = batch_and_rows()
        set_rows_alone_(model)
        exact = batch_and_rows()
        if dtype == torch.float32 and float32_rounds_by_row_count():
            # the products move a row's bits by the batch size here: rows alone and batched
            # agree within float32 rounding, with the setting and without (through the model's
            # layers: up to ~1e-5 of the logits' scale; 2.9e-6 seen on an AMD EPYC, Zen 5)
            rows = [(ids[r : r + 1, mask[r].bool()], mask[r].bool()) for r in range(3)]
            batched = model(ids, pixels, mask, types)
            for r, (row_ids, real) in enumerate(rows):
                alone = model(row_ids, pixels[r : r + 1], None, types[r : r + 1, real])
                scale = batched[r, real].abs().max()
                assert (alone[0] - batched[r, real]).abs().max() <= 1e-5 * scale
            return
    assert all(prefill for prefill, _ in exact)
    if dtype == torch.bfloat16:
        assert all(step for _, step in exact)
    else:
        assert not all(prefill for prefill, _ in plain)  # the padded rows, without it
