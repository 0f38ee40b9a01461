"""The engine: iteration-level (continuous) batching. Rows join and leave the batch at every
decode step, and every response equals what the request gets alone (greedy: the same tokens;
sampled: the same tokens for the same seed).

Axes (the package's legend): B running rows, T prompt tokens, I images, L image tokens per
image, D text width, V vocabulary.

One worker thread owns the model. Each iteration it

1. admits waiting jobs, first come first served, while the pool has free rows and the
   iteration's prefill budget (`prefill_tokens`, at least one job) lasts: their prefill runs
   as its own step, one left-padded batch in a cache of its own (image embeddings from the
   image cache when the same pixels were seen), and each is copied into free rows of the
   slot pool (`slots`):
   one row for a greedy job (its n choices are the same), n rows sharing the one prefill for a
   sampled one, each with its own generator (`rows`);
2. runs one decode step over the running rows, `KVCache.narrow` of the pool, whose per-row
   masks (prefix-LM block, padding) and positions come from the core's cache and
   `make_attn_mask`;
   Prefill is not chunked: image and prompt tokens form one bidirectional block, so no
   chunk of it has final keys and values before the whole prefix is seen (a chunked prefill
   would change the answer). The budget bounds the stall of the running rows instead.
3. retires a row at once when it ends: <eos>, a stop string, max_tokens, its client gone,
   its deadline passed. A job is answered when its last row ends.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..generate import drop_padding, greedy_ids
from ..kv_cache import KVCache
from ..pipeline import Pipeline
from ..textstream import TextStream
from .batcher import Choice, Job, Scheduler
from .image_cache import ImageCache, image_key
from .rows import Row, row_seed
from .slots import SlotPool


class Engine(Scheduler):
    def __init__(
        self,
        pipe: Pipeline,
        max_batch: int = 8,
        max_queue: int = 64,
        *,
        max_n: int = 8,
        image_cache_mb: float = 256,
        prefill_tokens: int = 2048,
        pool_len: int | None = None,
        metrics: Any = None,
        adapters: Any = None,
    ) -> None:
        super().__init__(pipe, max_batch, max_queue, metrics, adapters)
        self.prefill_tokens = prefill_tokens
        self.images = ImageCache(int(image_cache_mb * 2**20))
        cfg = pipe.model.cfg
        span = pool_len or 2 * (cfg.num_image_tokens + 64 + 64)  # grows for a longer request
        self.pool = SlotPool(pipe.model, max(max_batch, max_n), span)
        self.rows: list[Row] = []  # row i of the pool
        self._left: dict[Job, int] = {}  # rows still running, per job
        self._results: dict[Job, list[Choice | None]] = {}
        self._lengths: dict[Job, int] = {}  # prompt tokens, images included
        self._starting: list[Job] = []  # admitted, being prefilled

    def _running_jobs(self) -> list[Job]:
        return list({j: None for j in [*self._starting, *(r.job for r in list(self.rows))]})

    def _complete(self, job: Job) -> None:
        self._lengths.pop(job, None)
        super()._complete(job)

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            jobs = self._admit()
            if jobs is None:
                return
            if jobs:
                try:
                    self._start(jobs)
                except Exception as e:  # a failure answers its requests; the worker keeps on
                    for job in jobs:
                        job.error = e
                        self._drop(job)
            self._starting = []
            try:
                self._retire()
                if self.rows:
                    self._step()
                    self._retire()
            except Exception as e:
                for row in self.rows:
                    row.job.error, row.reason = e, "cancelled"
                self._retire()
            self._report()

    def _admit(self) -> list[Job] | None:
        """Jobs to start now (FIFO while rows, pool and budget allow); blocks while idle;
        None once stopping."""
        with self._cond:
            while not self._waiting and not self.rows and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            taken: list[Job] = []
            wanted: list[tuple[int, int, int]] = []  # (prompt tokens, max_tokens, rows) each
            budget, seats = self.prefill_tokens, self.max_batch - len(self.rows)
            while self._waiting:
                job = self._waiting[0]
                if job.expired:
                    self._waiting.popleft()
                    job.cancelled, job.choices = True, [Choice("", "cancelled", 0)]
                    self._complete(job)
                    continue
                t = self._prompt_length(job)
                k = 1 if job.greedy else job.n
                seated = k <= seats or (not self.rows and not taken)
                wanted.append((t, job.max_tokens, k))
                if not seated or (taken and t > budget) or not self.pool.fits(wanted):
                    break
                self._waiting.popleft()
                taken.append(job)
                budget, seats = budget - t, seats - k
            self._starting = taken
            self.busy = self.max_batch - seats  # rows running or about to
            return taken

    def _prompt_length(self, job: Job) -> int:
        if job not in self._lengths:
            ids = self.pipe.processor.prompt_ids(job.prompt, len(job.images))
            self._lengths[job] = len(ids)
        return self._lengths[job]

    # -- jobs join --------------------------------------------------------------------------
    def _start(self, jobs: list[Job]) -> None:
        """Prefill the jobs (one left-padded batch, its own step), copy each into its rows,
        pick each row's first token."""
        start = time.perf_counter()
        cache, logits, prompts = self._prefill(jobs)
        self._metric("prefill", time.perf_counter() - start, sum(map(len, prompts)))
        rows = [1 if j.greedy else j.n for j in jobs]
        self.pool.prepare(
            [(len(p), j.max_tokens, k) for p, j, k in zip(prompts, jobs, rows, strict=True)]
        )
        tok = self.pipe.tokenizer
        for i, (job, k) in enumerate(zip(jobs, rows, strict=True)):
            cfg = self.pipe.generation_config(
                max_new_tokens=job.max_tokens,
                do_sample=not job.greedy,
                temperature=job.temperature if not job.greedy else 1.0,
                top_p=job.top_p,
            )
            self._left[job], self._results[job] = k, [None] * k
            self.pool.place(cache, i, job.max_tokens, k)
            for c in range(k):
                gen = None
                if not job.greedy:
                    gen = torch.Generator(self.pipe.model.device).manual_seed(row_seed(job, c))
                row = Row(job, c, TextStream(tok, job.stop), cfg, gen, list(prompts[i]))
                self.rows.append(row)
                self._push(row, row.pick(logits[i : i + 1]))
            self.stats["rows"] += k
            self._metric("first_token", time.monotonic() - job.submitted)

    def _prefill(self, jobs: list[Job]) -> tuple[KVCache, torch.Tensor, list[list[int]]]:
        """The jobs' prompts, left-padded: (their cache, float32[B, V] last logits, each
        one's real ids). Image embeddings come from the image cache where it has them."""
        model = self.pipe.model
        inputs = self.pipe.processor(images=[j.images for j in jobs], text=[j.prompt for j in jobs])
        ids = inputs["input_ids"].to(model.device)  # (B, T)
        mask = inputs["attention_mask"].to(model.device)  # (B, T)
        is_image = ids == model.cfg.image_token_id
        x = model.embed_text(ids.masked_fill(is_image, 0))  # (B, T, D)
        if int(is_image.sum()):
            adapters = [j.adapter for j in jobs for _ in j.images]
            image = self._embed_images(inputs["pixel_values"], adapters)  # (I, L, D)
            x = x.masked_scatter(is_image[..., None], image.reshape(-1, image.shape[-1]))
        cache = model.new_cache(len(jobs), ids.shape[1])
        self._select([j.adapter for j in jobs])
        types = inputs["token_type_ids"].to(model.device)
        with torch.inference_mode():
            out = model(
                inputs_embeds=x,
                attention_mask=mask,
                token_type_ids=types,
                cache=cache,
                num_logits=1,
            )
        prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        return cache, out[:, -1].float(), prompts

    def _embed_images(self, pixels: torch.Tensor, adapters: list[str | None]) -> torch.Tensor:
        """float[I, 3, R, R] -> float[I, L, D], from the image cache where it holds them."""
        model = self.pipe.model
        keys = [image_key(p, a) for p, a in zip(pixels, adapters, strict=True)]
        found = [self.images.get(k) for k in keys]
        for hit in found:
            self._metric("image_cache", hit is not None)
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            self._select([adapters[i] for i in missing])
            with torch.inference_mode():
                fresh = model.embed_image(pixels[missing].to(model.device, model.dtype))
            for i, e in zip(missing, fresh, strict=True):
                found[i] = e
                self.images.put(keys[i], e)
        return torch.stack(found)

    # -- decoding ----------------------------------------------------------------------------
    def _step(self) -> None:
        """One token for every running row."""
        start = time.perf_counter()
        model, view = self.pipe.model, self.pool.running()
        tokens = torch.tensor([[r.last] for r in self.rows], device=model.device)  # (B, 1)
        one = torch.ones_like(tokens)  # a generated token is real and in the suffix
        self._select([r.job.adapter for r in self.rows])
        with torch.inference_mode():
            logits = model(tokens, attention_mask=one, token_type_ids=one, cache=view)
        self.pool.advance(view)
        logits = logits[:, -1].float()  # (B, V)
        greedy = [i for i, r in enumerate(self.rows) if r.plain]
        best = (
            greedy_ids(
                drop_padding(logits[greedy], self.pipe.num_real_ids, self.pipe.never_ids)
            ).tolist()
            if greedy
            else []
        )
        picks = dict(zip(greedy, best, strict=True))  # greedy rows at once: the same argmax
        for i, row in enumerate(self.rows):
            self._push(row, picks[i] if i in picks else row.pick(logits[i : i + 1]))
        self.stats["batches"] += 1
        seconds = time.perf_counter() - start
        self._metric("decode_step", seconds, len(self.rows))
        for _ in self.rows:
            self._metric("output_token", seconds)

    def _push(self, row: Row, token: int) -> None:
        piece = row.take(token, self.pipe.tokenizer.eos_id)
        if not piece:
            return
        job = row.job
        for i in range(job.n) if job.greedy else [row.index]:
            job._send("piece", i, piece)

    def _retire(self) -> None:
        """Free the rows that ended (or whose client left): the last row moves into the gap."""
        for i in reversed(range(len(self.rows))):
            row = self.rows[i]
            if not (row.gone() or row.reason):
                continue
            self.pool.release(i)
            self.rows[i] = self.rows[-1]
            self.rows.pop()
            job = row.job
            choice = Choice(row.stream.text, row.reason, len(row.stream.ids))
            self._results[job][row.index] = choice
            self._metric("finished", choice.tokens, choice.finish_reason)
            self._left[job] -= 1
            if not self._left[job]:
                self._drop(job)

    def _drop(self, job: Job) -> None:
        """The job is over (answered, cancelled or failed): forget it and answer it."""
        self._left.pop(job, None)
        choices = self._results.pop(job, None) or [Choice("", "cancelled", 0)]
        job.choices = [c or Choice("", "cancelled", 0) for c in choices]
        if job.greedy and job.n > 1:
            job.choices = job.choices * job.n
        self._complete(job)

    # -- what others see ---------------------------------------------------------------------
    def _report(self) -> None:
        self.busy = len(self.rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], self.busy)
        self.stats["image_hits"], self.stats["image_misses"] = self.images.hits, self.images.misses
        self._metric("queue_depth", len(self._waiting))
        self._metric("running_rows", self.busy, self.max_batch)

    def _metric(self, name: str, *args: Any) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name)(*args)
