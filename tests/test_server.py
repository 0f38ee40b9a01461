"""The HTTP server, started for real on a loopback port and driven by the official `openai`
client (chat, streaming) and by plain HTTP (everything else, every bad input)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from server_util import chat_body, data_url, image_b64, running

from paligemma.demo import synthetic
from paligemma.serve import Settings
from paligemma.tasks.objects import rle_to_mask


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(123)
    return [synthetic.make_scene(rng, size=(160, 160)) for _ in range(12)]


@pytest.fixture(scope="module")
def files(tmp_path_factory, scenes):
    root = tmp_path_factory.mktemp("allowed")
    scenes[0].image.save(root / "scene.png")
    (root / "notes.txt").write_text("not an image")
    (root / "link.png").symlink_to("/etc/hostname")
    return root


@pytest.fixture(scope="module")
def url(embedded_pipe, files):
    settings = Settings(
        model_name="embedded",
        max_body_bytes=2_000_000,
        max_pixels=1_000_000,
        max_tokens=64,
        max_prompt_chars=300,
        allow_dir=str(files),
    )
    with running(embedded_pipe, settings) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def user(image, prompt):
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": data_url(image)}},
            ],
        }
    ]


# ---------------------------------------------------------------------------------------------
# The OpenAI client


def test_chat_completion_equals_the_pipeline(client, embedded_pipe, scenes):
    image = scenes[1].image
    reply = client.chat.completions.create(
        model="embedded", messages=user(image, "caption en"), max_tokens=24
    )
    expected = embedded_pipe.generate(image, "caption en", max_new_tokens=24)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.object == "chat.completion" and reply.model == "embedded"
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.prompt_tokens == 64 + 1 + len(embedded_pipe.tokenizer.encode("caption en\n"))


def test_streaming_joins_to_the_same_text(client, embedded_pipe, scenes):
    image = scenes[2].image
    stream = client.chat.completions.create(
        model="embedded",
        messages=user(image, "answer en how many shapes are there?"),
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    expected = embedded_pipe.generate(
        image, "answer en how many shapes are there?", max_new_tokens=16
    )
    assert "".join(pieces) == expected.text
    assert reasons[-1] == expected.finish_reason and all(r is None for r in reasons[:-1])
    assert usage.completion_tokens == len(expected.token_ids)


def test_max_tokens_stop_and_n(client, embedded_pipe, scenes):
    image = scenes[3].image
    short = client.chat.completions.create(
        model="embedded", messages=user(image, "caption en"), max_tokens=2, n=3
    )
    expected = embedded_pipe.generate(image, "caption en", max_new_tokens=2)
    assert [c.message.content for c in short.choices] == [expected.text] * 3
    assert {c.finish_reason for c in short.choices} == {expected.finish_reason}
    full = embedded_pipe.generate(image, "caption en", max_new_tokens=24).text
    word = full.split()[1]  # cut at the second word
    cut = client.chat.completions.create(
        model="embedded", messages=user(image, "caption en"), max_tokens=24, stop=[" " + word]
    )
    assert cut.choices[0].message.content == full[: full.index(" " + word)]
    assert cut.choices[0].finish_reason == "stop"


def test_sampling_with_a_seed_is_repeatable(client, scenes):
    kwargs = dict(
        model="embedded",
        messages=user(scenes[4].image, "caption en"),
        max_tokens=12,
        temperature=1.5,
        top_p=0.9,
        seed=7,
        n=2,
    )
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_sampling_is_not_greedy_and_each_seed_repeats(client, scenes):
    """temperature > 0 really samples: some seed answers otherwise than greedy decoding, and
    a seed gives the same answer again."""
    ask = dict(model="embedded", messages=user(scenes[3].image, "caption en"), max_tokens=12)
    greedy = client.chat.completions.create(**ask).choices[0].message.content

    def sampled(seed):
        reply = client.chat.completions.create(**ask, temperature=2.0, seed=seed)
        return reply.choices[0].message.content

    answers = [sampled(seed) for seed in range(3)]
    assert any(a != greedy for a in answers), (greedy, answers)
    assert sampled(0) == answers[0]


def test_models_health_page_and_schema(client, url):
    assert [m.id for m in client.models.list().data] == ["embedded"]
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "embedded"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "<canvas" in page.text
    schema = httpx.get(url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/detect", "/v1/segment", "/v1/models", "/health"} <= set(
        schema["paths"]
    )


# ---------------------------------------------------------------------------------------------
# detect / segment


def test_detect_returns_the_pipelines_boxes(url, embedded_pipe, scenes):
    image = scenes[5].image
    labels = ["circle", "square"]
    r = httpx.post(url + "/v1/detect", json={"image": data_url(image), "labels": labels})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = embedded_pipe.detect(image, labels)
    assert body["text"] == expected.text and body["prompt"] == "detect circle ; square"
    assert [(o["label"], o["box"]) for o in body["objects"]] == [
        (o.label, list(o.box)) for o in expected if o.valid
    ]
    assert (body["width"], body["height"]) == image.size


def test_segment_masks_as_rle_and_png(url, embedded_pipe, scenes):
    image = scenes[6].image
    shape = scenes[6].things[0].shape
    body = {"image": data_url(image), "labels": shape, "mask_format": "both"}
    r = httpx.post(url + "/v1/segment", json=body)
    assert r.status_code == 200, r.text
    expected = [o for o in embedded_pipe.segment(image, shape) if o.valid]
    got = r.json()["objects"]
    assert len(got) == len(expected)
    for o, e in zip(got, expected, strict=True):
        if e.mask is None:
            assert o["mask"] is None
            continue
        assert np.array_equal(rle_to_mask(o["mask"]["rle"]), e.mask)
        png = o["mask"]["png"].split(",", 1)[1]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))) > 0, e.mask)


def test_file_urls_inside_the_allowed_directory(url, files, embedded_pipe, scenes):
    expected = embedded_pipe.generate(scenes[0].image, "caption en", max_new_tokens=8).text
    for where in (f"file://{files}/scene.png", "file:///scene.png", "file://scene.png"):
        r = httpx.post(url + "/v1/chat/completions", json=_with_url(where, 8))
        assert r.status_code == 200, (where, r.text)
        assert r.json()["choices"][0]["message"]["content"] == expected
    for where, status in (("file:///missing.png", 404), ("file:///notes.txt", 400)):
        r = httpx.post(url + "/v1/chat/completions", json=_with_url(where))
        assert r.status_code == status and "error" in r.json(), r.text


# ---------------------------------------------------------------------------------------------
# Every bad input: a 4xx with a JSON error, and the server keeps serving


def _image_bytes(size):
    return image_b64(Image.new("RGB", size, "white"))


def _png_url():
    return data_url(Image.new("RGB", (32, 32), "white"))


def _good(**extra):
    return {**_with_url(_png_url()), **extra}


def _with_url(u, max_tokens=4, prompt="caption en"):
    body = chat_body(None, prompt, max_tokens=max_tokens)
    body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": u}})
    return body


BAD = {
    "malformed json": ("/v1/chat/completions", b'{"messages": [', 400),
    "not an object": ("/v1/chat/completions", b"[1, 2]", 400),
    "wrong type": ("/v1/chat/completions", {"messages": "caption en"}, 400),
    "no messages": ("/v1/chat/completions", {"messages": []}, 400),
    "no user message": (
        "/v1/chat/completions",
        {"messages": [{"role": "system", "content": "hi"}]},
        400,
    ),
    "bad role": ("/v1/chat/completions", {"messages": [{"role": "x", "content": "a"}]}, 400),
    "temperature NaN": (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "a"}], "temperature": NaN}',
        400,
    ),
    "negative max_tokens": ("/v1/chat/completions", _good(max_tokens=-1), 400),
    "max_tokens over the cap": ("/v1/chat/completions", _good(max_tokens=65), 400),
    "n over the cap": ("/v1/chat/completions", _good(n=99), 400),
    "too many stops": ("/v1/chat/completions", _good(stop=list("abcde")), 400),
    "stop too long": ("/v1/chat/completions", _good(stop=["a", "x" * 65]), 400),
    "prompt too long": ("/v1/chat/completions", _with_url(_png_url(), prompt="x" * 301), 400),
    "no image": ("/v1/chat/completions", chat_body(None, "caption en"), 400),
    "too many images": (
        "/v1/chat/completions",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": _png_url()}}] * 5,
                }
            ]
        },
        400,
    ),
    "unknown model": ("/v1/chat/completions", _good(model="gpt-9"), 404),
    "bad base64": ("/v1/chat/completions", _with_url("data:image/png;base64,@@@"), 400),
    "data url not base64": ("/v1/chat/completions", _with_url("data:image/png,abc"), 400),
    "not an image": (
        "/v1/chat/completions",
        _with_url("data:image/png;base64," + base64.b64encode(b"hello world").decode()),
        400,
    ),
    "truncated image": (
        "/v1/chat/completions",
        _with_url(
            "data:image/png;base64,"
            + base64.b64encode(base64.b64decode(_image_bytes((64, 64)))[:60]).decode()
        ),
        400,
    ),
    "too many pixels": (
        "/v1/chat/completions",
        _with_url("data:image/png;base64," + _image_bytes((1200, 1000))),
        413,
    ),
    "ftp url": ("/v1/chat/completions", _with_url("ftp://example.com/a.png"), 400),
    "remote url disabled": ("/v1/chat/completions", _with_url("http://127.0.0.1:1/a.png"), 400),
    "path traversal": ("/v1/chat/completions", _with_url("file://../../../../etc/passwd"), 403),
    "encoded traversal": (
        "/v1/chat/completions",
        _with_url("file:///%2e%2e/%2e%2e/etc/hosts"),
        403,
    ),
    "absolute path is taken inside": (
        "/v1/chat/completions",
        _with_url("file:///etc/hostname"),  # = DIR/etc/hostname, which does not exist
        404,
    ),
    "symlink out of the directory": ("/v1/chat/completions", _with_url("file:///link.png"), 403),
    "detect without labels": ("/v1/detect", {"image": _image_bytes((32, 32)), "labels": []}, 400),
    "labels with ;": ("/v1/detect", {"image": _image_bytes((32, 32)), "labels": ["a;b"]}, 400),
    "detect bad image": ("/v1/detect", {"image": "%%%", "labels": "circle"}, 400),
    "segment wrong mask format": (
        "/v1/segment",
        {"image": _image_bytes((32, 32)), "labels": "a", "mask_format": "gif"},
        400,
    ),
    "body too large": ("/v1/detect", b"x" * 2_000_001, 413),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_with_a_json_error(url, case):
    path, body, status = BAD[case]
    if isinstance(body, bytes):
        r = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(url + path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    assert MESSAGES.get(case, "").lower() in error["message"].lower(), error  # names the problem
    assert httpx.get(url + "/health").status_code == 200  # still serving


def test_unknown_route_and_method_are_json_errors(url):
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


# ---------------------------------------------------------------------------------------------
# Batching, queueing, cancellation


def test_concurrent_requests_are_batched_and_answered_as_alone(url, embedded_pipe, scenes):
    prompts = [
        "caption en",
        "answer en how many shapes are there?",
        "answer en is there a red circle?",
    ]
    jobs = [(s.image, p) for s in scenes for p in prompts][:24]
    expected = [embedded_pipe.generate(im, p, max_new_tokens=20).text for im, p in jobs]
    before = httpx.get(url + "/health").json()["batches"]["max_rows"]

    def ask(job):
        r = httpx.post(
            url + "/v1/chat/completions", json=chat_body(*job, max_tokens=20), timeout=60
        )
        return r.status_code, r.json()["choices"][0]["message"]["content"]

    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, jobs))
    assert [s for s, _ in got] == [200] * len(jobs)
    assert [t for _, t in got] == expected
    assert max(before, httpx.get(url + "/health").json()["batches"]["max_rows"]) > 1


def test_full_queue_answers_503_with_retry_after(embedded_pipe, scenes):
    settings = Settings(max_batch=1, max_queue=1, max_tokens=64)
    with running(embedded_pipe, settings) as base:
        body = chat_body(scenes[0].image, "caption en", max_tokens=64, temperature=2.0, seed=1)

        def ask(_):
            r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
            return r.status_code, r.headers.get("retry-after"), r.json()

        with cf.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(ask, range(12)))
    statuses = [s for s, _, _ in got]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1, statuses
    for status, retry, body in got:
        if status == 503:
            assert retry == "1" and body["error"]["code"] == "queue_full"


def slowed(embedded_pipe, seconds: float):
    """The same pipeline with every model call delayed (a stand-in for a big model)."""
    import copy

    from paligemma.pipeline import Pipeline

    model = copy.copy(embedded_pipe.model)  # shares the weights
    forward = type(embedded_pipe.model).forward
    model.forward = lambda *a, **k: (time.sleep(seconds), forward(model, *a, **k))[1]
    return Pipeline(model, embedded_pipe.processor, embedded_pipe.mask_vae)


def test_timeout_is_a_504_and_a_disconnect_frees_the_slot(embedded_pipe, scenes):
    slow = slowed(embedded_pipe, 0.1)
    body = chat_body(scenes[1].image, "caption en", max_tokens=64)
    with running(slow, Settings(timeout_s=0.05, max_batch=1)) as base:
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    with running(slow, Settings(max_batch=1)) as base:
        with httpx.stream(
            "POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=30
        ) as r:
            next(r.iter_lines())  # the first event arrived: the job is running
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the cancelled job stops at its next token
            health = httpx.get(base + "/health").json()
            if health["batches"]["cancelled"] >= 1 and health["busy"] == 0:
                break
            time.sleep(0.05)
        assert health["batches"]["cancelled"] >= 1 and health["busy"] == 0, health
        r = httpx.post(base + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=30)
        assert r.status_code == 200


def test_api_key_guards_everything_but_health(embedded_pipe, scenes):
    with running(embedded_pipe, Settings(api_key="s3cret", model_name="m")) as base:
        assert httpx.get(base + "/health").status_code == 200
        for path in ("/v1/models", "/openapi.json"):
            r = httpx.get(base + path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        from openai import AuthenticationError, OpenAI

        with pytest.raises(AuthenticationError):
            OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        good = OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        reply = good.chat.completions.create(
            model="m", messages=user(scenes[0].image, "caption en"), max_tokens=4
        )
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_serve_binds_loopback_by_default():
    from paligemma.cli.commands import build_parser as _parser

    args = _parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.api_key is None
    assert json.dumps(args.port) == "8000"


def test_the_server_pixel_limit_is_the_shared_guard_with_its_own_limit():
    from paligemma.serve.errors import APIError
    from paligemma.serve.images import decode_image

    url = data_url(Image.new("RGB", (200, 100)))
    assert decode_image(url, Settings(max_pixels=20_000)).size == (200, 100)
    with pytest.raises(APIError) as e:
        decode_image(url, Settings(max_pixels=19_999))
    assert e.value.status == 413 and e.value.code == "too_large"
    assert "200x100 = 20,000 pixels, above the limit of 19,999" in e.value.message


def test_file_urls_over_the_body_size_limit_are_a_413(tmp_path):
    """A file: URL's bytes count against the body-size limit, as an inline image's do."""
    from paligemma.serve.errors import APIError
    from paligemma.serve.images import decode_image

    Image.new("RGB", (64, 48), "white").save(tmp_path / "a.png")
    size = (tmp_path / "a.png").stat().st_size
    ok = Settings(allow_dir=str(tmp_path), max_body_bytes=size)
    assert decode_image("file:///a.png", ok).size == (64, 48)
    with pytest.raises(APIError) as e:
        decode_image("file:///a.png", Settings(allow_dir=str(tmp_path), max_body_bytes=size - 1))
    assert e.value.status == 413 and e.value.code == "too_large"
    assert "body-size limit" in e.value.message


MESSAGES = {  # the error names what is wrong
    "negative max_tokens": "max_tokens",
    "max_tokens over the cap": "max_tokens 65",
    "n over the cap": "n 99",
    "too many stops": "stop",
    "stop too long": "at most 64 characters",
    "prompt too long": "301 characters",
    "no image": "image_url",
    "too many images": "5 images",
    "bad base64": "base64",
    "not an image": "not a readable image",
    "truncated image": "truncated",
    "too many pixels": "pixels",
    "ftp url": "scheme",
    "remote url disabled": "remote",
    "path traversal": "outside",
    "unknown model": "gpt-9",
    "malformed json": "JSON",
    "body too large": "larger than",
}


def test_paligemma_serve_command_starts_and_stops(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    from paligemma.serve import running as _  # noqa: F401  (the package is importable)

    with socket.socket() as probe:  # a port nothing holds now (a fixed one may be taken)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "paligemma.cli", "serve", "--port", port, "--api-key", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, r = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        if r is not None:
            assert r.status_code == 200 and r.json()["model"] == "paligemma-embedded"
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert r is not None, f"the server never answered:\n{out[-2000:]}"  # with its own output
    assert proc.returncode == 0, out[-2000:]
