"""A request's job on the batcher: its deadline (the request's `timeout` field or
X-Request-Timeout header, capped by the server's timeout), queued (503 when the queue is full or
the server is shutting down) and awaited (504 once the deadline passes; the job is cancelled when
the client leaves)."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from .batcher import DeadlineExceeded, Draining, Job, QueueFull
from .errors import APIError

TIMEOUT_HEADER = "x-request-timeout"


def deadline(request: Request, timeout: float | None = None) -> float:
    """The request's deadline in time.monotonic() seconds: `timeout` (the body's field) or the
    X-Request-Timeout header (seconds), never later than the server's timeout allows."""
    limit = request.app.state.settings.timeout_s
    header = request.headers.get(TIMEOUT_HEADER)
    if timeout is None and header is not None:
        try:
            timeout = float(header)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < float("inf"):
            raise APIError(400, f"{TIMEOUT_HEADER}: a positive number of seconds, got {header!r}")
    return time.monotonic() + min(timeout or limit, limit)


def submit(job: Job, request: Request, prompt_tokens: int | None = None) -> Job:
    """Queue `job` on the app's batcher; 503 with Retry-After when the queue is full, 503 when
    the server is shutting down. The access log (access.py) reads the job afterwards."""
    state = request.app.state
    request.state.job, request.state.prompt_tokens = job, prompt_tokens
    request.state.model = job.adapter or state.settings.model_name
    try:
        return state.batcher.submit(job, asyncio.get_running_loop())
    except QueueFull:
        state.metrics.rejected("queue_full")
        raise APIError(
            503,
            "the server is busy; retry shortly",
            "server_busy",
            "queue_full",
            {"Retry-After": "1"},
        ) from None
    except Draining as e:
        state.metrics.rejected("draining")
        raise APIError(503, str(e), "server_busy", "shutting_down") from None


async def wait(job: Job, request: Request) -> bool:
    """Until the job is done (True), or the client left (False: the job is cancelled and its
    rows freed at the scheduler's next step); 504 after the request's deadline."""
    batcher = request.app.state.batcher
    timeout = None if job.deadline is None else max(0.0, job.deadline - time.monotonic())
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        finished, _ = await asyncio.wait(
            [job.done, gone], timeout=timeout, return_when="FIRST_COMPLETED"
        )
    finally:
        gone.cancel()
    if not finished:
        batcher.cancel(job)
        raise timed_out(job)
    if not job.done.done():
        batcher.cancel(job)
        return False
    if job.error is not None:
        raise failure(job)
    return True


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection. The body is read by now, so the next
    ASGI message is the disconnect; awaiting it (instead of polling `is_disconnected`, which
    a middleware's wrapped receive never answers at once) sees a closed socket at once."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def timed_out(job: Job) -> APIError:
    seconds = (job.deadline or 0) - job.submitted
    return APIError(
        504, f"no answer within {seconds:.3g} s (the request's deadline)", "timeout", "timeout"
    )


def failure(job: Job) -> APIError:
    """The error a failed job answers with: its deadline passed (504), the server shut down
    (503), or the model failed (500)."""
    if isinstance(job.error, DeadlineExceeded):
        return timed_out(job)
    if isinstance(job.error, Draining):
        return APIError(503, str(job.error), "server_busy", "shutting_down")
    return APIError(500, f"generation failed: {job.error}", "server_error")
