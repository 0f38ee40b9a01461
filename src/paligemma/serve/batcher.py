"""Request batching for the server: concurrent requests share the model, each answered alone.

One worker thread owns the model. Requests are `Job`s in a bounded queue; the worker takes the
greedy jobs waiting (up to `max_batch` rows) and decodes them as one left-padded batch, each row
stopping at its own `<eos>`, stop string or token limit, so every row gets exactly the tokens it
gets alone (the engine's batching guarantee). A sampled job runs on its own (its `n` rows with
its seed), so its result does not depend on what else is queued. Tokens go back to the asyncio
side as they are decoded (for streaming); a cancelled job (client gone, timeout) stops at the
next step and frees its rows, and so does a job past its `deadline`. With `adapters` (LoRA
adapters on the base: lora/multi.py) each row runs its job's adapter; rows of different adapters
share a batch (per-row LoRA). `drain` (graceful shutdown) stops admitting, lets running rows
finish until its deadline and cancels the rest. `metrics` (ServerMetrics) sees the queue, the
rows, prefill and decode times and every token.

    batcher = Batcher(pipe, max_batch=8, max_queue=64); batcher.start()
    job = batcher.submit(Job([image], "caption en", max_tokens=32), loop)   # raises QueueFull
    # the server awaits job.done, reads job.choices, or streams job.events
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .. import generate as engine
from ..pipeline import Pipeline
from ..textstream import TextStream

if TYPE_CHECKING:
    from ..lora.multi import Adapters
    from .metrics import ServerMetrics


class QueueFull(RuntimeError):
    """The queue holds `max_queue` jobs already; retry later."""


class Draining(RuntimeError):
    """The server is shutting down: a new job is refused, an unfinished one cancelled."""


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
    adapter: str | None = None  # the LoRA adapter's name (None: the base model)
    deadline: float | None = None  # time.monotonic() seconds; the rows retire when it passes
    # Filled in by the batcher:
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
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def _send(self, kind: str, index: int | None = None, value: Any = None) -> None:
        if kind == "piece" and self.first_token is None:
            self.first_token = time.monotonic()
        if self.loop is not None and self.events is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, index, value))

    def _finish(self) -> None:
        if self.loop is not None and self.done is not None:
            self.loop.call_soon_threadsafe(_settle, self.done, None)
        self._send("done")


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


class Batcher:
    def __init__(
        self,
        pipe: Pipeline,
        max_batch: int = 8,
        max_queue: int = 64,
        metrics: ServerMetrics | None = None,
        adapters: Adapters | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.pipe, self.max_batch, self.max_queue = pipe, max_batch, max_queue
        self.metrics, self.adapters = metrics, adapters
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = self._draining = False
        self.stats = {"batches": 0, "rows": 0, "max_rows": 0, "cancelled": 0}
        self.busy = 0  # jobs being decoded now

    # -- asyncio side ----------------------------------------------------------------------
    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> Job:
        names = self.adapters.names if self.adapters is not None else []
        if job.adapter is not None and job.adapter not in names:
            raise ValueError(f"unknown adapter {job.adapter!r}; these are {names}")
        job.loop, job.events, job.done = loop, asyncio.Queue(), loop.create_future()
        job.submitted = time.monotonic()
        with self._cond:
            if self._draining:
                raise Draining("the server is shutting down and takes no new requests")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting")
            self._waiting.append(job)
            self._queue_changed()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a waiting job, or stop a running one at its next token."""
        job.cancelled = True
        with self._cond:
            if job in self._waiting:
                self._drop(job, None)

    def _drop(self, job: Job, error: BaseException | None) -> None:
        """A waiting job leaves the queue unanswered (the lock is held)."""
        self._waiting.remove(job)
        self._queue_changed()
        self.stats["cancelled"] += 1
        job.cancelled, job.error = True, job.error or error
        job.choices = [Choice("", "cancelled", 0)]
        job._finish()

    def _queue_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth(len(self._waiting))

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def drain(self, deadline_s: float) -> None:
        """Graceful shutdown: refuse new jobs (submit raises Draining); let the accepted ones
        run until `deadline_s` seconds from now; then cancel what is left (its error a
        Draining) and return once nothing runs."""
        end = time.monotonic() + deadline_s
        with self._cond:
            self._draining = True
            while (self._waiting or self._running) and time.monotonic() < end:
                self._cond.wait(0.05)
            for job in list(self._waiting):
                self._drop(job, Draining("the server shut down before this request started"))
            for job in self._running:
                job.error = job.error or Draining("the server shut down before this finished")
                job.cancelled = True
            while self._running and self._thread is not None and self._thread.is_alive():
                self._cond.wait(0.05)  # the worker retires them at its next step

    # -- worker ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="paligemma-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _take(self) -> list[Job]:
        """Block until there is work: the first job, plus (if greedy) the greedy jobs waiting
        behind it, up to max_batch rows. A short pause lets concurrent requests arrive."""
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return []
            time.sleep(0.002)
            with self._cond:
                for job in [j for j in self._waiting if j.expired]:
                    self._drop(job, DeadlineExceeded("the request's deadline passed"))
                if not self._waiting:  # a cancel emptied it meanwhile
                    continue
                first = self._waiting.popleft()
                batch = [first]
                if first.greedy:
                    for job in list(self._waiting):
                        if len(batch) == self.max_batch:
                            break
                        if job.greedy:
                            self._waiting.remove(job)
                            batch.append(job)
                self._running = batch
                self._queue_changed()
                return batch

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch = self._take()
            if not batch:
                return
            self.busy = len(batch)
            try:
                self._decode(batch)
            except Exception as e:  # a failure answers its requests; the worker keeps serving
                for job in batch:
                    job.error = e
            for job in batch:
                self._complete(job)
            self.busy = 0
            if self.metrics is not None:
                self.metrics.running_rows(0, self.max_batch)
            with self._cond:
                self._running = []
                self._cond.notify_all()

    def _complete(self, job: Job) -> None:
        self.stats["cancelled"] += job.cancelled
        if job.after is not None and job.error is None and not job.cancelled:
            try:
                job.extra = job.after(job.choices[0].text)
            except Exception as e:
                job.error = e
        if self.metrics is not None and job.choices:
            self.metrics.finished(sum(c.tokens for c in job.choices), job.choices[0].finish_reason)
        job._finish()

    def _decode(self, batch: list[Job]) -> None:
        """Greedy: one row per job (n copies share it). Sampled: one job, n rows, its seed."""
        rows = [job for job in batch for _ in range(1 if job.greedy else job.n)]
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(rows))
        if self.metrics is not None:
            self.metrics.running_rows(len(rows), self.max_batch)
        if self.adapters is not None:
            self.adapters.select([j.adapter for j in rows])
        pipe = self.pipe
        inputs = pipe.processor(images=[j.images for j in rows], text=[j.prompt for j in rows])
        first = batch[0]
        options: dict[str, Any] = {"max_new_tokens": max(j.max_tokens for j in rows)}
        if not first.greedy:
            options |= {
                "do_sample": True,
                "temperature": first.temperature,
                "top_p": first.top_p,
                "seed": first.seed,
            }
        streams = [TextStream(pipe.tokenizer, j.stop) for j in rows]
        reasons = self._steps(rows, inputs, pipe.generation_config(**options), streams)
        for row, s in enumerate(streams):
            if reasons[row] is None:  # ran out of max_new_tokens of the batch
                reasons[row] = "length"
            if reasons[row] == "stop" and (rest := s.flush()):
                self._piece(rows, row, rest)
        for job in batch:
            mine = [i for i, j in enumerate(rows) if j is job]
            job.choices = [Choice(streams[i].text, reasons[i], len(streams[i].ids)) for i in mine]
            if job.greedy and job.n > 1:
                job.choices = job.choices * job.n

    def _steps(self, rows: list[Job], inputs: dict, cfg, streams: list[TextStream]) -> list:
        """Decode the batch; each row's finish reason (None: it ran out of steps)."""
        reasons: list[str | None] = [None] * len(rows)
        eos, m = self.pipe.tokenizer.eos_id, self.metrics
        lead = [rows.index(job) == row for row, job in enumerate(rows)]  # a job's first row

        def should_stop(row: int, ids: list[int]) -> bool:
            job = rows[row]
            if job.expired and not job.cancelled:
                job.cancelled, job.error = True, DeadlineExceeded("the request's deadline passed")
            if job.cancelled:
                reasons[row] = "cancelled"
            elif len(ids) >= job.max_tokens:
                reasons[row] = "length"
            elif streams[row].stopped:
                reasons[row] = "stop"
            return reasons[row] is not None

        clock, prefilled = time.monotonic(), False
        for step_ids in engine.stream(self.pipe.model, inputs, cfg, {eos}, None):
            now = time.monotonic()
            step_s, clock = now - clock, now
            if m is not None:
                _timed(m, step_s, prefilled, inputs, reasons)
            prefilled = True
            for row, t in enumerate(step_ids):
                if t is None or reasons[row] is not None:
                    continue
                if m is not None and streams[row].ids:
                    m.output_token(step_s)
                elif m is not None and lead[row]:
                    m.first_token(now - rows[row].submitted)
                if t == eos:
                    reasons[row] = "stop"
                    continue
                piece = streams[row].push(t)
                if should_stop(row, streams[row].ids):
                    piece += streams[row].flush()
                if piece:
                    self._piece(rows, row, piece)
            if all(r is not None for r in reasons):
                break
        return reasons

    def _piece(self, rows: list[Job], row: int, piece: str) -> None:
        job = rows[row]
        index = sum(1 for j in rows[:row] if j is job)
        if job.greedy and job.n > 1:
            for i in range(job.n):
                job._send("piece", i, piece)
        else:
            job._send("piece", index, piece)


def _timed(m: ServerMetrics, seconds: float, prefilled: bool, inputs: dict, reasons: list) -> None:
    """One engine step on the metrics: the prefill (with the first tokens), or a decode step."""
    if not prefilled:
        mask = inputs.get("attention_mask")
        m.prefill(seconds, int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
    else:
        m.decode_step(seconds, sum(r is None for r in reasons))
