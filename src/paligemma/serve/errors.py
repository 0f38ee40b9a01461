"""Errors as OpenAI-style JSON ({"error": {"message", "type", "code"}}): `APIError`, the one
response builder, and the app's exception handlers (every failure is a JSON error, never HTML)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """Raised anywhere in a request: answered as `status` with the JSON error body."""

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


def error_response(
    status: int, message: str, kind: str, code: str | None, headers=None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def cancelled() -> JSONResponse:
    """The answer to a request whose client left before it was done (nobody reads it)."""
    return error_response(499, "client closed the request", "cancelled", None)


async def api_error(request: Request, e: APIError) -> JSONResponse:
    return error_response(e.status, e.message, e.kind, e.code, e.headers)


async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
    """400 naming where the JSON is malformed, that the body is not sent as JSON, or the first
    few fields that failed validation."""
    message = _unreadable_body(request, e)
    if message:
        return error_response(400, message, "invalid_request_error", "invalid_json")
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return error_response(
        400, "invalid request: " + "; ".join(parts), "invalid_request_error", None
    )


def _unreadable_body(request: Request, e: RequestValidationError) -> str | None:
    """The message for a body that is not JSON at all (its line and column), or one sent without
    a JSON content type (FastAPI then validates the raw bytes); None for anything else."""
    errors = e.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid" and isinstance(e.body, (str, bytes)):
        doc = e.body if isinstance(e.body, str) else e.body.decode("utf-8", "replace")
        pos = first["loc"][-1] if isinstance(first["loc"][-1], int) else 0
        where = json.JSONDecodeError(first.get("ctx", {}).get("error", "invalid"), doc, pos)
        return f"invalid JSON at line {where.lineno}, column {where.colno}: {where.msg}"
    if tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), bytes):
        kind = request.headers.get("content-type", "").split(";")[0].strip()  # not JSON's
        got = f"it was sent as {kind!r}" if kind else "it was sent without one"
        return f"send the body as JSON with the header Content-Type: application/json ({got})"
    return None


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    return error_response(e.status_code, str(e.detail), "invalid_request_error", None)


async def crash(request: Request, e: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(e).__name__}", "server_error", None)


def add_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)
