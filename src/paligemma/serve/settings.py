"""The server's settings: its model name, API key, batching, shutdown, and the limits checked at
the edge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    model_name: str = "paligemma"
    api_key: str | None = None
    max_batch: int = 16  # 2.6x the one-by-one throughput on 2 cores (8: ~2x)
    max_queue: int = 64  # waiting requests; more get 503 + Retry-After
    scheduler: str = "continuous"  # "continuous" (engine.py) | "static" (static_batcher.py)
    image_cache_mb: float = 256.0  # cached image embeddings (engine only)
    timeout_s: float = 120.0  # per request, queueing included (a request may ask for less)
    shutdown_timeout_s: float = 30.0  # SIGTERM: running rows get this long, then are cancelled
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 16_000_000  # per image; stricter than processor.MAX_PIXELS (check_pixels)
    max_images: int = 4  # per request
    max_video_frames: int = 16  # frames one video_url part may ask for (default: all 16)
    max_prompt_chars: int = 2_000
    max_tokens: int = 512  # the most a request may ask for
    max_n: int = 8
    allow_dir: str | None = None  # file: URLs are read from here only
    allow_remote: bool = False  # fetch http(s) image URLs (public addresses only: fetch.py)
    allow_image_hosts: tuple[str, ...] = ()  # host names / networks fetched even if internal
    remote_timeout_s: float = 10.0  # the most one remote image fetch may take, redirects included
