"""A request's job on the batcher: queued (503 when the queue is full) and awaited (504 after
the timeout; the job is cancelled when the client leaves)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from .batcher import Job, QueueFull
from .errors import APIError


def submit(job: Job, request: Request) -> Job:
    """Queue `job` on the app's batcher; 503 with Retry-After when the queue is full."""
    try:
        return request.app.state.batcher.submit(job, asyncio.get_running_loop())
    except QueueFull:
        raise APIError(
            503,
            "the server is busy; retry shortly",
            "server_busy",
            "queue_full",
            {"Retry-After": "1"},
        ) from None


async def wait(job: Job, request: Request) -> bool:
    """Until the job is done (True), or the client left (False); 504 after the timeout."""
    batcher, timeout_s = request.app.state.batcher, request.app.state.settings.timeout_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not job.done.done():
        if loop.time() > deadline:
            batcher.cancel(job)
            raise APIError(504, f"no answer within {timeout_s:g} s", "timeout", "timeout")
        await asyncio.wait([job.done], timeout=max(0.0, min(0.2, deadline - loop.time())))
        if not job.done.done() and await request.is_disconnected():
            batcher.cancel(job)
            return False
    if job.error is not None:
        raise APIError(500, f"generation failed: {job.error}", "server_error")
    return True
