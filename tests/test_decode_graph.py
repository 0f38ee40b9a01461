"""The static decode step that CUDA graphs record (decode_graph.py), run here on the CPU
without a graph: the same logits as the eager step to float rounding, the same cache state,
the same tokens through `generate`; and when it is chosen."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import IMAGE_ID, make_batch, tiny_hf_model

import paligemma
from paligemma import decode_graph
from paligemma import generate as engine

NEW = 12  # decode steps: past Gemma 2's window of 6 in the tiny config


@pytest.fixture(scope="module", params=[False, True], ids=["pg1", "pg2"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("graph")
    tiny_hf_model(request.param, seed=5, lively=True).save_pretrained(path)
    return paligemma.load_model(path, dtype=torch.float32, device="cpu")


def batch_inputs() -> dict:
    ids, mask, types, pixels = make_batch(1)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "pixel_values": pixels,
    }


def teacher_forced(model, static: bool, tokens: torch.Tensor):
    """Per-step logits float32[steps, B, V] for the given tokens int64[steps, B], and the
    cache after them."""
    _, cache, logits = engine._prefill(model, batch_inputs(), NEW)
    step = decode_graph.StaticStep(model, cache) if static else None
    out = [logits]
    for t in tokens:
        out.append(step(t) if static else engine._step(model, cache, t))
    return torch.stack(out), cache


def test_static_step_matches_the_eager_step(tiny):
    tokens = torch.randint(5, IMAGE_ID, (NEW - 1, 3), generator=torch.Generator().manual_seed(0))
    want, want_cache = teacher_forced(tiny, False, tokens)
    got, cache = teacher_forced(tiny, True, tokens)
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert want.std() > 0.1  # the logits move: the comparison is not between constants
    assert cache.length == want_cache.length == cache.max_len - 1
    n = cache.length
    for name in ("key_mask", "key_prefix", "num_real"):
        assert torch.equal(getattr(cache, name), getattr(want_cache, name)), name
    assert (cache.k[..., :n, :] - want_cache.k[..., :n, :]).abs().max() < 1e-5
    assert (cache.v[..., :n, :] - want_cache.v[..., :n, :]).abs().max() < 1e-5
    assert not cache.k[..., n:, :].any()  # the free slot stays untouched


def test_generate_through_the_static_step_gives_the_same_tokens(tiny, monkeypatch):
    cfg = engine.GenerationConfig(max_new_tokens=NEW)
    want = engine.generate(tiny, batch_inputs(), cfg, {1})
    calls = []
    made = decode_graph.StaticStep

    def static_step(model, cache, graph=False):
        calls.append(graph)
        return made(model, cache, graph)

    monkeypatch.setattr(decode_graph, "wanted", lambda model, cache, steps: True)
    monkeypatch.setattr(decode_graph, "StaticStep", static_step)
    got = engine.generate(tiny, batch_inputs(), cfg, {1})
    assert calls == [False]  # chosen, and no graph asked for on the CPU
    assert got.tokens == want.tokens
    assert sum(map(len, got.tokens)) > 3 * 4  # rows decoded past a few tokens
    assert got.finish_reasons == want.finish_reasons


def test_sampling_and_logprobs_through_the_static_step(tiny, monkeypatch):
    """Sampled decoding (a seeded generator, top-k) and per-token log-probabilities read the
    static step's logits as they read the eager step's."""
    cfg = engine.GenerationConfig(max_new_tokens=NEW, do_sample=True, top_k=20, seed=7)
    want = engine.generate(tiny, batch_inputs(), cfg, {1}, logprobs=True)
    monkeypatch.setattr(decode_graph, "wanted", lambda model, cache, steps: True)
    got = engine.generate(tiny, batch_inputs(), cfg, {1}, logprobs=True)
    assert got.tokens == want.tokens
    assert len({t for row in got.tokens for t in row}) > 5  # sampled, not one token repeated
    for a, b in zip(got.logprobs, want.logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_a_full_cache_is_refused(tiny):
    _, cache, _ = engine._prefill(tiny, batch_inputs(), 1)
    step = decode_graph.StaticStep(tiny, cache)
    step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="full"):
        step(torch.zeros(3, dtype=torch.long))


def test_when_a_recorded_step_is_wanted(tiny, monkeypatch):
    assert not decode_graph.wanted(tiny, tiny.new_cache(1, 8), 10)  # the CPU: never
    on_cuda = type("Cache", (), {"k": torch.empty(0, device="meta")})()
    monkeypatch.setattr(decode_graph, "_on_cuda", lambda cache: cache is on_cuda)
    assert decode_graph.wanted(tiny, on_cuda, 10)
    assert not decode_graph.wanted(tiny, on_cuda, 2)  # too few steps to pay for recording
    monkeypatch.setattr(decode_graph, "ENABLED", False)
    assert not decode_graph.wanted(tiny, on_cuda, 10)
    monkeypatch.setattr(decode_graph, "ENABLED", True)
    paligemma.model.set_rows_alone_(tiny, True)  # the server's row-split attention: eager
    try:
        assert not decode_graph.wanted(tiny, on_cuda, 10)
    finally:
        paligemma.model.set_rows_alone_(tiny, False)


def test_the_environment_turns_it_off():
    """PALIGEMMA_CUDA_GRAPHS=0 (for the CLI and the server) sets ENABLED at import."""
    import subprocess
    import sys

    code = "from paligemma import decode_graph; print(decode_graph.ENABLED)"
    for value, want in (("0", "False"), ("1", "True")):
        env = {**os.environ, "PALIGEMMA_CUDA_GRAPHS": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == want, out.stderr
