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
    """Until the job is done (True), or the client left (False: the job is cancelled and its
    rows freed at the scheduler's next step); 504 after the timeout."""
    batcher, timeout_s = request.app.state.batcher, request.app.state.settings.timeout_s
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        finished, _ = await asyncio.wait(
            [job.done, gone], timeout=timeout_s, return_when="FIRST_COMPLETED"
        )
    finally:
        gone.cancel()
    if not finished:
        batcher.cancel(job)
        raise APIError(504, f"no answer within {timeout_s:g} s", "timeout", "timeout")
    if not job.done.done():
        batcher.cancel(job)
        return False
    if job.error is not None:
        raise APIError(500, f"generation failed: {job.error}", "server_error")
    return True


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection. The body is read by now, so the next
    ASGI message is the disconnect; awaiting it (instead of polling `is_disconnected`, which
    a middleware's wrapped receive never answers at once) sees a closed socket at once."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
