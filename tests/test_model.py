"""Invariants of our model: the mask function, cache = recompute, batch = alone, input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import IMAGE_ID, IMAGE_TOKENS, make_batch

import paligemma
from paligemma import PaliGemma, make_attn_mask


def tiny(v2: bool, seed: int = 0) -> PaliGemma:
    cfg = paligemma.TINY
    if v2:
        text = dataclasses.replace(
            cfg.text,
            depth=4,
            num_kv_heads=2,
            post_norms=True,
            attn_softcap=5.0,
            final_softcap=3.0,
            sliding_window=5,
            query_pre_attn_scalar=24,
        )
        cfg = dataclasses.replace(cfg, text=text)
    torch.manual_seed(seed)
    model = PaliGemma(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def test_mask_docstring_example():
    key_mask = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    key_prefix = torch.tensor([[0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    m = make_attn_mask(key_mask, key_prefix, key_prefix)[0, 0].int()
    assert m[2:].tolist() == [
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
    ]
    w = make_attn_mask(key_mask, key_prefix, key_prefix, window=2)[0, 0].int()
    assert w[5].tolist() == [0, 0, 0, 0, 1, 1]
    assert w[2:4].tolist() == m[2:4].tolist()  # the prefix block ignores the window


def test_mask_prefix_longer_than_window_stays_bidirectional():
    key_mask = torch.ones(1, 8, dtype=torch.bool)
    key_prefix = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    w = make_attn_mask(key_mask, key_prefix, key_prefix, window=2)[0, 0].int()
    assert w[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert w[7].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    # Cached decode: one query at slot 7 sees the same row.
    last = make_attn_mask(
        key_mask, key_prefix, torch.zeros(1, 1, dtype=torch.bool), start=7, window=2
    )
    assert last[0, 0, 0].int().tolist() == w[7].tolist()


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
def test_cached_decode_equals_recompute(v2):
    model = tiny(v2)
    ids, am, tt, px = make_batch()
    extra = torch.randint(5, IMAGE_ID, (3, 4))
    with torch.no_grad():
        full = model(
            torch.cat([ids, extra], 1),
            px,
            torch.cat([am, torch.ones_like(extra)], 1),
            torch.cat([tt, torch.ones_like(extra)], 1),
        )
        cache = model.new_cache(3, ids.shape[1] + 4)
        steps = [model(ids, px, am, tt, cache=cache)]
        for i in range(4):
            one = torch.ones(3, 1, dtype=torch.long)
            steps.append(
                model(extra[:, i : i + 1], attention_mask=one, token_type_ids=one, cache=cache)
            )
    cached = torch.cat(steps, 1)
    mask = torch.cat([am, torch.ones_like(extra)], 1).bool()
    assert (cached - full).abs()[mask].max() < 1e-5


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
def test_batched_rows_equal_rows_alone(v2):
    model = tiny(v2)
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        batched = model(ids, px, am, tt)
        for i in range(3):
            real = am[i].bool()
            alone = model(ids[i : i + 1, real], px[i : i + 1], None, tt[i : i + 1, real])
            assert (alone[0] - batched[i, real]).abs().max() < 1e-5


def test_two_caches_share_one_model():
    model = tiny(True)
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        a, b = model.new_cache(3, 40), model.new_cache(1, 40)
        la = model(ids, px, am, tt, cache=a)
        model(ids[:1, 4:], px[:1], am[:1, 4:], tt[:1, 4:], cache=b)  # interleaved request
        one = torch.ones(3, 1, dtype=torch.long)
        step_a = model(torch.full((3, 1), 7), attention_mask=one, token_type_ids=one, cache=a)
        fresh = model.new_cache(3, 40)
        model(ids, px, am, tt, cache=fresh)
        step_fresh = model(
            torch.full((3, 1), 7), attention_mask=one, token_type_ids=one, cache=fresh
        )
    assert torch.equal(step_a, step_fresh) and la.shape[1] == ids.shape[1]


def test_token_type_ids_default_is_a_prompt():
    """Without token types every real token is prefix (bidirectional), as for a prompt."""
    model = tiny(False)
    ids, am, _, px = make_batch()
    with torch.no_grad():
        assert torch.equal(model(ids, px, am), model(ids, px, am, torch.zeros_like(ids)))


def test_bad_inputs_are_clear_errors():
    model = tiny(False)
    ids, am, tt, px = make_batch()
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids, None, am, tt)
    with pytest.raises(ValueError, match=r"2 image\(s\)"):
        model(ids, px[:2], am, tt)
    with pytest.raises(ValueError, match="must lie in"):
        model(ids + 1000, px, am, tt)
    cache = model.new_cache(3, 4)
    with pytest.raises(ValueError, match="cannot take"):
        model(ids, px, am, tt, cache=cache)
    with pytest.raises(ValueError, match="holds 1 rows"):
        model(ids, px, am, tt, cache=model.new_cache(1, 40))
    assert paligemma.TINY.num_image_tokens == IMAGE_TOKENS


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_runs_and_stays_close(dtype):
    model = tiny(True)
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        ref = model(ids, px, am, tt)
        half = model.to(dtype)(ids, px.to(dtype), am, tt)
    assert half.dtype == dtype
    err = (half.float() - ref).abs()[am.bool()]  # logits are capped at 3
    assert err.max() < 0.3 and err.mean() < 0.03, (err.max(), err.mean())
