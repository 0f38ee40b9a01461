"""The server's request queue: `Job` (one request: prompt, images, limits; its events and
result), `Choice`, the errors, and `Scheduler`, the base of both schedulers (a bounded queue,
submit / cancel / drain, one worker thread that owns the model).

Two schedulers answer jobs: `engine.Engine` (iteration-level: rows join and leave the batch at
every decode step; the default) and `static_batcher.Batcher` (one left-padded batch decoded to
its last row; kept for comparison, `--scheduler static`).

    sched = Engine(pipe, max_batch=8, max_queue=64); sched.start()
    job = sched.submit(Job([image], "caption en", max_tokens=32), loop)   # raises QueueFull
    # the server awaits job.done, reads job.choices, or streams job.events
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..model import set_rows_alone_


class QueueFull(RuntimeError):
    """The queue holds `max_queue` jobs already; retry later."""


class Draining(RuntimeError):
    """The server is shutting down: it takes no new requests."""


class DeadlineExceeded(RuntimeError):
    """The job's deadline passed before it was answered; its rows were retired."""


@dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    tokens: int


@dataclass(eq=False)
class Job:
    images: list[Any]  # PIL images
    prompt: str
    max_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    after: Callable[[str], Any] | None = None  # run on the worker with the text of choice 0
    adapter: str | None = None  # the LoRA adapter's name; None = the base model
    deadline: float | None = None  # time.monotonic() seconds; cancelled when it passes
    ignore_eos: bool = False  # <eos> does not end its rows (load tests: fixed lengths)
    # Filled in by the scheduler:
    events: asyncio.Queue | None = None  # ("piece", index, str) ... then ("done", None, None)
    choices: list[Choice] = field(default_factory=list)
    extra: Any = None  # what `after` returned
    error: BaseException | None = None
    cancelled: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    done: asyncio.Future | None = None
    submitted: float = 0.0  # time.monotonic() when queued
    first_token: float | None = None  # ... when its first piece of text went out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _send(self, kind: str, index: int | None = None, value: Any = None) -> None:
        if kind == "piece" and self.first_token is None:
            self.first_token = time.monotonic()
        if self.loop is not None and self.events is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, index, value))

    def _finish(self) -> None:
        if self.loop is not None and self.done is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_settle, self.done, None)
        self._send("done")


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


class Scheduler:
    """A bounded queue of jobs and the worker thread that answers them (`_run`, in a subclass).

    `stats` and `busy` are what /health shows; `drain` stops admitting, lets the work finish
    until a deadline, and cancels the rest."""

    def __init__(
        self,
        pipe: Any,
        max_batch: int = 8,
        max_queue: int = 64,
        metrics: Any = None,
        adapters: Any = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.pipe, self.metrics, self.adapters = pipe, metrics, adapters
        set_rows_alone_(pipe.model)  # each row's bits as alone (the batching guarantee)
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = self._draining = False
        self.stats = {"batches": 0, "rows": 0, "max_rows": 0, "cancelled": 0}
        self.busy = 0  # rows being decoded now

    def _select(self, row_adapters: list[str | None]) -> None:
        """Tell a many-adapter model each batch row's adapter (None: the base)."""
        if self.adapters is not None:
            self.adapters.select(row_adapters)

    # -- asyncio side ----------------------------------------------------------------------
    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> Job:
        job.loop, job.events, job.done = loop, asyncio.Queue(), loop.create_future()
        job.submitted = time.monotonic()
        with self._cond:
            if self._draining:
                raise Draining("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job, error: BaseException | None = None) -> None:
        """Drop a waiting job, or stop a running one at its next token."""
        job.cancelled = True
        job.error = job.error or error
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self.stats["cancelled"] += 1
                job.choices = [Choice("", "cancelled", 0)]
                job._finish()
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # -- worker ----------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        name = f"paligemma-{type(self).__name__.lower()}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def drain(self, deadline_s: float) -> None:
        """Stop admitting (submit raises Draining); let queued and running jobs finish for up to
        `deadline_s` seconds; cancel the rest (finish_reason "cancelled", error Draining);
        return when nothing runs."""
        with self._cond:
            self._draining = True
        end = time.monotonic() + deadline_s
        while (self.queued or self.busy) and time.monotonic() < end:
            time.sleep(0.01)
        gone = Draining("the server shut down before this request finished")
        for job in list(self._waiting) + self._running_jobs():
            self.cancel(job, gone)
        while self.busy and self._thread is not None and self._thread.is_alive():
            time.sleep(0.005)

    def _complete(self, job: Job) -> None:
        """The job's rows are done: run its `after` (on this worker), then answer it."""
        self.stats["cancelled"] += job.cancelled
        if job.expired and job.cancelled and job.error is None:
            job.error = DeadlineExceeded("the request's deadline passed")
        if job.after is not None and job.error is None and not job.cancelled:
            try:
                job.extra = job.after(job.choices[0].text)
            except Exception as e:
                job.error = e
        job._finish()

    def _running_jobs(self) -> list[Job]:
        return []

    def _run(self) -> None:
        raise NotImplementedError
