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


# ---------------------------------------------------------------------------------------------
# The low-level API: embed_image / embed_text / hidden(inputs_embeds=..., mask=...) / logits


def embeds_by_hand(model: PaliGemma, ids: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """What a caller building on the insides does: image and text embedded separately, then
    concatenated (every make_batch row is pad..., 4 image tokens, text)."""
    text = model.embed_text(ids.masked_fill(ids == IMAGE_ID, 0))  # (B, T, D)
    image = model.embed_image(px)  # (B, L, D): one image per row
    is_image = (ids == IMAGE_ID)[..., None]
    return text.masked_scatter(is_image, image.reshape(-1, image.shape[-1]))


def test_inputs_embeds_path_equals_ids_path():
    model = tiny(True)  # Gemma 2: window and soft-caps too
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        want = model.hidden(ids, px, am, tt)
        x = embeds_by_hand(model, ids, px)
        got = model.hidden(inputs_embeds=x, attention_mask=am, token_type_ids=tt)
        assert torch.equal(got, want)
        assert torch.equal(model.logits(got), model(ids, px, am, tt))
        scale = torch.tensor(64**0.5)  # text rows are embedding * sqrt(D)
        assert torch.equal(model.embed_text(ids[:, -1:]), model.decoder.embed(ids[:, -1:]) * scale)


def test_normal_mask_passed_explicitly_equals_default():
    model = tiny(True)  # Gemma 2: window and soft-caps too
    ids, am, tt, px = make_batch()
    key_mask, is_prefix = am.bool(), tt == 0
    full = make_attn_mask(key_mask, is_prefix & key_mask, is_prefix)  # (B, 1, T, T)
    with torch.no_grad():
        want = model.hidden(ids, px, am, tt)
        window = model.cfg.text.sliding_window
        local = make_attn_mask(key_mask, is_prefix & key_mask, is_prefix, window=window)
        got = model.hidden(ids, px, am, tt, mask=full, local_mask=local)
        # One mask serves every layer: the window is not added on top.
        no_window = dataclasses.replace(model.cfg.text, sliding_window=None)
        plain = PaliGemma(dataclasses.replace(model.cfg, text=no_window)).eval()
        plain.load_state_dict(model.state_dict())
        one_mask = model.hidden(ids, px, am, tt, mask=full)
        assert torch.equal(one_mask, plain.hidden(ids, px, am, tt))
        assert (one_mask - want).abs()[key_mask].max() > 1e-3  # the window mattered
    assert torch.equal(got, want)


def test_custom_causal_mask_equals_suffix_token_types():
    """A fully causal mask (no bidirectional prefix) is the model with every token type 1."""
    model = tiny(False)
    ids, am, _, px = make_batch()
    key_mask = am.bool()
    no_prefix = torch.zeros_like(key_mask)
    causal = make_attn_mask(key_mask, no_prefix, no_prefix)  # (B, 1, T, T)
    with torch.no_grad():
        x = embeds_by_hand(model, ids, px)
        got = model.hidden(inputs_embeds=x, attention_mask=am, mask=causal)
        want = model.hidden(ids, px, am, torch.ones_like(ids))
        prefix_lm = model.hidden(ids, px, am, torch.zeros_like(ids))
    assert torch.equal(got, want)
    assert (got - prefix_lm).abs()[key_mask].max() > 1e-3


def test_cache_with_inputs_embeds_and_mask():
    """Prefill from embeddings with an explicit mask, then decode from ids: as one forward."""
    model = tiny(True)  # Gemma 2: window and soft-caps too
    ids, am, tt, px = make_batch()
    extra = torch.randint(5, IMAGE_ID, (3, 2))
    one = torch.ones_like(extra)
    with torch.no_grad():
        full = model(
            torch.cat([ids, extra], 1), px, torch.cat([am, one], 1), torch.cat([tt, one], 1)
        )
        cache = model.new_cache(3, ids.shape[1] + 2)
        key_mask, is_prefix = am.bool(), tt == 0
        masks = [
            make_attn_mask(key_mask, is_prefix & key_mask, is_prefix, window=w)
            for w in (None, model.cfg.text.sliding_window)
        ]
        x = embeds_by_hand(model, ids, px)
        h = model.hidden(
            inputs_embeds=x,
            attention_mask=am,
            token_type_ids=tt,
            mask=masks[0],
            local_mask=masks[1],
            cache=cache,
        )
        steps = [model.logits(h), model(extra, attention_mask=one, token_type_ids=one, cache=cache)]
    cached = torch.cat(steps, 1)
    assert (cached - full).abs()[torch.cat([am, one], 1).bool()].max() < 1e-5


def test_low_level_api_errors_are_clear():
    model = tiny(False)
    ids, am, tt, px = make_batch()
    x = embeds_by_hand(model, ids, px)
    b, t = ids.shape
    with pytest.raises(ValueError, match="not both"):
        model.hidden(ids, px, inputs_embeds=x)
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        model.hidden()
    with pytest.raises(ValueError, match=rf"float\[B, T, 64\], got \(3, {t}, 32\)"):
        model.hidden(inputs_embeds=x[..., :32])
    with pytest.raises(ValueError, match=rf"bool\[B, 1, T, S\] = \[3, 1, {t}, {t}\].*got int64"):
        model.hidden(inputs_embeds=x, mask=torch.ones(b, 1, t, t, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"mask must be .*got bool\[3, {t}, {t}\]"):
        model.hidden(inputs_embeds=x, mask=torch.ones(b, t, t, dtype=torch.bool))
    cache = model.new_cache(3, 40)
    model.hidden(ids, px, am, tt, cache=cache)
    step = torch.ones(b, 1, 1, 1, dtype=torch.bool)  # S must count the cached slots too
    with pytest.raises(ValueError, match=rf"\[3, 1, 1, {t + 1}\] \(S = cached \+ new tokens\)"):
        model.hidden(inputs_embeds=x[:, :1], mask=step, cache=cache)
    assert cache.length == t  # a rejected call claims no slots
    with pytest.raises(ValueError, match="local_mask needs mask"):
        model.hidden(ids, px, am, tt, local_mask=step)
    with pytest.raises(ValueError, match="must lie in"):
        model.embed_text(torch.tensor([[300]]))


def test_resampling_the_position_table_keeps_its_grid():
    """resample_pos_embed's values, not only its shape: the same size is the identity, and a
    table that varies along one image axis only still does so at another size (a transposed
    grid would swap the axes)."""
    from paligemma.siglip import resample_pos_embed

    pos = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))  # (L, D), 4 x 4 grid
    assert torch.allclose(resample_pos_embed(pos, 4), pos, atol=1e-6)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    table = torch.stack([rows.flatten(), cols.flatten()], 1)  # token r * 4 + c -> (r, c)
    for side in (8, 2):
        grid = resample_pos_embed(table, side).reshape(side, side, 2)  # (row, col, D)
        by_row, by_col = grid[..., 0], grid[..., 1]
        assert torch.allclose(by_row, by_row[:, :1]) and torch.allclose(by_col, by_col[:1, :])
        assert (by_row[1:, 0] > by_row[:-1, 0]).all() and (by_col[0, 1:] > by_col[0, :-1]).all()


def test_last_position_logits_never_copy_the_head():
    """Prefill logits for the last position of a batch (a strided slice of the hidden states)
    with frozen weights: no op produces a tensor as large as the (V, D) head (F.linear on a
    strided 3-D input would copy the matrix per row: 1 GB a row for Gemma's vocabulary)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    model = tiny(False).requires_grad_(False)
    ids, am, tt, px = make_batch()
    with torch.inference_mode(), Largest() as seen:
        got = model(ids, px, am, tt, num_logits=1)
    assert seen.largest < model.decoder.embed.weight.numel() and got.shape == (3, 1, 300)
    with torch.inference_mode():  # (float32 GEMMs may round by row count: MKL on AVX2 hosts)
        assert torch.allclose(got, model(ids, px, am, tt)[:, -1:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
def test_last_position_prefill_equals_the_full_one(monkeypatch, v2):
    """num_logits=1 (a prefill for its next token) cuts the final block to the last row of each
    sequence (gemma.PRUNE_MIN_TOKENS lowered for the tiny model): the logits of the full prefill
    (float32, 1e-5), its cache bit for bit, and the same greedy tokens after it."""
    from paligemma import gemma
    from paligemma import generate as engine
    from paligemma.quant.matvec import install_matvec_

    model = install_matvec_(tiny(v2))  # as loaded on the CPU
    ids, mask, types, pixels = make_batch(0)
    rows: list[int] = []
    model.decoder.blocks[-1].mlp.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[1]))
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, pixel_values=pixels)

    def prefill(min_tokens: int):
        monkeypatch.setattr(gemma, "PRUNE_MIN_TOKENS", min_tokens)
        cache = model.new_cache(3, ids.shape[1] + 2)
        with torch.no_grad():
            logits = model(ids, pixels, mask, types, cache=cache, num_logits=1)
        tokens = engine.generate(model, inputs, engine.GenerationConfig(max_new_tokens=4), set())
        return logits, cache, tokens.tokens

    cut, cut_cache, cut_tokens = prefill(1)
    assert rows[0] == 1  # the final block's MLP: one row a sequence
    rows.clear()
    full, full_cache, full_tokens = prefill(10**9)
    assert rows[0] == ids.shape[1]  # ... and all of them
    assert cut.shape == full.shape == (3, 1, model.cfg.text.vocab_size)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(cut_cache.k, full_cache.k) and torch.equal(cut_cache.v, full_cache.v)
    assert cut_tokens == full_tokens
