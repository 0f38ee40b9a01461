"""The static batcher (`--scheduler static`; kept to compare with the engine): concurrent
requests share the model, each answered alone.

One worker thread owns the model. It takes the greedy jobs waiting (up to `max_batch` rows)
and decodes them as one left-padded batch until its last row finishes, each row stopping at its
own `<eos>`, stop string or token limit, so every row gets exactly the tokens it gets alone (the
engine's batching guarantee); only then does it look at the queue again. A sampled job runs on
its own (its `n` rows with its seed). Tokens go back to the asyncio side as they are decoded
(for streaming); a cancelled job (client gone, timeout) stops at the next step.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .. import generate as engine
from ..pipeline import Pipeline
from ..textstream import TextStream
from .batcher import Choice, Job, Scheduler


class Batcher(Scheduler):
    """Static batching: a batch runs to its last row before the next one starts."""

    def __init__(
        self,
        pipe: Pipeline,
        max_batch: int = 8,
        max_queue: int = 64,
        metrics: Any = None,
        adapters: Any = None,
    ) -> None:
        super().__init__(pipe, max_batch, max_queue, metrics, adapters)
        self._batch: list[Job] = []

    def _running_jobs(self) -> list[Job]:
        return list(self._batch)

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
                return batch

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch = self._take()
            if not batch:
                return
            self.busy, self._batch = len(batch), batch
            try:
                self._decode(batch)
            except Exception as e:  # a failure answers its requests; the worker keeps serving
                for job in batch:
                    job.error = e
            self.busy, self._batch = 0, []
            for job in batch:
                self._complete(job)

    def _decode(self, batch: list[Job]) -> None:
        """Greedy: one row per job (n copies share it). Sampled: one job, n rows, its seed."""
        rows = [job for job in batch for _ in range(1 if job.greedy else job.n)]
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(rows))
        pipe, tok = self.pipe, self.pipe.tokenizer
        self._select([j.adapter for j in rows])  # per-row LoRA: each row its job's adapter
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
        cfg = pipe.generation_config(**options)
        streams = [TextStream(tok, j.stop) for j in rows]
        reasons: list[str | None] = [None] * len(rows)
        eos = tok.eos_id

        def should_stop(row: int, ids: list[int]) -> bool:
            job = rows[row]
            job.cancelled = job.cancelled or job.expired
            if job.cancelled:
                reasons[row] = "cancelled"
            elif len(ids) >= job.max_tokens:
                reasons[row] = "length"
            elif streams[row].stopped:
                reasons[row] = "stop"
            return reasons[row] is not None

        stops = set() if any(j.ignore_eos for j in rows) else {eos}  # then per row below
        for step_ids in engine.stream(pipe.model, inputs, cfg, stops, None):
            for row, t in enumerate(step_ids):
                if t is None or reasons[row] is not None:
                    continue
                if t == eos and not rows[row].ignore_eos:
                    reasons[row] = "stop"
                    continue
                piece = streams[row].push(t)
                if should_stop(row, streams[row].ids):
                    piece += streams[row].flush()
                if piece:
                    self._piece(rows, row, piece)
            if all(r is not None for r in reasons):
                break
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

    def _piece(self, rows: list[Job], row: int, piece: str) -> None:
        job = rows[row]
        index = sum(1 for j in rows[:row] if j is job)
        if job.greedy and job.n > 1:
            for i in range(job.n):
                job._send("piece", i, piece)
        else:
            job._send("piece", index, piece)
