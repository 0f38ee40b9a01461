"""Logit parity with transformers' PaliGemma (the oracle), PaliGemma 1 and 2, under batching."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from bigvision_npz import write_bigvision_npz
from conftest import make_batch, tiny_hf_model

import paligemma

ATOL = 1e-4


@pytest.fixture(scope="module")
def pair(hf_checkpoint):
    hf, path = hf_checkpoint
    return hf, paligemma.load_model(path, dtype=torch.float32)


def test_full_forward_matches_reference(pair):
    hf, ours = pair
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=px, attention_mask=am, token_type_ids=tt).logits
        got = ours(input_ids=ids, pixel_values=px, attention_mask=am, token_type_ids=tt)
    assert got.shape == want.shape
    real = am.bool()
    diff = (got - want).abs()[real].max().item()
    assert diff < ATOL, diff
    assert not torch.allclose(got[0], got[1][: got.shape[1]]), "rows must differ (sanity)"


def test_gemma2_window_and_softcaps_matter(tmp_path):
    """The PG2 case is only meaningful if the window and both soft-caps change the logits."""
    tiny_hf_model(v2=True).save_pretrained(tmp_path)
    ours = paligemma.load_model(tmp_path)
    ids, am, tt, px = make_batch()
    assert ids.shape[1] > ours.cfg.text.sliding_window
    with torch.no_grad():
        base = ours(ids, px, am, tt)
        for change in ({"sliding_window": None}, {"attn_softcap": None}, {"final_softcap": None}):
            cfg = dataclasses.replace(ours.cfg, text=dataclasses.replace(ours.cfg.text, **change))
            other = paligemma.PaliGemma(cfg).eval()
            other.load_state_dict(ours.state_dict())
            diff = (other(ids, px, am, tt) - base).abs()[am.bool()].max().item()
            assert diff > 1e-2, (change, diff)


def reference_generate(hf, ids, am, tt, px, steps: int):
    """transformers' greedy generate(), exactly `steps` new tokens, with each step's logits."""
    return hf.generate(
        input_ids=ids,
        pixel_values=px,
        attention_mask=am,
        token_type_ids=tt,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )


def test_cached_decode_matches_reference(pair):
    hf, ours = pair
    ids, am, tt, px = make_batch(seed=1)
    steps = 6
    with torch.no_grad():
        out = reference_generate(hf, ids, am, tt, px, steps)
        new_tokens = out.sequences[:, ids.shape[1] :]
        assert new_tokens.shape[1] == steps
        cache = ours.new_cache(batch=3, max_len=ids.shape[1] + steps)
        logits = ours(ids, px, am, tt, cache=cache, num_logits=1)[:, -1]
        for step in range(steps):
            diff = (logits - out.logits[step]).abs().max().item()
            assert diff < ATOL, (step, diff)
            assert torch.equal(logits.argmax(-1), new_tokens[:, step])
            one = torch.ones(3, 1, dtype=torch.long)
            logits = ours(
                new_tokens[:, step : step + 1], attention_mask=one, token_type_ids=one, cache=cache
            )[:, -1]
    assert cache.length == ids.shape[1] + steps


def test_first_decode_step_equals_reference_generate_bit_for_bit(pair):
    """Prefill through the cache gives exactly the logits of transformers' first generate()
    step in float32, left-padded rows included. A tolerance would not do: RoPE is relative,
    so positions shifted by one on padded rows move the logits by only ~1e-7."""
    hf, ours = pair
    ids, am, tt, px = make_batch(seed=2)
    assert (am[:, 0] == 0).sum() == 2  # two left-padded rows, one full row
    with torch.no_grad():
        out = reference_generate(hf, ids, am, tt, px, 1)
        cache = ours.new_cache(batch=3, max_len=ids.shape[1] + 1)
        got = ours(ids, px, am, tt, cache=cache, num_logits=1)[:, -1]
    assert torch.equal(got, out.logits[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_bit_exact_with_reference_positions(hf_checkpoint, dtype):
    """Given the reference's own positions (arange + 1, padding included), the logits are equal
    bit for bit in every dtype: same ops, same rounding points.

    By default we count positions over real tokens only (as the reference's generate() does),
    so a row gets the same positions alone or padded; in half precision that changes RoPE's
    rounding on padded rows, hence this explicit argument.
    """
    from transformers import PaliGemmaForConditionalGeneration

    _, path = hf_checkpoint
    hf = PaliGemmaForConditionalGeneration.from_pretrained(
        path, dtype=dtype, attn_implementation="eager"
    ).eval()
    ours = paligemma.load_model(path, dtype=dtype)
    assert ours.dtype == dtype
    ids, am, tt, px = make_batch()
    positions = torch.arange(1, ids.shape[1] + 1).expand(ids.shape[0], -1)
    with torch.no_grad():
        want = hf(
            input_ids=ids, pixel_values=px.to(dtype), attention_mask=am, token_type_ids=tt
        ).logits
        got = ours(ids, px.to(dtype), am, tt, positions=positions)
    assert got.dtype == dtype
    assert torch.equal(got[am.bool()], want[am.bool()])


def full_attention_oracle(hf):
    """transformers' PaliGemma with `hf`'s weights, every layer global, logits not soft-capped:
    big_vision's computation (models/ppp/gemma.py has no sliding window; its PaliGemma 2
    transfer configs set final_logits_softcap = 0)."""
    from transformers import PaliGemmaForConditionalGeneration

    cfg = copy.deepcopy(hf.config)
    cfg.text_config.layer_types = ["full_attention"] * cfg.text_config.num_hidden_layers
    cfg.text_config.final_logit_softcapping = None
    model = PaliGemmaForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    model.load_state_dict(hf.state_dict())
    return model.eval()


def test_npz_computes_as_big_vision_unless_asked_for_transformers(tmp_path):
    """An .npz defaults to big_vision's computation (no sliding window, no final soft-cap) =
    full attention; reference="transformers" gives the transformers oracle; a transformers
    directory is the other way round."""
    hf = tiny_hf_model(v2=True)
    hf.save_pretrained(tmp_path)
    npz = tmp_path / "ckpt.npz"
    shape = dict(num_heads=4, num_kv_heads=2, head_dim=16, vision_heads=4)
    write_bigvision_npz(hf.state_dict(), npz, gemma2=True, **shape)
    ids, am, tt, px = make_batch()
    real = am.bool()
    assert ids.shape[1] > hf.config.text_config.sliding_window
    bv = paligemma.load_model(npz, config=tmp_path / "config.json")
    tf = paligemma.load_model(npz, config=tmp_path / "config.json", reference="transformers")
    assert (bv.cfg.text.sliding_window, bv.cfg.text.final_softcap) == (None, None)
    assert bv.cfg.text.attn_softcap == tf.cfg.text.attn_softcap == 5.0  # both cap the scores
    with torch.no_grad():
        inputs = dict(input_ids=ids, pixel_values=px, attention_mask=am, token_type_ids=tt)
        want_bv, want_tf = full_attention_oracle(hf)(**inputs).logits, hf(**inputs).logits
        got_bv, got_tf = bv(ids, px, am, tt), tf(ids, px, am, tt)
        assert (got_bv - want_bv).abs()[real].max() < ATOL
        assert (got_tf - want_tf).abs()[real].max() < ATOL
        assert (got_bv - got_tf).abs()[real].max() > 0.1  # the two really differ here
        dir_tf = paligemma.load_model(tmp_path)
        dir_bv = paligemma.load_model(tmp_path, reference="big_vision")
        assert torch.equal(dir_tf(ids, px, am, tt), got_tf)
        assert torch.equal(dir_bv(ids, px, am, tt), got_bv)
    with pytest.raises(paligemma.ConfigError, match="reference must be one of"):
        paligemma.load_model(tmp_path, reference="jax")
