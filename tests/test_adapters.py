"""Many LoRA adapters on one base (lora/multi.py): each row answers as its adapter alone, and
`paligemma serve --adapter NAME=DIR` serves them by the request's `model` under concurrent load,
then shuts down gracefully on SIGTERM."""

from __future__ import annotations

import concurrent.futures as cf
import copy
import signal
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from server_util import chat_body, serve_process

import paligemma
from paligemma.demo import synthetic
from paligemma.lora import Adapters, apply_lora_, lora_modules, save_adapter


def make_adapter(base, out_dir, seed: int, targets=None) -> str:
    """A trained-looking adapter on the embedded model: B random (seeded), so it answers its own
    way; written as save_adapter writes it (PEFT's format)."""
    pipe = copy.deepcopy(base)
    torch.manual_seed(seed)
    kwargs = {} if targets is None else {"targets": targets}
    apply_lora_(pipe.model, rank=4, alpha=8, **kwargs)
    with torch.no_grad():
        for m in lora_modules(pipe.model).values():
            m.lora_B.normal_(0, 0.5)
    save_adapter(pipe.model, out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, embedded_pipe):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "red": make_adapter(embedded_pipe, root / "red", 1),
        "blue": make_adapter(
            embedded_pipe, root / "blue", 2, targets=("q_proj", "v_proj", "down_proj")
        ),
    }


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(7)
    return [synthetic.make_scene(rng, size=(96, 96)).image for _ in range(4)]


@pytest.fixture(scope="module")
def alone(adapter_dirs, scenes, embedded_pipe):
    """Each adapter's (and the base's) answers from `paligemma.load(base, adapter=DIR)`."""
    out = {}
    for name, d in [(None, None), *adapter_dirs.items()]:
        pipe = embedded_pipe if d is None else paligemma.load(adapter=d)
        out[name] = [r.text for r in pipe.generate(scenes, ["caption en"] * 4, max_new_tokens=12)]
    return out


def test_per_row_adapters_answer_as_each_adapter_alone(adapter_dirs, scenes, alone, embedded_pipe):
    assert len({tuple(v) for v in alone.values()}) == 3  # the adapters answer differently
    pipe = copy.deepcopy(embedded_pipe)
    adapters = Adapters(pipe.model, adapter_dirs)
    assert adapters.names == ["red", "blue"]
    rows = ["red", None, "blue", "red"]
    adapters.select(rows)
    got = [r.text for r in pipe.generate(scenes, ["caption en"] * 4, max_new_tokens=12)]
    assert got == [alone[name][i] for i, name in enumerate(rows)]
    adapters.select(["blue"] * 4)  # one adapter for every row: the plain path
    got = [r.text for r in pipe.generate(scenes, ["caption en"] * 4, max_new_tokens=12)]
    assert got == alone["blue"]
    with pytest.raises(KeyError, match="unknown adapters"):
        adapters.select(["green"])


def test_served_adapters_answer_as_alone_then_sigterm_drains(adapter_dirs, scenes, alone):
    """`paligemma serve --adapter red=DIR --adapter blue=DIR`: threads fire requests at the base
    and both names at once (rows of different adapters share batches); each answer equals
    `paligemma.load(base, adapter=DIR)`'s. Then SIGTERM under load: every request the server
    accepted is answered (200) or refused / cancelled with a clear 503 `shutting_down`, and
    the process exits 0 within serve_process's 30 s (it raises otherwise)."""
    flags = [f"--adapter={name}={d}" for name, d in adapter_dirs.items()]
    flags += ["--max-batch", "8", "--shutdown-timeout", "0.2"]
    statuses: list[tuple[int, str]] = []
    with serve_process(*flags, stop=signal.SIGTERM) as base:
        listed = httpx.get(base + "/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["paligemma-embedded", "red", "blue"]
        body = chat_body(scenes[0], "caption en", max_tokens=12)
        wrong = httpx.post(base + "/v1/chat/completions", json={**body, "model": "green"})
        assert wrong.status_code == 404 and "'red' 'blue'" in wrong.json()["error"]["message"]
        asks = [(name, i) for _ in range(2) for name in (None, "red", "blue") for i in range(4)]

        def ask(name, i):
            body = {**chat_body(scenes[i], "caption en", max_tokens=12), "model": name}
            r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == (name or "paligemma-embedded")
            return r.json()["choices"][0]["message"]["content"]

        with cf.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda a: ask(*a), asks))
        assert got == [alone[name][i] for name, i in asks]
        assert httpx.get(base + "/health").json()["batches"]["max_rows"] > 1  # shared batches
        threads = [threading.Thread(target=fire, args=(base, scenes, statuses)) for _ in range(6)]
        for t in threads:
            t.start()
        end = time.monotonic() + 30
        while len(statuses) < 6 and time.monotonic() < end:
            time.sleep(0.05)
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert set(statuses) <= {(200, "ok"), (503, "shutting_down")}, statuses
    assert (200, "ok") in statuses


def fire(base: str, scenes, statuses: list) -> None:
    """Requests at mixed adapters until the server's port closes; their (status, code)."""
    with httpx.Client(timeout=60) as http:
        for k in range(10_000):
            body = chat_body(scenes[k % 4], "caption en", max_tokens=8 + 8 * (k % 3))
            body["model"] = (None, "red", "blue")[k % 3]
            try:
                r = http.post(base + "/v1/chat/completions", json=body)
            except httpx.TransportError:  # the port closed: nothing more is accepted
                return
            code = r.json().get("error", {}).get("code") if r.status_code != 200 else "ok"
            statuses.append((r.status_code, code))


def test_adapter_flags_name_or_not():
    """--adapter NAME=DIR (repeatable) names adapters; one bare DIR (a path may hold "=") keeps
    its old meaning; mixing the two, two bare ones or a repeated NAME is a usage error."""
    from paligemma.cli.common import UsageError
    from paligemma.cli.serve import adapters_from

    assert adapters_from([]) == (None, {})
    assert adapters_from(["runs/a"]) == ("runs/a", {})
    assert adapters_from(["x/y=z"]) == ("x/y=z", {})
    assert adapters_from(["det=runs/a", "ocr=b=c"]) == (None, {"det": "runs/a", "ocr": "b=c"})
    for bad in (["a", "b"], ["a", "det=b"], ["det=a", "det=b"], ["=a"], ["det="]):
        with pytest.raises(UsageError):
            adapters_from(bad)
