"""Request bodies bounded while they are read: a pure ASGI middleware.

A body's declared size (Content-Length) is checked before one byte of it is read,
before routing and before any key is looked up: over the limit, the answer is 413 at
once. A body without one (chunked) is counted as it streams in, and the read that
passes the limit raises BodyTooLarge, so an endpoint never holds more than the limit.

The limit depends on what the request is:

- multipart/form-data to an operation that takes an upload (its OpenAPI request body
  is multipart, see app/api/uploads.py `multipart_body`): `max_upload_bytes` plus
  FRAMING_ALLOWANCE, for the multipart framing and the small fields beside the file.
  The upload endpoints also count the file itself against their own limit.
- anything else, JSON bodies included: `max_json_body_bytes` (1 MiB by default).
  Declaring multipart on a route that takes none does not buy the larger limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings
from app.errors import PayloadTooLarge

# Room for the multipart framing and the small form fields around an uploaded file.
FRAMING_ALLOWANCE = 1024 * 1024


class BodyTooLarge(StarletteHTTPException):
    """Raised by `receive` when a streamed body passes its limit; the HTTP error
    handler (app/main.py) answers `error` (FastAPI re-raises HTTPExceptions that happen
    while it reads a body, where it would turn any other error into a 400)."""

    def __init__(self, error: PayloadTooLarge) -> None:
        super().__init__(status_code=error.status_code, detail=error.message)
        self.error = error


def too_large_response(error: PayloadTooLarge) -> JSONResponse:
    # Connection: close, since the rest of the body is never read.
    headers = {"Connection": "close"}
    return JSONResponse(error.to_dict(), status_code=error.status_code, headers=headers)


def declared_length(headers: Headers) -> int | None:
    """The Content-Length header as a number, or None when absent or not a number."""
    raw = headers.get("content-length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


def json_body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than the limit of {limit} bytes (GRAFT_MAX_JSON_BODY_BYTES)."
    )


def upload_body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is larger than the limit of {limit} bytes (GRAFT_MAX_UPLOAD_BYTES).",
        code="upload_too_large",
        param="file",
    )


def upload_limit(settings: Settings) -> int:
    """The most bytes a multipart upload's body may hold, framing included."""
    return settings.max_upload_bytes + FRAMING_ALLOWANCE


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Operation:
    """One operation of the OpenAPI document: its method, path and body type."""

    method: str
    path: re.Pattern[str]
    multipart: bool


def openapi_operations(document: Mapping[str, Any]) -> list[Operation]:
    """The operations of an OpenAPI document, their path templates as regexes. (The
    document rather than the app's routes: it resolves every router's prefix.)"""
    operations = []
    for template, item in document.get("paths", {}).items():
        regex, _, _ = compile_path(template)
        for method, operation in item.items():
            if method.upper() in _HTTP_METHODS:
                content = operation.get("requestBody", {}).get("content", {})
                operations.append(
                    Operation(method.upper(), regex, "multipart/form-data" in content)
                )
    return operations


def route_path(scope: Scope) -> str:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


class BodyLimitMiddleware:
    """Answers 413 for a body over its limit. `operations` gives the app's OpenAPI
    operations, called on the first request (every router is included by then)."""

    def __init__(self, app: ASGIApp, operations: Callable[[], Sequence[Operation]]) -> None:
        self.app = app
        self.operations = operations
        self._uploads: list[Operation] | None = None

    def _is_upload(self, scope: Scope, headers: Headers) -> bool:
        if not headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return False
        if self._uploads is None:
            self._uploads = [op for op in self.operations() if op.multipart]
        path, method = route_path(scope), scope["method"]
        return any(op.method == method and op.path.match(path) for op in self._uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        headers = Headers(scope=scope)
        upload = self._is_upload(scope, headers)
        limit = upload_limit(settings) if upload else settings.max_json_body_bytes

        def error() -> PayloadTooLarge:
            if upload:
                return upload_body_too_large(settings.max_upload_bytes)
            return json_body_too_large(limit)

        declared = declared_length(headers)
        if declared is not None and declared > limit:
            await too_large_response(error())(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(error())
            return message

        await self.app(scope, limited_receive, send)
