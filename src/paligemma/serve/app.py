"""HTTP server: OpenAI-compatible chat completions, structured detect / segment, a web page.

    paligemma serve [--model SRC] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Endpoints: POST /v1/chat/completions (OpenAI shape; the last user message's text is the
PaliGemma prompt and its `image_url` parts the images; `stream: true` for server-sent events),
GET /v1/models, POST /v1/detect and /v1/segment (boxes, labels and masks as JSON), GET /health,
GET / (the web page), GET /openapi.json and /docs. Every request goes through one `Batcher`.

Input is checked at the edge, and every bad input is a 4xx with an OpenAI-style JSON error
({"error": {"message", "type", "code"}}): body size, image bytes and pixel count, prompt
length, token limits, types, base64, URL schemes (remote URLs are off unless enabled), and
paths of file URLs (only inside --allow-dir). With an API key, every endpoint but /health and
the static page requires `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import MAX_SEQ_LEN
from ..pipeline import Pipeline, task_prompt
from ..processor import load_image
from ..tasks.objects import mask_to_rle
from .batcher import Batcher, Job, QueueFull

PUBLIC_PATHS = {"/health", "/", "/favicon.ico"}


@dataclass(frozen=True)
class Settings:
    model_name: str = "paligemma"
    api_key: str | None = None
    max_batch: int = 16  # 2.6x the one-by-one throughput on 2 cores (8: ~2x)
    max_queue: int = 64  # waiting requests; more get 503 + Retry-After
    timeout_s: float = 120.0  # per request, queueing included
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 16_000_000
    max_images: int = 4  # per request
    max_prompt_chars: int = 2_000
    max_tokens: int = 512  # the most a request may ask for
    max_n: int = 8
    allow_dir: str | None = None  # file: URLs are read from here only
    allow_remote: bool = False  # fetch http(s) image URLs


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers or {}


def _error(status: int, message: str, kind: str, code: str | None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------
# Request schemas (they are the OpenAPI schema)

Float = Annotated[float, Field(allow_inf_nan=False)]


class ImageURL(BaseModel):
    url: str = Field(description="data:image/...;base64,..., or file:// inside --allow-dir")


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, description="default 32")
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Float | None = Field(None, ge=0, le=2, description="default 0: greedy")
    top_p: Float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    image: str = Field(description="a data: URL, plain base64, or a file:// URL in --allow-dir")
    labels: str | list[str] = Field(description='"cat ; dog" or ["cat", "dog"]')
    max_tokens: int | None = Field(None, ge=1, description="default: 256 or the server's cap")
    mask_format: Literal["rle", "png", "both", "none"] = Field(
        "rle", description="segment: masks as COCO RLE, PNG data URL, both, or none"
    )


# ---------------------------------------------------------------------------------------------
# Images


def _read_url(url: str, s: Settings) -> bytes:
    if not isinstance(url, str) or not url:
        raise APIError(400, "an image URL must be a non-empty string")
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise APIError(400, "data URLs must be base64: data:image/png;base64,...")
        return _b64(data)
    scheme = urlparse(url).scheme.lower() if ":" in url[:12] else ""
    if scheme == "file":
        if s.allow_dir is None:
            raise APIError(400, "file: URLs are disabled; start the server with --allow-dir DIR")
        root = Path(s.allow_dir).resolve()
        parts = urlparse(url)
        name = unquote(parts.netloc + parts.path)
        try:  # containment first, so nothing is revealed about files outside
            real = Path(name).resolve()
            if not (Path(name).is_absolute() and real.is_relative_to(root)):
                real = (root / name.lstrip("/")).resolve()  # paths are relative to the directory
        except (OSError, RuntimeError, ValueError):
            raise APIError(400, f"bad file URL: {url}") from None
        if not real.is_relative_to(root):
            raise APIError(403, "file: URL points outside the allowed directory", code="forbidden")
        if not real.is_file():
            raise APIError(404, f"no such file: {url}", code="not_found")
        if real.stat().st_size > s.max_body_bytes:
            raise APIError(413, "image file is larger than the body-size limit", code="too_large")
        return real.read_bytes()
    if scheme in ("http", "https"):
        if not s.allow_remote:
            raise APIError(400, "remote image URLs are disabled (start with --allow-remote-images)")
        return _fetch(url, s)
    if scheme:
        raise APIError(400, f"unsupported image URL scheme {scheme!r}: use a data: URL")
    return _b64(url)  # plain base64


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "image data is not valid base64") from None


def _fetch(url: str, s: Settings) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            data = r.read(s.max_body_bytes + 1)
    except (OSError, ValueError) as e:
        raise APIError(400, f"could not fetch {url}: {e}") from None
    if len(data) > s.max_body_bytes:
        raise APIError(413, "remote image is larger than the body-size limit", code="too_large")
    return data


def decode_image(url: str, s: Settings) -> Image.Image:
    """Image bytes from a URL -> RGB image, after checking they are an image of allowed size."""
    raw = _read_url(url, s)
    try:
        probe = Image.open(io.BytesIO(raw))
        w, h = probe.size
    except Image.DecompressionBombError:
        raise APIError(413, "image has too many pixels", code="too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise APIError(400, "image bytes are not a readable image (PNG, JPEG, WebP, ...)") from None
    if w * h > s.max_pixels:
        raise APIError(
            413, f"image is {w}x{h} = {w * h} pixels; the limit is {s.max_pixels}", code="too_large"
        )
    try:
        return load_image(probe)
    except Exception:  # truncated / corrupt data surfaces only when decoding
        raise APIError(400, "image data is truncated or corrupt") from None


# ---------------------------------------------------------------------------------------------
# The app


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app sees it."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        msg = f"request body is larger than {self.limit} bytes"
        await _error(413, msg, "invalid_request_error", "too_large")(scope, receive, send)


def create_app(pipe: Pipeline, settings: Settings | None = None) -> FastAPI:
    s = settings or Settings()
    batcher = Batcher(pipe, s.max_batch, s.max_queue)
    app = FastAPI(
        title="paligemma",
        version="1",
        description="PaliGemma served exactly: OpenAI-compatible chat completions, structured "
        "detection and segmentation, request batching.",
        on_startup=[batcher.start],
        on_shutdown=[batcher.stop],
    )
    app.state.batcher, app.state.settings = batcher, s

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _error(e.status, e.message, e.kind, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
        return _error(400, "invalid request: " + "; ".join(parts), "invalid_request_error", None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), "invalid_request_error", None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        return _error(500, f"internal error: {type(e).__name__}", "server_error", None)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if s.api_key and request.url.path not in PUBLIC_PATHS:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            given = given or request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), s.api_key.encode()):
                return _error(
                    401,
                    "missing or wrong API key (Authorization: Bearer KEY)",
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
        return await call_next(request)

    app.add_middleware(BodyLimit, limit=s.max_body_bytes)

    def check_model(name: str | None) -> None:
        if name not in (None, "", s.model_name):
            raise APIError(
                404,
                f"model {name!r} is not served here; this server has {s.model_name!r}",
                code="model_not_found",
            )

    def check_prompt(prompt: str, images: int, max_tokens: int) -> int:
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

    def submit(job: Job) -> Job:
        try:
            return batcher.submit(job, asyncio.get_running_loop())
        except QueueFull:
            raise APIError(
                503,
                "the server is busy; retry shortly",
                "server_busy",
                "queue_full",
                {"Retry-After": "1"},
            ) from None

    async def wait(job: Job, request: Request) -> bool:
        """Until the job is done (True), or the client left (False); 504 after the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.timeout_s
        while not job.done.done():
            if loop.time() > deadline:
                batcher.cancel(job)
                raise APIError(504, f"no answer within {s.timeout_s:g} s", "timeout", "timeout")
            await asyncio.wait([job.done], timeout=max(0.0, min(0.2, deadline - loop.time())))
            if not job.done.done() and await request.is_disconnected():
                batcher.cancel(job)
                return False
        if job.error is not None:
            raise APIError(500, f"generation failed: {job.error}", "server_error")
        return True

    # -- routes ------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": s.model_name,
            "queued": batcher.queued,
            "busy": batcher.busy,
            "max_batch": s.max_batch,
            "batches": batcher.stats,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        entry = {"id": s.model_name, "object": "model", "created": 0, "owned_by": "paligemma"}
        return {"object": "list", "data": [entry]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(
            resources.files("paligemma.serve").joinpath("static/index.html").read_text()
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request):
        check_model(body.model)
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise APIError(400, "messages need a user message (its text is the prompt)")
        content = users[-1].content or ""
        parts = [ContentPart(type="text", text=content)] if isinstance(content, str) else content
        texts, urls = [], []
        for part in parts:
            if part.type == "text":
                texts.append(part.text or "")
            elif part.image_url is None:
                raise APIError(400, "an image_url part needs image_url.url")
            else:
                urls.append(part.image_url.url)
        if not urls:
            raise APIError(400, "PaliGemma answers about images: add an image_url part")
        if len(urls) > s.max_images:
            raise APIError(400, f"{len(urls)} images; the limit is {s.max_images}")
        prompt = " ".join(t.strip() for t in texts if t.strip())
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not x or len(x) > 64 for x in stop):
            raise APIError(400, "stop: up to 4 non-empty strings of at most 64 characters")
        if body.n > s.max_n:
            raise APIError(400, f"n {body.n} is over this server's limit of {s.max_n}")
        max_tokens = body.max_completion_tokens or body.max_tokens or 32
        prompt_tokens = check_prompt(prompt, len(urls), max_tokens)
        images = await asyncio.to_thread(lambda: [decode_image(u, s) for u in urls])
        job = submit(
            Job(
                images,
                prompt,
                max_tokens,
                stop,
                body.temperature or 0.0,
                body.top_p or 1.0,
                body.seed,
                body.n,
            )
        )
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": s.model_name,
        }
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                _sse(job, head, body.n, prompt_tokens, usage, batcher, s.timeout_s),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        if not await wait(job, request):
            return _error(499, "client closed the request", "cancelled", None)
        completion = sum(c.tokens for c in job.choices)
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": None,
                }
                for i, c in enumerate(job.choices)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
        }

    async def task(kind: str, body: TaskRequest, request: Request) -> dict:
        check_model(body.model)
        try:
            labels = body.labels.split(";") if isinstance(body.labels, str) else body.labels
            prompt = task_prompt(kind, labels)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        max_tokens = body.max_tokens or min(256, s.max_tokens)
        check_prompt(prompt, 1, max_tokens)
        image = await asyncio.to_thread(decode_image, body.image, s)
        w, h = image.size
        after = lambda text: pipe.read_objects(kind, text, w, h)  # noqa: E731
        job = submit(Job([image], prompt, max_tokens, after=after))
        if not await wait(job, request):
            return _error(499, "client closed the request", "cancelled", None)
        objects = job.extra
        return {
            "model": s.model_name,
            "prompt": prompt,
            "text": objects.text,
            "width": w,
            "height": h,
            "objects": [_object(o, kind, body.mask_format) for o in objects if o.valid],
            "invalid": [{"problem": o.problem} for o in objects if not o.valid],
        }

    @app.post("/v1/detect")
    async def detect(body: TaskRequest, request: Request) -> dict:
        """Boxes (x_min, y_min, x_max, y_max in pixels) and labels for `labels`."""
        return await task("detect", body, request)

    @app.post("/v1/segment")
    async def segment(body: TaskRequest, request: Request) -> dict:
        """As /v1/detect, plus each object's mask (COCO RLE and/or a PNG data URL)."""
        if pipe.mask_vae is None:
            raise APIError(400, "this model has no mask VQ-VAE: segmentation is unavailable")
        return await task("segment", body, request)

    return app


def _object(o, kind: str, mask_format: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": o.label,
        "box": list(o.box),
        "box_normalized": [round(v, 6) for v in o.box_normalized],
        "score": None,
    }
    if kind == "segment":
        mask: dict[str, Any] | None = None
        if o.mask is not None and mask_format != "none":
            mask = {}
            if mask_format in ("rle", "both"):
                mask["rle"] = mask_to_rle(o.mask)
            if mask_format in ("png", "both"):
                buf = io.BytesIO()
                Image.fromarray(o.mask.astype("uint8") * 255).save(buf, format="PNG")
                mask["png"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        out["mask"] = mask
    return out


async def _sse(
    job: Job,
    head: dict,
    n: int,
    prompt_tokens: int,
    usage: bool,
    batcher: Batcher,
    timeout_s: float,
) -> AsyncIterator[str]:
    """Server-sent events for a streamed chat completion, ending with "data: [DONE]"."""

    def event(choices: list[dict], **extra: Any) -> str:
        chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        yield event(
            [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                for i in range(n)
            ]
        )
        while True:
            try:
                kind, index, piece = await asyncio.wait_for(
                    job.events.get(), max(0.01, deadline - loop.time())
                )
            except TimeoutError:
                batcher.cancel(job)
                error = {"message": f"no answer within {timeout_s:g} s", "type": "timeout"}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            if kind == "done":
                break
            yield event([{"index": index, "delta": {"content": piece}, "finish_reason": None}])
        if job.error is not None:
            error = {"message": f"generation failed: {job.error}", "type": "server_error"}
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        yield event(
            [
                {"index": i, "delta": {}, "finish_reason": c.finish_reason}
                for i, c in enumerate(job.choices)
            ]
        )
        if usage:
            completion = sum(c.tokens for c in job.choices)
            totals = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }
            yield event([], usage=totals)
        yield "data: [DONE]\n\n"
    finally:
        if not job.done.done():  # the client went away mid-stream
            batcher.cancel(job)


@contextlib.contextmanager
def running(pipe: Pipeline, settings: Settings | None = None, port: int = 0) -> Iterator[str]:
    """Serve `pipe` from a background thread on 127.0.0.1 (a free port unless given) for the
    duration of a `with` block, which gets the base URL (for notebooks, tests, benchmarks)."""
    import socket
    import threading

    import uvicorn

    if port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    app = create_app(pipe, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def serve(
    source: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: Settings | None = None,
    dtype: Any = None,
    quantize: str | None = None,
) -> None:
    """Load the model (the embedded one without `source`) and serve it until interrupted."""
    import uvicorn

    from ..pipeline import load

    pipe = load(source, dtype=dtype, quantize=quantize)
    name = Path(str(source)).name if source else "paligemma-embedded"
    settings = settings or Settings()
    if settings.model_name == Settings.model_name:
        from dataclasses import replace

        settings = replace(settings, model_name=name)
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can use it")
    uvicorn.run(create_app(pipe, settings), host=host, port=port, log_level="info")
