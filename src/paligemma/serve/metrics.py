"""The server's metrics in Prometheus text format (GET /metrics), through prometheus-client.

`ServerMetrics` holds its own registry (never the process-global one, so several apps in one
process do not collide) and the methods the scheduler calls at the moments they name:

    queue_depth(n)              requests waiting          paligemma_queue_depth
    running_rows(n, capacity)   rows decoding now         paligemma_running_rows, _batch_occupancy
    prefill(seconds, tokens)    one prefill               paligemma_prefill_seconds (histogram),
                                                          paligemma_prefill_tokens_total
    decode_step(seconds, rows)  one decode step           paligemma_decode_step_seconds,
                                                          paligemma_decode_rows_total
    first_token(seconds)        a request's first token   paligemma_time_to_first_token_seconds
    output_token(seconds)       each later token of a row paligemma_time_per_output_token_seconds
    finished(tokens, reason)    a request answered        paligemma_requests_total{reason},
                                                          paligemma_output_tokens_total
    image_cache(hit)            an image-embedding lookup paligemma_image_cache_total{result}
    rejected(reason)            503: queue_full, draining paligemma_rejected_total{reason}

Tokens per second is `rate(paligemma_output_tokens_total[1m])`; the image-cache hit rate is
`rate(paligemma_image_cache_total{result="hit"}[5m]) / rate(paligemma_image_cache_total[5m])`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
except ImportError as e:  # pragma: no cover - a dependency; this names it when it is missing
    raise ImportError(
        "the server's /metrics needs prometheus-client: pip install prometheus-client"
    ) from e

router = APIRouter()
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    """The serving metrics on `registry` (a new one unless given); see the module docstring."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        p = "paligemma_"
        self._queue = Gauge(p + "queue_depth", "requests waiting for a row", registry=r)
        self._running = Gauge(p + "running_rows", "rows being decoded", registry=r)
        self._occupancy = Gauge(p + "batch_occupancy", "running rows / batch rows", registry=r)
        self._prefill = Histogram(
            p + "prefill_seconds", "prefill time", buckets=SECONDS, registry=r
        )
        self._prefill_tokens = Counter(p + "prefill_tokens", "prompt tokens prefilled", registry=r)
        self._decode = Histogram(
            p + "decode_step_seconds", "one decode step", buckets=SECONDS, registry=r
        )
        self._decode_rows = Counter(
            p + "decode_rows", "rows decoded, summed over steps", registry=r
        )
        self._ttft = Histogram(
            p + "time_to_first_token_seconds", "queueing + prefill", buckets=SECONDS, registry=r
        )
        self._tpot = Histogram(
            p + "time_per_output_token_seconds", "after the first", buckets=SECONDS, registry=r
        )
        self._output = Counter(p + "output_tokens", "tokens generated", registry=r)
        self._requests = Counter(p + "requests", "requests answered", ["reason"], registry=r)
        self._cache = Counter(p + "image_cache", "image-embedding lookups", ["result"], registry=r)
        self._rejected = Counter(p + "rejected", "requests refused", ["reason"], registry=r)

    def queue_depth(self, n: int) -> None:
        self._queue.set(n)

    def running_rows(self, n: int, capacity: int) -> None:
        self._running.set(n)
        self._occupancy.set(n / capacity if capacity else 0.0)

    def prefill(self, seconds: float, tokens: int) -> None:
        self._prefill.observe(seconds)
        self._prefill_tokens.inc(tokens)

    def decode_step(self, seconds: float, rows: int) -> None:
        self._decode.observe(seconds)
        self._decode_rows.inc(rows)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def output_token(self, seconds: float) -> None:
        self._tpot.observe(seconds)

    def finished(self, tokens: int, reason: str) -> None:
        self._requests.labels(reason).inc()
        self._output.inc(tokens)

    def image_cache(self, hit: bool) -> None:
        self._cache.labels("hit" if hit else "miss").inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def text(self) -> bytes:
        """Everything, in Prometheus' text exposition format."""
        return generate_latest(self.registry)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The app's metrics, for a Prometheus scrape."""
    return Response(request.app.state.metrics.text(), media_type=CONTENT_TYPE_LATEST)
