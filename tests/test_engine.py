"""The serving engine (continuous batching): every answer equals the request alone under
staggered traffic, per-row sampling, n > 1, the image cache and its trap, disconnects, drain."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import numpy as np
import pytest
import torch
from server_util import chat_body, running
from test_server import slowed

import paligemma
from paligemma.demo import synthetic
from paligemma.serve import Settings
from paligemma.serve.batcher import Draining, Job
from paligemma.serve.engine import Engine
from paligemma.serve.image_cache import ImageCache

PROMPTS = ["caption en", "answer en how many shapes are there?", "detect circle", "answer en red?"]


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(11)
    return [synthetic.make_scene(rng) for _ in range(3)]


class Recorder:
    """A stand-in for serve.metrics.ServerMetrics that counts each call."""

    def __init__(self):
        self.calls: dict[str, list] = {}

    def __getattr__(self, name):
        return lambda *args: self.calls.setdefault(name, []).append(args)


def answer(engine: Engine, jobs: list[Job], gaps: list[float], then=None) -> list[Job]:
    """Submit the jobs `gaps` seconds apart (staggered arrivals), await `then(loop)` if given,
    and wait for all answers."""

    async def main():
        loop = asyncio.get_running_loop()
        for job, gap in zip(jobs, gaps, strict=True):
            engine.submit(job, loop)
            await asyncio.sleep(gap)
        if then is not None:
            await then(loop)
        await asyncio.gather(*[j.done for j in jobs])

    engine.start()
    try:
        asyncio.run(main())
    finally:
        engine.stop()
    return jobs


def mixed(images, lengths=(9, 2, 17, 5, 1, 12)):
    """(image, prompt, max_tokens) requests of different lengths."""
    out = []
    for i, image in enumerate(images):
        for j, p in enumerate(PROMPTS):
            out.append((image, p, lengths[(i + j) % len(lengths)]))
    return out


def test_staggered_requests_equal_alone_tiny(pipeline_dir):
    """pg1 and pg2 (sliding window, soft caps): rows joining and leaving at every step, with
    the timeline moving (a small pool), give each request its tokens alone."""
    pipe = paligemma.load(pipeline_dir)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(3)]
    reqs = mixed(images)
    alone = [pipe.generate(im, p, max_new_tokens=n) for im, p, n in reqs]
    engine = Engine(pipe, max_batch=3, pool_len=40)
    jobs = [Job([im], p, n) for im, p, n in reqs]
    answer(engine, jobs, [0.002 * (i % 4) for i in range(len(jobs))])
    assert [j.choices[0].text for j in jobs] == [a.text for a in alone]
    assert [j.choices[0].finish_reason for j in jobs] == [a.finish_reason for a in alone]
    assert [j.choices[0].tokens for j in jobs] == [len(a.token_ids) for a in alone]
    assert engine.pool.shifts > 0 and engine.stats["max_rows"] > 1, engine.stats


def served_equal_alone(pipe, seed: int, serving=lambda: None) -> Engine:
    """Requests of two random images (mixed, 6, 2, 9 and 4 tokens) answered alone, then by a
    3-row engine under staggered traffic (`serving()` called just before: e.g. a spy's record
    cleared): each gets its text and token count alone. The engine, for its stats."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(2)]
    reqs = mixed(images, lengths=(6, 2, 9, 4))
    alone = [pipe.generate(im, p, max_new_tokens=n) for im, p, n in reqs]
    engine = Engine(pipe, max_batch=3, pool_len=40)
    serving()
    jobs = [Job([im], p, n) for im, p, n in reqs]
    answer(engine, jobs, [0.002 * (i % 4) for i in range(len(jobs))])
    assert [j.choices[0].text for j in jobs] == [a.text for a in alone]
    assert [j.choices[0].tokens for j in jobs] == [len(a.token_ids) for a in alone]
    return engine


def test_staggered_bfloat16_requests_equal_alone_on_float32_products(pipeline_dir, monkeypatch):
    """bfloat16 on a host without a fast bfloat16 GEMM (forced here, and for every weight):
    under the engine's rows_alone the prefills and the patch embedding take our float32 GEMM
    (f32_mm, a row's bits whatever the batch), decoding keeps the bfloat16 products; each
    request still gets its tokens alone (on a CPU without AVX2, the scalar path: bfloat16
    products)."""
    from paligemma.quant import kernels as cpu_kernels
    from paligemma.quant import matvec

    assert cpu_kernels.available(), cpu_kernels.why_not()
    monkeypatch.setattr(cpu_kernels, "F32_PREFILL", True)
    monkeypatch.setattr(matvec, "F32_MIN_WEIGHTS", 0)
    monkeypatch.setattr(matvec, "AMX_PREFILL", False)
    ops, rows = torch.ops.paligemma_cpu, []
    real = ops.f32_mm
    monkeypatch.setattr(ops, "f32_mm", lambda x, *a: rows.append(x.shape) or real(x, *a))
    pipe = paligemma.load(pipeline_dir, dtype=torch.bfloat16)
    engine = served_equal_alone(pipe, 5, rows.clear)
    patch = pipe.model.vision.patch_embed.weight[0].numel()  # its patches: any count of rows
    if cpu_kernels.isa() >= 1:  # the prefills and the patch embedding, nothing else
        assert any(k == patch for _, k in rows), rows
        assert all(n > matvec.FEW_ROWS for n, k in rows if k != patch), rows
    else:  # the scalar path (PyTorch's float32 GEMM) keeps bfloat16 products under rows_alone
        assert not rows
    assert engine.stats["max_rows"] > 1, engine.stats


def test_staggered_requests_equal_alone_embedded(embedded_pipe, scenes):
    reqs = mixed([s.image for s in scenes], lengths=(20, 3, 40, 8, 1, 12))
    alone = [embedded_pipe.generate(im, p, max_new_tokens=n).text for im, p, n in reqs]
    metrics = Recorder()
    engine = Engine(embedded_pipe, max_batch=4, metrics=metrics)
    jobs = [Job([im], p, n) for im, p, n in reqs]
    answer(engine, jobs, [0.01 * (i % 3) for i in range(len(jobs))])
    assert [j.choices[0].text for j in jobs] == alone
    assert engine.stats["max_rows"] > 1
    calls = metrics.calls
    prompt_tokens = sum(len(embedded_pipe.processor.prompt_ids(p)) for _, p, _ in reqs)
    assert sum(t for _, t in calls["prefill"]) == prompt_tokens  # each prompt prefilled once
    assert len(calls["first_token"]) == len(jobs)
    assert len(calls["finished"]) == len(jobs) and calls["decode_step"]
    assert max(n for n, cap in calls["running_rows"]) <= 4


def test_a_seeded_request_alone_and_amid_traffic(embedded_pipe, scenes):
    """Per-row generators: the sampled request's tokens depend on its seed only; choice 0 is
    what the pipeline samples with that seed; n = 3 shares one prefill."""
    image = scenes[0].image
    kw = dict(temperature=3.0, top_p=0.98, seed=5)

    def sampled():
        return Job([image], "caption en", 16, n=3, **kw)

    alone = answer(Engine(embedded_pipe), [sampled()], [0])[0]
    metrics = Recorder()
    traffic = [
        Job([s.image], "caption en", 12, temperature=2.0, seed=i) for i, s in enumerate(scenes)
    ]
    traffic += [Job([s.image], "detect circle", 20) for s in scenes]
    mine = sampled()
    jobs = [*traffic[:3], mine, *traffic[3:]]
    answer(Engine(embedded_pipe, max_batch=8, metrics=metrics), jobs, [0.005] * len(jobs))
    assert [c.text for c in mine.choices] == [c.text for c in alone.choices]
    prompt_tokens = sum(len(embedded_pipe.processor.prompt_ids(j.prompt)) for j in jobs)
    assert sum(t for _, t in metrics.calls["prefill"]) == prompt_tokens  # n = 3: prefilled once
    expected = embedded_pipe.generate(image, "caption en", max_new_tokens=16, do_sample=True, **kw)
    assert alone.choices[0].text == expected.text
    greedy = embedded_pipe.generate(image, "caption en", max_new_tokens=16).text
    assert len({c.text for c in alone.choices} | {greedy}) > 1  # it really samples


def test_image_cache_hit_and_the_different_prompt_trap(embedded_pipe, scenes):
    """A second question about an image skips SigLIP; its answer (another prompt, so another
    prefix block) is exactly the uncached one."""
    image = scenes[1].image
    engine = Engine(embedded_pipe, max_batch=2)
    first = Job([image], "caption en", 20)
    second = Job([image], "answer en how many shapes are there?", 20)
    answer(engine, [first], [0])
    calls = []
    vision = embedded_pipe.model.vision.forward
    embedded_pipe.model.vision.forward = lambda *a, **k: (calls.append(1), vision(*a, **k))[1]
    try:
        answer(engine, [second], [0])
    finally:
        del embedded_pipe.model.vision.forward
    assert calls == [] and engine.stats["image_hits"] == 1
    uncached = embedded_pipe.generate(image, second.prompt, max_new_tokens=20).text
    assert second.choices[0].text == uncached


def test_image_cache_is_lru_within_its_budget():
    cache = ImageCache(budget_bytes=3 * 400)
    for key in "abc":
        cache.put(key, torch.zeros(10, 10))  # 400 bytes each
    assert cache.get("a") is not None  # now b is the least recently used
    cache.put("d", torch.zeros(10, 10))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3
    cache.put("big", torch.zeros(40, 10))  # over the whole budget: not kept
    assert cache.get("big") is None and cache.bytes <= cache.budget


def _busy(base: str, until, seconds: float = 3.0) -> dict:
    end = time.monotonic() + seconds
    while True:
        health = httpx.get(base + "/health").json()
        if until(health) or time.monotonic() > end:
            return health
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["socket", "client_timeout"])
def test_a_client_that_leaves_frees_its_row(embedded_pipe, scenes, how):
    """Non-streaming: the row is freed (cancelled, busy 0) within about one step of 0.3 s,
    long before its answer (12 tokens: 13 steps, about 4 s) would have ended."""
    slow = slowed(embedded_pipe, 0.3)
    body = chat_body(scenes[1].image, "segment circle ; square ; triangle", max_tokens=64)
    with running(slow, Settings(max_batch=2)) as base:
        if how == "socket":
            payload = httpx.Request("POST", base + "/v1/chat/completions", json=body)
            raw = b"".join([b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"])
            raw += b"Content-Type: application/json\r\n"
            raw += f"Content-Length: {len(payload.read())}\r\n\r\n".encode() + payload.read()
            sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
            sock.sendall(raw)
            assert _busy(base, lambda h: h["busy"] == 1)["busy"] == 1
            left = time.monotonic()
            sock.close()
        else:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(base + "/v1/chat/completions", json=body, timeout=0.8)
            left = time.monotonic()
        health = _busy(base, lambda h: h["busy"] == 0 and h["batches"]["cancelled"] >= 1)
        freed = time.monotonic() - left
        assert health["busy"] == 0 and health["batches"]["cancelled"] == 1, health
        assert freed < 2.0, freed


def test_drain_finishes_or_cancels_and_refuses_new_work(embedded_pipe, scenes):
    slow = slowed(embedded_pipe, 0.2)
    engine = Engine(slow, max_batch=2)
    jobs = [Job([scenes[1].image], "segment circle ; square ; triangle", 64) for _ in range(2)]

    async def drain(loop):
        await asyncio.to_thread(engine.drain, 0.2)
        with pytest.raises(Draining):
            engine.submit(Job([scenes[0].image], "caption en"), loop)

    answer(engine, jobs, [0, 0.3], drain)
    assert engine.busy == 0
    for job in jobs:
        assert job.choices[0].finish_reason == "cancelled" and isinstance(job.error, Draining)


def test_the_static_batcher_stays_selectable(embedded_pipe, scenes):
    from paligemma.serve.app import make_scheduler
    from paligemma.serve.static_batcher import Batcher

    assert isinstance(make_scheduler(embedded_pipe, Settings()), Engine)
    static = make_scheduler(embedded_pipe, Settings(scheduler="static", max_batch=4))
    assert isinstance(static, Batcher)
    jobs = answer(static, [Job([s.image], "caption en", 12) for s in scenes], [0, 0, 0])
    alone = [embedded_pipe.generate(s.image, "caption en", max_new_tokens=12).text for s in scenes]
    assert [j.choices[0].text for j in jobs] == alone
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler(embedded_pipe, Settings(scheduler="fifo"))


def test_ignore_eos_gives_fixed_lengths_in_both_schedulers(embedded_pipe, scenes):
    """`ignore_eos` (the load test's fixed answer lengths): the embedded model stops at <eos>
    after a few tokens; with the option every row runs to its max_tokens, in the engine and in
    the static batcher, mixed with rows that stop at <eos>, and equals the pipeline alone."""
    from paligemma.serve.static_batcher import Batcher

    image, n = scenes[0].image, 40
    stopped = embedded_pipe.generate(image, "caption en", max_new_tokens=n)
    assert len(stopped.token_ids) < n and stopped.finish_reason == "stop"
    full = embedded_pipe.generate(image, "caption en", max_new_tokens=n, ignore_eos=True)
    assert len(full.token_ids) == n and full.finish_reason == "length"
    assert full.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    streamed = "".join(embedded_pipe.stream(image, "caption en", max_new_tokens=n, ignore_eos=True))
    assert streamed == full.text
    sampled = dict(temperature=1.0, seed=7)
    alone_sampled = embedded_pipe.generate(
        image, "caption en", max_new_tokens=n, ignore_eos=True, do_sample=True, **sampled
    )
    for make in (lambda: Engine(embedded_pipe, max_batch=4), lambda: Batcher(embedded_pipe, 4)):
        jobs = [
            Job([image], "caption en", n, ignore_eos=True),
            Job([image], "caption en", n),
            Job([image], "caption en", n, ignore_eos=True, **sampled),
        ]
        answer(make(), jobs, [0, 0, 0])
        assert [(c.text, c.tokens, c.finish_reason) for j in jobs for c in j.choices] == [
            (full.text, n, "length"),
            (stopped.text, len(stopped.token_ids), "stop"),
            (alone_sampled.text, n, "length"),
        ]


def test_ignore_eos_over_http(embedded_pipe, scenes):
    """The chat API's `ignore_eos` field reaches the engine: the answer runs to max_tokens."""
    image = scenes[2].image
    expected = embedded_pipe.generate(image, "caption en", max_new_tokens=24, ignore_eos=True)
    with running(embedded_pipe, Settings(max_batch=2)) as base:
        body = chat_body(image, "caption en", max_tokens=24, ignore_eos=True)
        got = httpx.post(base + "/v1/chat/completions", json=body, timeout=60).json()
        plain = httpx.post(
            base + "/v1/chat/completions", json=chat_body(image, "caption en", max_tokens=24)
        ).json()
    assert got["choices"][0]["message"]["content"] == expected.text
    assert (
        got["usage"]["completion_tokens"] == 24 and got["choices"][0]["finish_reason"] == "length"
    )
    assert plain["usage"]["completion_tokens"] < 24
