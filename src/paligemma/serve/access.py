"""Structured access log: one JSON object per request on the `paligemma.access` logger, written
when the response has been sent (a stream: at its end):

    {"time": "2026-01-01T12:00:00.000Z", "method": "POST", "path": "/v1/chat/completions",
     "status": 200, "model": "paligemma-embedded", "prompt_tokens": 262, "completion_tokens": 9,
     "ttft_s": 0.081, "total_s": 0.143, "client": "127.0.0.1"}

`model`, the token counts and `ttft_s` (queueing + prefill, until the first piece of text) are
null for requests that run no job. `paligemma serve` prints these lines on stdout."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

logger = logging.getLogger("paligemma.access")


class AccessLog:
    """ASGI middleware: after each HTTP request, its line on `logger` (module docstring)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        start, wall = time.monotonic(), datetime.now(timezone.utc)
        status = [500]  # unless a response starts

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            logger.info(json.dumps(_line(scope, status[0], start, wall)))


def _line(scope, status: int, start: float, wall: datetime) -> dict:
    state = scope.get("state") or {}
    job, client = state.get("job"), scope.get("client")
    line = {
        "time": wall.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": status,
        "model": None,
        "prompt_tokens": state.get("prompt_tokens"),
        "completion_tokens": None,
        "ttft_s": None,
        "total_s": round(time.monotonic() - start, 4),
        "client": client[0] if client else None,
    }
    if job is not None:
        line["model"] = state.get("model")
        line["completion_tokens"] = sum(c.tokens for c in job.choices)
        if job.first_token is not None:
            line["ttft_s"] = round(job.first_token - job.submitted, 4)
    return line


def configure(stream=None) -> None:
    """Print the access lines (bare JSON, one a line) on `stream` (stdout), once."""
    import sys

    if not logger.handlers:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
