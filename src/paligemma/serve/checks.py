"""Checks of a request against what this server serves: the model name, prompt length and
token limits (each failure an APIError that names the number and the limit)."""

from __future__ import annotations

from ..config import MAX_SEQ_LEN
from ..pipeline import Pipeline
from .errors import APIError
from .settings import Settings


def check_model(name: str | None, s: Settings) -> None:
    """404 unless `name` is empty or the served model's."""
    if name not in (None, "", s.model_name):
        raise APIError(
            404,
            f"model {name!r} is not served here; this server has {s.model_name!r}",
            code="model_not_found",
        )


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
