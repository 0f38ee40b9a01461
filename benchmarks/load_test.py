"""Load test of `paligemma serve` on the embedded model (not a timed test; numbers go in the
README): the same requests sent one by one, then from many concurrent clients.

    python benchmarks/load_test.py [--requests 200] [--clients 16] [--max-batch 16]

Reports requests/s both ways and their ratio, the status codes (no 5xx allowed except 503s,
which the client retries after Retry-After), and whether every concurrent response equals the
one-by-one response to the same request. Writes benchmarks/results/load_test.json.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import io
import json
import platform
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch

from paligemma.demo import synthetic
from paligemma.serve import server_process

RESULTS = Path(__file__).parent / "results"


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_requests(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    """(path, JSON body) pairs: captions, questions and detections over distinct scenes."""
    rng = np.random.default_rng([seed, 77])
    out = []
    for i in range(n):
        scene = synthetic.make_scene(rng)
        url = _data_url(scene.image)
        kind = ("caption", "answer", "detect")[i % 3]
        if kind == "detect":
            labels = sorted({t.shape for t in scene.things})
            out.append(("/v1/detect", {"image": url, "labels": labels}))
            continue
        prompt = (
            "caption en" if kind == "caption" else "answer en " + synthetic.question(rng, scene)[0]
        )
        content = [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        out.append(
            (
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": content}], "max_tokens": 48},
            )
        )
    return out


def _answer(body: dict) -> object:
    if "choices" in body:
        return [c["message"]["content"] for c in body["choices"]]
    return body.get("text")


def send_all(base: str, requests: list, clients: int) -> tuple[float, list, Counter]:
    """Send every request (retrying 503s after Retry-After) from `clients` threads; returns
    (seconds, answers in request order, status counts)."""
    statuses: Counter = Counter()
    # One connection pool shared by the client threads, as real clients keep their connections
    # (a new httpx.Client per request spends ~40 ms of CPU building its TLS context, which
    # here would be taken from the server's two cores).
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    http = httpx.Client(timeout=300, limits=limits)

    def one(item):
        path, body = item
        while True:
            r = http.post(base + path, json=body)
            statuses[r.status_code] += 1
            if r.status_code != 503:
                return r.status_code, _answer(r.json()) if r.status_code == 200 else r.text
            time.sleep(float(r.headers.get("retry-after", "1")))

    start = time.perf_counter()
    with http, cf.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, requests))
    return time.perf_counter() - start, answers, statuses


def run(n: int = 200, clients: int = 16, max_batch: int = 16, seed: int = 0) -> dict:
    requests = make_requests(n, seed)
    with server_process("--max-batch", str(max_batch)) as base:  # in its own process: the
        # clients here do not share its GIL
        send_all(base, requests[:4], 1)  # warm-up
        alone_s, alone, alone_status = send_all(base, requests, 1)
        together_s, together, together_status = send_all(base, requests, clients)
        stats = httpx.get(base + "/health").json()["batches"]
    server_errors = {
        k: v for k, v in (alone_status + together_status).items() if k >= 500 and k != 503
    }
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "requests": n,
        "clients": clients,
        "max_batch": max_batch,
        "one_by_one_s": round(alone_s, 2),
        "one_by_one_rps": round(n / alone_s, 2),
        "concurrent_s": round(together_s, 2),
        "concurrent_rps": round(n / together_s, 2),
        "speedup": round(alone_s / together_s, 2),
        "identical": sum(a == b for a, b in zip(alone, together, strict=True)),
        "statuses": {str(k): v for k, v in sorted((alone_status + together_status).items())},
        "server_errors": server_errors,
        "batches": stats,
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=16)
    args = p.parse_args()
    r = run(args.requests, args.clients, args.max_batch)
    print(f"{r['requests']} requests, embedded model, {r['machine']}")
    print(f"  one by one        : {r['one_by_one_s']:7.2f} s  {r['one_by_one_rps']:6.2f} req/s")
    print(
        f"  {r['clients']:2d} clients (batch {r['max_batch']}): {r['concurrent_s']:7.2f} s  "
        f"{r['concurrent_rps']:6.2f} req/s  ({r['speedup']:.2f}x)"
    )
    print(f"  identical answers : {r['identical']}/{r['requests']}")
    print(f"  statuses          : {r['statuses']}  (other 5xx: {r['server_errors'] or 'none'})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load_test.json").write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
