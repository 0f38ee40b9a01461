"""Routes that are not the API: the web page (GET /) and the status (GET /health)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    s, batcher = request.app.state.settings, request.app.state.batcher
    return {
        "status": "ok",
        "model": s.model_name,
        "queued": batcher.queued,
        "busy": batcher.busy,
        "max_batch": s.max_batch,
        "batches": batcher.stats,
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(
        resources.files("paligemma.serve").joinpath("static/index.html").read_text()
    )
