"""The engine's KV cache: a fixed pool of rows x slots that request after request reuses.

Axes (the package's legend): R pool rows, S slots, K kv heads, H head dim; the leading axis of
k and v is the decoder's layer (depth).

All rows share one timeline: slot j is the same decoding step for every row, and a decode step
writes every running row's token at slot `length`. A request joins by copying its prefill (run
alone, in a cache of its own) right-aligned to `length`, so it sits as if left-padded: the
core's cache records per row which slots are real and which are prefix, and `make_attn_mask`
builds every row's prefix-LM block, causal suffix and sliding window from that alone; positions
count each row's real tokens. A row therefore gets the keys, values, positions and mask it gets
alone. Running rows are always rows 0 .. active-1 (a finished row is replaced by the last one),
so a decode step runs `KVCache.narrow(active)` rows and nothing else. When the timeline reaches
the end of the pool, every row moves left by the padding all rows share (`_shift`).

A row of T prompt tokens that may generate N more needs T + N slots of timeline; the pool has
at least twice the longest such span, so a request can always join beside any running one.
"""

from __future__ import annotations

from ..kv_cache import KVCache
from ..model import PaliGemma


class SlotPool:
    def __init__(self, model: PaliGemma, rows: int, max_len: int) -> None:
        self.model, self.cache = model, model.new_cache(rows, max_len)
        self.start = [0] * rows  # the first slot of each row's tokens
        self.end = [0] * rows  # the slot each row may reach: start + T + N
        self.active = 0  # rows 0 .. active-1 hold running requests
        self.shifts = 0  # times the timeline moved

    @property
    def rows(self) -> int:
        return self.cache.batch

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    def fits(self, tokens: int, new_tokens: int, copies: int = 1) -> bool:
        """Can `copies` rows of `tokens` prompt tokens that may generate `new_tokens` join now?"""
        if self.active + copies > self.rows:
            return False
        span = tokens + new_tokens
        if not self.active:
            return True  # `place` grows an empty pool that is too short
        g = self.cache.length
        right = max(0, tokens - g)  # the timeline moves right to make room for the prompt
        lo = min(min(self.start[: self.active]) + right, g + right - tokens)
        hi = max(max(self.end[: self.active]) + right, g + right - tokens + span)
        return hi - lo <= self.max_len

    def place(self, src: KVCache, new_tokens: int, copies: int = 1) -> list[int]:
        """Copy a prefilled one-row cache (length T) into `copies` free rows ending at the
        timeline's `length`; returns their row numbers. Check `fits` first."""
        t = src.length
        if not self.active:
            if 2 * (t + new_tokens) > self.max_len:  # only an empty pool is reallocated
                size = max(2 * (t + new_tokens), 2 * self.max_len)
                self.cache = self.model.new_cache(self.rows, size)
            self.cache.length = t
        elif self.cache.length < t:
            self._shift(self.cache.length - t)
        c, g = self.cache, self.cache.length
        placed = []
        for _ in range(copies):
            r = self.active
            c.key_mask[r], c.key_prefix[r] = False, False
            c.k[:, r, :, g - t : g] = src.k[:, 0]
            c.v[:, r, :, g - t : g] = src.v[:, 0]
            c.key_mask[r, g - t : g] = src.key_mask[0]
            c.key_prefix[r, g - t : g] = src.key_prefix[0]
            c.num_real[r] = src.num_real[0]
            self.start[r], self.end[r] = g - t, g + new_tokens
            self.active += 1
            placed.append(r)
        return placed

    def release(self, row: int) -> None:
        """Free `row`; the last running row moves into it (the caller mirrors the move)."""
        last = self.active - 1
        if row != last:
            c, g = self.cache, self.cache.length
            c.k[:, row, :, :g] = c.k[:, last, :, :g]
            c.v[:, row, :, :g] = c.v[:, last, :, :g]
            for m in (c.key_mask, c.key_prefix):
                m[row] = m[last]
            c.num_real[row] = c.num_real[last]
            self.start[row], self.end[row] = self.start[last], self.end[last]
        self.active = last

    def running(self) -> KVCache:
        """The running rows as one cache with a free slot at `length` (moved left if needed):
        pass it to the model, then `advance` with it."""
        if self.cache.length >= self.max_len:
            self._shift(min(self.start[: self.active]))
        return self.cache.narrow(self.active)

    def advance(self, view: KVCache) -> None:
        self.cache.length = view.length

    def _shift(self, by: int) -> None:
        """Move the running rows `by` slots left (> 0) or right (< 0) along the timeline."""
        c, a, g = self.cache, self.active, self.cache.length
        lo, hi = max(by, 0), g - min(by, 0)  # source slots [lo, g) go to [lo - by, g - by)
        for x in (c.k, c.v):
            x[:, :a, :, lo - by : g - by] = x[:, :a, :, lo:g].clone()
        for m in (c.key_mask, c.key_prefix):
            m[:a, lo - by : g - by] = m[:a, lo:g].clone()
            m[:a, : max(0, -by)] = False
            m[:a, g - by : hi] = False
        for r in range(a):
            self.start[r] -= by
            self.end[r] -= by
        c.length = g - by
        self.shifts += 1
