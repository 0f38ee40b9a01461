"""Routes that are not the API: the web page (GET /), its icon (GET /favicon.ico), the status
(GET /health), and the API docs (GET /docs, /redoc) with Swagger UI's and ReDoc's files served
from here (the fastapi-offline package ships them), so the docs work without the internet."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

router = APIRouter()
DOCS_ASSETS = "/docs-assets"  # Swagger UI / ReDoc scripts and styles


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
    return HTMLResponse(_static("index.html").read_text())


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(_static("favicon.png").read_bytes(), media_type="image/png")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    js, css = f"{DOCS_ASSETS}/swagger-ui-bundle.js", f"{DOCS_ASSETS}/swagger-ui.css"
    files = {"swagger_js_url": js, "swagger_css_url": css, "swagger_favicon_url": "/favicon.ico"}
    return _docs(request, get_swagger_ui_html, "Swagger UI", **files)


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    files = {
        "redoc_js_url": f"{DOCS_ASSETS}/redoc.standalone.js",
        "redoc_favicon_url": "/favicon.ico",
    }
    return _docs(request, get_redoc_html, "ReDoc", with_google_fonts=False, **files)


def _docs(request: Request, page, name: str, **options) -> HTMLResponse:
    """FastAPI's docs `page` for this app's schema, with `options` naming files on this server."""
    title = f"{request.app.title} - {name}"
    return page(openapi_url=request.app.openapi_url, title=title, **options)


def mount_docs_assets(app: FastAPI) -> None:
    """Serve the docs pages' scripts and styles under DOCS_ASSETS (the app must be made with
    docs_url=None and redoc_url=None, so FastAPI's CDN-loading pages are not added)."""
    folder = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(folder)), name="docs-assets")


def _static(name: str):
    return resources.files("paligemma.serve").joinpath("static", name)
