"""The vision tower's output, cached by image content: a second question about an image skips
SigLIP. Axes: L image tokens, D text width.

Keys are a hash of the preprocessed pixels (and the LoRA adapter, which may change the vision
tower), values the projected image embeddings float[L, D]; least recently used entries go
first once the entries pass `budget_bytes`.

Only the embeddings are reused, never keys and values. The trap: the image tokens and the
prompt form one bidirectional prefix block (the prefix-LM mask), so every image token attends
to the prompt text and the image span's KV depends on the prompt. The image's KV could be
reused only for an identical full prefix (the same images and the same prompt); across prompts
only the embeddings, which come before the decoder, are the same.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


def image_key(pixels: torch.Tensor, adapter: str | None = None) -> str:
    """A content hash of one image's pixel values float[3, R, R] (and the adapter's name)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str((adapter, tuple(pixels.shape), str(pixels.dtype))).encode())
    h.update(pixels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ImageCache:
    """LRU map: image_key -> float[L, D] image embeddings, at most `budget_bytes` in all."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: str, embeds: torch.Tensor) -> None:
        size = embeds.numel() * embeds.element_size()
        if size > self.budget:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = embeds
            self.bytes += size
            while self.bytes > self.budget:
                _, old = self._entries.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
