"""OpenAI-compatible routes: POST /v1/chat/completions (whole, or streamed as server-sent
events) and GET /v1/models. The last user message's text is the PaliGemma prompt and its
`image_url` parts are the images."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..textstream import stop_list
from .batcher import Job, Scheduler
from .checks import check_model, check_prompt
from .errors import APIError, cancelled
from .images import decode_image
from .jobs import deadline, failure, submit, timed_out, wait
from .schemas import ChatRequest, ContentPart, Message
from .settings import Settings
from .video import VideoPart, decode_video

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict:
    """The served model, then each LoRA adapter served on it (a request's `model` picks one)."""
    state = request.app.state
    names = [state.settings.model_name, *(state.adapters.names if state.adapters else [])]
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "paligemma"} for n in names]
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatRequest, request: Request):
    s: Settings = request.app.state.settings
    adapter = check_model(body.model, s, request.app.state.adapters)
    until = deadline(request, body.timeout)
    prompt, urls, video = _prompt_and_urls(body.messages, s)
    stop = stop_list(body.stop)
    if len(stop) > 4 or any(not x or len(x) > 64 for x in stop):
        raise APIError(400, "stop: up to 4 non-empty strings of at most 64 characters")
    if body.n > s.max_n:
        raise APIError(400, f"n {body.n} is over this server's limit of {s.max_n}")
    max_tokens = body.max_completion_tokens or body.max_tokens or 32
    frames = video.frames if video else 0
    prompt_tokens = check_prompt(prompt, len(urls) + frames, max_tokens, request.app.state.pipe, s)
    images = await asyncio.to_thread(lambda: [decode_image(u, s) for u in urls])
    images += await asyncio.to_thread(decode_video, video, s) if video else []
    temperature, top_p = body.temperature or 0.0, body.top_p or 1.0
    sampling = {"temperature": temperature, "top_p": top_p, "seed": body.seed, "n": body.n}
    sampling["ignore_eos"] = body.ignore_eos
    job = Job(images, prompt, max_tokens, stop, **sampling, adapter=adapter, deadline=until)
    job = submit(job, request, prompt_tokens)
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": adapter or s.model_name,
    }
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        events = _sse(job, head, body.n, prompt_tokens, usage, request.app.state.batcher, s)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    if not await wait(job, request):
        return cancelled()
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
            "logprobs": None,
        }
        for i, c in enumerate(job.choices)
    ]
    return {
        **head,
        "object": "chat.completion",
        "choices": choices,
        "usage": _usage(job, prompt_tokens),
    }


def _prompt_and_urls(
    messages: list[Message], s: Settings
) -> tuple[str, list[str], VideoPart | None]:
    """The last user message -> (its text parts joined: the prompt, its image URLs, its video
    part: frames that follow the images)."""
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise APIError(400, "messages need a user message (its text is the prompt)")
    content = users[-1].content or ""
    parts = [ContentPart(type="text", text=content)] if isinstance(content, str) else content
    texts, urls, videos = [], [], []
    for part in parts:
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "video_url":
            videos.append(VideoPart.of(part.video_url, s))
        elif part.image_url is None:
            raise APIError(400, "an image_url part needs image_url.url")
        else:
            urls.append(part.image_url.url)
    if not urls and not videos:
        raise APIError(400, "PaliGemma answers about images: add an image_url part")
    if len(urls) > s.max_images:
        raise APIError(400, f"{len(urls)} images; the limit is {s.max_images}")
    if len(videos) > 1:
        raise APIError(400, f"{len(videos)} video_url parts; the limit is 1")
    video = videos[0] if videos else None
    return " ".join(t.strip() for t in texts if t.strip()), urls, video


def _usage(job: Job, prompt_tokens: int) -> dict[str, int]:
    completion = sum(c.tokens for c in job.choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


async def _sse(
    job: Job, head: dict, n: int, prompt_tokens: int, usage: bool, batcher: Scheduler, s: Settings
) -> AsyncIterator[str]:
    """Server-sent events for a streamed chat completion, ending with "data: [DONE]"."""

    def event(choices: list[dict], **extra: Any) -> str:
        chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    def error(message: str, kind: str) -> str:
        return f"data: {json.dumps({'error': {'message': message, 'type': kind}})}\n\n"

    try:
        start = {"role": "assistant", "content": ""}
        yield event([{"index": i, "delta": start, "finish_reason": None} for i in range(n)])
        while True:
            try:
                kind, index, piece = await asyncio.wait_for(
                    job.events.get(), max(0.01, job.deadline - time.monotonic())
                )
            except TimeoutError:
                batcher.cancel(job)
                yield error(timed_out(job).message, "timeout")
                return
            if kind == "done":
                break
            yield event([{"index": index, "delta": {"content": piece}, "finish_reason": None}])
        if job.error is not None:
            e = failure(job)
            yield error(e.message, e.kind)
            return
        ends = enumerate(job.choices)
        yield event([{"index": i, "delta": {}, "finish_reason": c.finish_reason} for i, c in ends])
        if usage:
            yield event([], usage=_usage(job, prompt_tokens))
        yield "data: [DONE]\n\n"
    finally:
        if not job.done.done():  # the client went away mid-stream
            batcher.cancel(job)
