"""Checks of a request against what this server serves: the model (or adapter) name, prompt
length and token limits (each failure an APIError that names the number and the limit)."""

from __future__ import annotations

from ..config import MAX_SEQ_LEN
from ..lora.multi import Adapters
from ..pipeline import Pipeline
from .errors import APIError
from .settings import Settings


def check_model(name: str | None, s: Settings, adapters: Adapters | None = None) -> str | None:
    """The LoRA adapter `name` picks (None: the base model, also for an empty name); 404
    unless it is the served model's name or one of its adapters'."""
    names = adapters.names if adapters is not None else []
    if name in (None, "", s.model_name):
        return None
    if name not in names:
        served = " ".join(repr(n) for n in [s.model_name, *names])
        raise APIError(
            404,
            f"model {name!r} is not served here; this server has {served}",
            code="model_not_found",
        )
    return name


def check_prompt(prompt: str, images: int, max_tokens: int, pipe: Pipeline, s: Settings) -> int:
    """The prompt's length in tokens (image tokens included), after checking the limits."""
    if len(prompt) > s.max_prompt_chars:
        raise APIError(
            400, f"prompt is {len(prompt)} characters; the limit is {s.max_prompt_chars}"
        )
    if max_tokens > s.max_tokens:
        raise APIError(
            400, f"max_tokens {max_tokens} is over this server's limit of {s.max_tokens}"
        )
    n = len(pipe.processor.prompt_ids(prompt, images))
    if n + max_tokens > MAX_SEQ_LEN:
        raise APIError(400, f"prompt is {n} tokens; with max_tokens that is over {MAX_SEQ_LEN}")
    return n
