"""The engine's KV cache: a fixed pool of rows x slots that request after request reuses.

Axes (the package's legend): R pool rows, S slots, K kv heads, H head dim; the leading axis of
k and v is the decoder's layer (depth).

All rows share one timeline: slot j is the same decoding step for every row, and a decode step
writes every running row's token at slot `length`. A request joins by copying its prefill (run
in a cache of its own, left-padded beside the requests admitted with it) right-aligned to
`length`, so it sits as if left-padded: the
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

    def fits(self, requests: list[tuple[int, int, int]]) -> bool:
        """Can these requests join together now? Each is (T prompt tokens, N new tokens at
        most, rows): its rows need T + N slots of timeline, right-aligned at `length`."""
        if self.active + sum(k for _, _, k in requests) > self.rows:
            return False
        if not self.active:
            return True  # `prepare` grows an empty pool that is too short
        g = self.cache.length
        right = max(0, max(t for t, _, _ in requests) - g)  # the timeline moves right
        g += right
        lo = min([s + right for s in self.start[: self.active]] + [g - t for t, _, _ in requests])
        hi = max([e + right for e in self.end[: self.active]] + [g + n for _, n, _ in requests])
        return hi - lo <= self.max_len

    def prepare(self, requests: list[tuple[int, int, int]]) -> None:
        """Make room to `place` these requests (checked with `fits`): an empty pool starts its
        timeline at the longest prompt (reallocated first if too short, the only time it is);
        a running one moves right if a prompt is longer than the timeline so far."""
        t = max(t for t, _, _ in requests)
        if not self.active:
            span = max(t + n for t, n, _ in requests)
            if 2 * span > self.max_len:
                self.cache = self.model.new_cache(self.rows, max(2 * span, 2 * self.max_len))
            self.cache.length = t
        elif self.cache.length < t:
            self._shift(self.cache.length - t)

    def place(self, src: KVCache, row: int, new_tokens: int, copies: int = 1) -> list[int]:
        """Copy row `row` of a prefilled, left-padded cache into `copies` free rows, its real
        tokens ending at the timeline's `length`; returns their row numbers. `prepare` first."""
        t, w = int(src.num_real[row]), src.length
        c, g = self.cache, self.cache.length
        placed = []
        for _ in range(copies):
            r = self.active
            c.key_mask[r], c.key_prefix[r] = False, False
            c.k[:, r, :, g - t : g] = src.k[:, row, :, w - t : w]
            c.v[:, r, :, g - t : g] = src.v[:, row, :, w - t : w]
            c.key_mask[r, g - t : g] = src.key_mask[row, w - t : w]
            c.key_prefix[r, g - t : g] = src.key_prefix[row, w - t : w]
            c.num_real[r] = src.num_real[row]
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
