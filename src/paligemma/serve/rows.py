"""One running row of the engine: a request's choice being decoded (its text so far, its stop
strings, its own sampling generator) and why it ended.

Axes: V vocabulary.

Sampling is per row: every row has its own `torch.Generator`, seeded from its request (choice
i of a request with seed s uses s + i), so a request's tokens depend only on its own seed and
inputs, never on the rows beside it; choice 0 samples what `Pipeline.generate(seed=s)` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import generate as engine
from ..textstream import TextStream
from .batcher import Job


def row_seed(job: Job, index: int) -> int:
    """The seed of choice `index` of a sampled job (a random one when the job has none)."""
    if job.seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    return job.seed + index


@dataclass(eq=False)
class Row:
    job: Job
    index: int  # which choice of the job
    stream: TextStream
    cfg: engine.GenerationConfig
    generator: torch.Generator | None
    history: list[int]  # the prompt's ids, then every picked token
    reason: str | None = None  # "stop" | "length" | "cancelled" once it ended

    @property
    def plain(self) -> bool:
        """Greedy with no repetition penalty: the pick is the argmax over the real ids."""
        return not self.cfg.do_sample and self.cfg.repetition_penalty == 1.0

    @property
    def last(self) -> int:
        return self.history[-1]

    def pick(self, logits: torch.Tensor) -> int:
        """The next id from this row's float32[1, V] logits: greedy, or sampled with the row's
        generator (after the same logits processing as `generate`)."""
        ids = torch.tensor([self.history], device=logits.device)
        scores = engine.process_logits(logits, ids, self.cfg)
        if self.cfg.do_sample:
            return int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[0, 0])
        return int(engine.greedy_ids(scores)[0])

    def take(self, token: int, eos: int) -> str:
        """Record a picked id; return the text it settles (stop strings cut) and set `reason`
        once the row is done (<eos> unless the job ignores it, a stop string, max_tokens)."""
        self.history.append(token)
        if token == eos and not self.job.ignore_eos:
            self.reason = "stop"
            return self.stream.flush()
        piece = self.stream.push(token)
        if len(self.stream.ids) >= self.job.max_tokens:
            self.reason = "length"
        elif self.stream.stopped:
            self.reason = "stop"
        return piece + self.stream.flush() if self.reason else piece

    def gone(self) -> bool:
        """The client left or the deadline passed: the row ends now, "cancelled"."""
        if self.job.cancelled or self.job.expired:
            self.job.cancelled = True
            self.reason = "cancelled"
        return self.reason == "cancelled"
