"""The FastAPI app: `create_app(pipe, settings)` puts the pipeline, its batcher and the settings
on `app.state`, adds the middleware and error handlers, and includes the routers.

Endpoints: POST /v1/chat/completions (OpenAI shape; `stream: true` for server-sent events),
GET /v1/models (the model and its LoRA adapters), POST /v1/detect and /v1/segment (boxes,
labels and masks as JSON), GET /health, GET /metrics (Prometheus), GET / (the web page,
/favicon.ico), GET /openapi.json, /docs and /redoc (their files served locally). Every request
goes through one scheduler (`Settings.scheduler`) and gets one JSON line on the
`paligemma.access` logger.

Input is checked at the edge, and every bad input is a 4xx with an OpenAI-style JSON error
({"error": {"message", "type", "code"}}): body size, image bytes and pixel count, prompt
length, token limits, types, base64, URL schemes (remote URLs are off unless enabled), and
paths of file URLs (only inside --allow-dir). With an API key, every endpoint but /health and
the static page requires `Authorization: Bearer KEY`.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware

from ..lora.multi import Adapters
from ..pipeline import Pipeline
from . import chat, detect, pages
from . import metrics as metrics_routes
from .access import AccessLog
from .batcher import Scheduler
from .engine import Engine
from .errors import add_handlers
from .metrics import ServerMetrics
from .middleware import BodyLimit, require_api_key
from .settings import Settings


def create_app(
    pipe: Pipeline, settings: Settings | None = None, adapters: Adapters | None = None
) -> FastAPI:
    """The app serving `pipe` (and, by name, the LoRA `adapters` installed on its model)."""
    s = settings or Settings()
    metrics = ServerMetrics()
    batcher = make_scheduler(pipe, s, metrics=metrics, adapters=adapters)
    app = FastAPI(
        title="paligemma",
        version="1",
        description="PaliGemma served exactly: OpenAI-compatible chat completions, structured "
        "detection and segmentation, request batching.",
        on_startup=[batcher.start],
        on_shutdown=[batcher.stop],
        docs_url=None,  # pages.py serves /docs and /redoc with local files, not a CDN's
        redoc_url=None,
    )
    app.state.pipe, app.state.batcher, app.state.settings = pipe, batcher, s
    app.state.metrics, app.state.adapters = metrics, adapters
    add_handlers(app)
    app.add_middleware(BaseHTTPMiddleware, dispatch=require_api_key)
    app.add_middleware(BodyLimit, limit=s.max_body_bytes)  # before the key check
    app.add_middleware(AccessLog)  # outermost: every request gets its line
    for module in (pages, chat, detect, metrics_routes):
        app.include_router(module.router)
    pages.mount_docs_assets(app)
    return app


def make_scheduler(pipe: Pipeline, s: Settings, metrics=None, adapters=None) -> Scheduler:
    """The engine (continuous batching), or with `scheduler="static"` the static batcher."""
    if s.scheduler == "static":
        from .static_batcher import Batcher

        return Batcher(pipe, s.max_batch, s.max_queue, metrics, adapters)
    if s.scheduler != "continuous":
        raise ValueError(f"scheduler must be 'continuous' or 'static', got {s.scheduler!r}")
    options = {"max_n": s.max_n, "image_cache_mb": s.image_cache_mb}
    return Engine(pipe, s.max_batch, s.max_queue, **options, metrics=metrics, adapters=adapters)
