"""Operating the server: /metrics (Prometheus text), per-request deadlines, the JSON access log,
and graceful shutdown (Batcher.drain in process; SIGTERM on a real `paligemma serve`:
test_adapters.py)."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from server_util import chat_body
from test_server import slowed

from paligemma.demo import synthetic
from paligemma.serve import Settings, create_app


@pytest.fixture(scope="module")
def image():
    return synthetic.make_scene(np.random.default_rng(5), size=(96, 96)).image


def scrape(client) -> dict[str, float]:
    """/metrics as {"name{label=value}": value}, parsed by prometheus-client's own parser."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def idle(client) -> None:
    """Until the worker holds no rows (a retired row is dropped at the worker's next step)."""
    end = time.monotonic() + 5
    while client.get("/health").json()["busy"] and time.monotonic() < end:
        time.sleep(0.02)
    assert client.get("/health").json()["busy"] == 0


def counted(pipe) -> list[float]:
    """A list that gains an entry (its time) at each call of the pipeline's model."""
    calls, forward = [], pipe.model.forward
    pipe.model.forward = lambda *a, **k: (calls.append(time.monotonic()), forward(*a, **k))[1]
    return calls


def test_metrics_move_as_requests_are_served(embedded_pipe, image):
    with TestClient(create_app(embedded_pipe, Settings(max_batch=4))) as client:
        before = scrape(client)
        assert before["paligemma_output_tokens_total"] == 0
        assert before["paligemma_time_to_first_token_seconds_count"] == 0
        for tokens in (3, 5):
            body = chat_body(image, "caption en", max_tokens=tokens)
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        after = scrape(client)
        finished = sum(v for k, v in after.items() if k.startswith("paligemma_requests_total"))
        assert finished == 2
        assert 2 <= after["paligemma_output_tokens_total"] <= 8
        assert after["paligemma_time_to_first_token_seconds_count"] == 2
        assert (
            after["paligemma_prefill_seconds_count"] == 2
            and after["paligemma_prefill_tokens_total"] > 0
        )
        assert after["paligemma_decode_step_seconds_count"] >= 1
        assert after["paligemma_time_per_output_token_seconds_count"] >= 1
        assert after["paligemma_queue_depth"] == 0 and after["paligemma_running_rows"] == 0
        client.app.state.batcher.drain(0)  # shutting down: a new request is refused (503)
        r = client.post("/v1/chat/completions", json=chat_body(image, "caption en"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert scrape(client)["paligemma_rejected_total{reason=draining}"] == 1
    with TestClient(create_app(embedded_pipe)) as other:  # its own registry: starts at zero
        assert scrape(other)["paligemma_output_tokens_total"] == 0


def test_a_request_deadline_retires_its_row(embedded_pipe, image):
    """The body's `timeout` or the X-Request-Timeout header (capped by the server's timeout):
    504 when it passes, and the worker drops the row (it does not decode to max_tokens)."""
    slow = slowed(embedded_pipe, 0.15)  # the answer (3 tokens + eos) takes > 0.6 s
    calls = counted(slow)
    body = chat_body(image, "caption en", max_tokens=60)
    with TestClient(create_app(slow, Settings(max_batch=1, timeout_s=30))) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        whole = len(calls)  # model calls of the whole answer (a prefill and its steps)
        assert whole >= 3
        for extra, headers in (({"timeout": 0.25}, {}), ({}, {"X-Request-Timeout": "0.25"})):
            calls.clear()
            r = client.post("/v1/chat/completions", json={**body, **extra}, headers=headers)
            assert r.status_code == 504 and r.json()["error"]["type"] == "timeout", r.text
            assert r.json()["error"]["message"].startswith("no answer within 0.2")
            idle(client)
            # Each model call sleeps 0.15 s, so the 0.25 s deadline passes during the first
            # step at the latest and the worker drops the row before the next: fewer calls
            # than the whole answer, however long the host took (no wall-clock bound).
            assert len(calls) <= 2 < whole, (len(calls), whole)
        r = client.post("/v1/chat/completions", json=body, headers={"X-Request-Timeout": "soon"})
        assert r.status_code == 400 and "x-request-timeout" in r.json()["error"]["message"]
    with TestClient(create_app(slow, Settings(max_batch=1, timeout_s=0.3))) as client:
        r = client.post("/v1/chat/completions", json={**body, "timeout": 100})  # capped
        assert r.status_code == 504
        idle(client)
        assert scrape(client)["paligemma_requests_total{reason=cancelled}"] == 1


def test_access_log_is_one_json_line_per_request(embedded_pipe, image, caplog):
    caplog.set_level(logging.INFO, logger="paligemma.access")
    with TestClient(create_app(embedded_pipe, Settings(model_name="pg"))) as client:
        body = chat_body(image, "caption en", max_tokens=4)
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.post("/v1/chat/completions", json={"model": "x", **body}).status_code == 404
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "paligemma.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/chat/completions", 200),
        ("GET", "/health", 200),
        ("POST", "/v1/chat/completions", 404),
    ]
    chat = lines[0]
    assert chat["model"] == "pg" and chat["prompt_tokens"] > 0
    assert 1 <= chat["completion_tokens"] <= 4
    assert 0 < chat["ttft_s"] <= chat["total_s"] and chat["client"]
    assert chat["time"].endswith("Z")
    assert lines[1]["model"] is None and lines[1]["completion_tokens"] is None
