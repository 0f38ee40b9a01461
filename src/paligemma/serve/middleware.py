"""What every request passes before a route: the body-size limit (413) and the API key (401)."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import error_response

PUBLIC_PATHS = {"/health", "/", "/favicon.ico"}  # open without the API key


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
        await error_response(413, msg, "invalid_request_error", "too_large")(scope, receive, send)


async def require_api_key(request: Request, call_next):
    """HTTP middleware: with `settings.api_key` set, every path but PUBLIC_PATHS needs
    `Authorization: Bearer KEY` (or `X-API-Key: KEY`), compared in constant time."""
    key = request.app.state.settings.api_key
    if key and request.url.path not in PUBLIC_PATHS:
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        given = given or request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            return error_response(
                401,
                "missing or wrong API key (Authorization: Bearer KEY)",
                "authentication_error",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
    return await call_next(request)
