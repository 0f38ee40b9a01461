"""Decode steps replayed from a CUDA graph: the first step runs and is recorded, every later
step is one replay.

Axes (the package's legend): B rows, S cache slots, V vocabulary.

A decode step of the 3B decoder launches several hundred small kernels; at batch 1 on a GPU,
launching them takes longer than running them (eager decoding there is bound by the host). A
CUDA graph records the kernels of one step and replays them with one launch. A replay repeats
fixed addresses and shapes, so the step here keeps no state in Python and never waits for the
device:

* every slot of the cache is attended (S = max_len), the slots not written yet masked out by
  the cache's `key_mask`, through the model's masks (`default_masks`: `make_attn_mask`, its
  start a tensor);
* the new token's slot is a tensor, advanced in the graph; its key and value are written with
  `index_copy_` (`KVCache.write` with a tensor start);
* positions are the cache's count of real tokens, advanced in the graph.

The model code is the eager step's own. Attending over all slots adds exact zeros to the
softmax's sums, in another order, so the logits are not bit-identical with the eager step's,
which attends over the filled slots only: they agree to float rounding (tested on the CPU,
where the same step runs without a graph). Greedy and sampled decoding use it on CUDA
(`generate.stream`); beam search (which reorders the cache) and rows-alone attention (the
server's, which splits a batch by row in Python) stay eager, and so does a model whose step
cannot be recorded (the first failure is warned about once per process, then eager steps).
`ENABLED = False` turns it off, as does the environment variable PALIGEMMA_CUDA_GRAPHS=0 (read
at import, for the CLI and the server).
"""

from __future__ import annotations

import os
import warnings

import torch

from .kv_cache import KVCache
from .model import PaliGemma

ENV_SWITCH = "PALIGEMMA_CUDA_GRAPHS"
ENABLED = os.environ.get(ENV_SWITCH, "1") != "0"  # on CUDA, decoding replays a recorded step
_warned = False


class StaticStep:
    """Decode steps over one cache whose shapes never change: call with the new tokens
    int64[B], get float32[B, V] next-token logits (a fresh tensor each call). `graph=True`
    (CUDA only) records the first call's kernels and replays them after it."""

    def __init__(self, model: PaliGemma, cache: KVCache, graph: bool = False) -> None:
        device = model.device
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(cache.batch, dtype=torch.long, device=device)  # (B,)
        self.slot = torch.tensor([cache.length], device=device)  # (1,) the next free slot
        self.no_prefix = torch.zeros(cache.batch, 1, dtype=torch.bool, device=device)  # (B, 1)
        self.graph = graph
        self._recorded: torch.cuda.CUDAGraph | None = None
        self._logits: torch.Tensor | None = None  # the recorded step's output buffer

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache.length >= self.cache.max_len:
            raise ValueError(f"cache of {self.cache.max_len} slots is full")
        self.tokens.copy_(tokens)
        if self._recorded is not None:
            self._recorded.replay()
            logits = self._logits.clone()
        elif self.graph:
            logits = self._run_then_record()
        else:
            with torch.inference_mode():
                logits = self._step()
        self.cache.length += 1
        return logits

    def _step(self) -> torch.Tensor:
        """One step from the static buffers: float32[B, V]. Advances the slot and positions."""
        cache, decoder = self.cache, self.model.decoder
        cache.key_mask.index_fill_(1, self.slot, True)  # generated tokens are real ...
        cache.num_real.add_(1)  # ... and in the suffix (key_prefix stays False)
        positions = cache.num_real[:, None]  # (B, 1)
        keys = (cache.key_mask, cache.key_prefix)
        masks = self.model.default_masks(*keys, self.no_prefix, self.slot)  # (B, 1, 1, S) each
        x = decoder.embed_tokens(self.tokens[:, None])  # (B, 1, D)
        h = decoder(x, positions, masks, cache, self.slot)
        self.slot.add_(1)
        return decoder.logits(h)[:, -1].float()

    def _run_then_record(self) -> torch.Tensor:
        """This step runs for real on a side stream (the warm-up CUDA graphs need), then the
        same step is recorded for the calls after it (recording runs nothing)."""
        global _warned
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            logits = self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = False  # one try: eager steps from here if recording fails
        try:
            recorded = torch.cuda.CUDAGraph()
            with torch.cuda.graph(recorded, stream=side), torch.inference_mode():
                self._logits = self._step()
        except Exception as e:  # a model whose step cannot be recorded: eager steps instead
            if not _warned:
                warnings.warn(f"CUDA graph decoding off for this model: {e}", stacklevel=3)
                _warned = True
            self._logits = None
            return logits
        self._recorded = recorded
        return logits


def wanted(model: PaliGemma, cache: KVCache, steps: int) -> bool:
    """Replay a recorded step for this decoding? CUDA, ENABLED, at least 3 steps (one runs
    before recording), and attention that splits no batch by row in Python."""
    if not (ENABLED and _on_cuda(cache) and steps >= 3):
        return False
    return not any(getattr(m, "rows_alone", False) for m in model.decoder.modules())


def _on_cuda(cache: KVCache) -> bool:
    return cache.k.device.type == "cuda"
