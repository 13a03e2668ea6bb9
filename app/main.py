"""The FastAPI application: routers, the one error shape, and the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import account, datasets, evaluations, health, jobs, models, searches, teams
from app.body_limits import (
    BodyLimitMiddleware,
    BodyTooLarge,
    openapi_operations,
    route_path,
    too_large_response,
)
from app.config import get_settings
from app.db.async_reads import close_readers, open_reader
from app.errors import AppError, RateLimited
from app.schemas.common import FIELD_SENTENCE_ERRORS
from app.ui import routes as ui

log = logging.getLogger(__name__)

OPENAPI_TAGS = ("health", "teams", "team", "datasets", "jobs", "models", "evaluations", "searches")

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _error(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


# Pydantic's words for "not an object" (which name a Python class) and "not a list",
# in the words of a JSON client.
_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})
_PLAIN_MESSAGES = {
    **dict.fromkeys(_OBJECT_ERRORS, "Input should be a JSON object"),
    "list_type": "Input should be a JSON array",
}


def _plain(err: dict[str, Any]) -> str:
    """Pydantic's message without its Python-isms, and without a final period."""
    kind = str(err.get("type", ""))
    message = _PLAIN_MESSAGES.get(kind) or str(err.get("msg") or "invalid value")
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message.replace(" after validation", "").rstrip(".")


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    kind = err.get("type")
    if param is None:  # the body as a whole
        if kind == "missing":
            return "The request body is missing: send a JSON object."
        if kind in _OBJECT_ERRORS:
            return "The request body must be a JSON object (Content-Type: application/json)."
        return f"The request body is not acceptable: {_plain(err)}."
    if kind == "extra_forbidden":
        return f"Unknown field `{param}`."
    if kind == "missing":
        return f"Missing required field `{param}`."
    if kind in FIELD_SENTENCE_ERRORS:
        return f"`{param}` {_plain(err)}."
    return f"Invalid `{param}`: {_plain(err)}."


def _json_error_message(err: dict[str, Any], document: Any) -> str:
    """`Expecting ',' delimiter at line 1, column 9`, from the position in the text."""
    reason = str(err.get("ctx", {}).get("error") or "it cannot be parsed")
    loc = tuple(err.get("loc", ()))
    if len(loc) == 2 and isinstance(loc[1], int) and isinstance(document, str):
        pos = loc[1]
        line = document.count("\n", 0, pos) + 1
        column = pos - document.rfind("\n", 0, pos)
        reason = f"{reason} at line {line}, column {column}"
    return f"The request body is not valid JSON: {reason}."


async def app_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    if exc.status_code == 401:  # RFC 9110: a 401 names the scheme it wants
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid" and loc[:1] == ("body",):
        return _error(400, "invalid_json", _json_error_message(first, exc.body))
    param = _param(loc)
    return _error(422, "validation_error", _validation_message(first, param), param)


# What FastAPI answers when reading a JSON body fails other than as bad JSON.
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def _unreadable_body(exc: StarletteHTTPException) -> JSONResponse | None:
    """FastAPI's 400 for a body it could not read, in plain words."""
    cause = exc.__cause__
    if exc.status_code != 400 or exc.detail != _FASTAPI_BODY_ERROR or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        return _error(
            400,
            "invalid_json",
            f"The request body is not valid UTF-8 (byte 0x{byte} at position {cause.start}): "
            "send JSON text encoded as UTF-8.",
        )
    return _error(400, "bad_request", "The request body could not be read as JSON.")


def _allowed_methods(request: Request) -> str:
    """Every method the API answers on this path (Starlette's 405 names one route's)."""
    path = route_path(request.scope)
    methods = {op.method for op in openapi_operations(request.app.openapi()) if op.path.match(path)}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _routing_error(
    request: Request, exc: StarletteHTTPException
) -> tuple[str, Mapping[str, str] | None]:
    """The router's bare "Not Found" / "Method Not Allowed", saying what to do."""
    if exc.status_code == 404 and exc.detail == "Not Found":
        where = f"{request.method} {request.url.path}"
        return f"No such endpoint: {where}. The API reference is at /docs.", exc.headers
    if exc.status_code == 405:
        allow = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; it answers {allow}."
        return message, {**(exc.headers or {}), "Allow": allow}
    return str(exc.detail), exc.headers


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, BodyTooLarge):
        return too_large_response(exc.error)
    unreadable = _unreadable_body(exc)
    if unreadable is not None:
        return unreadable
    code = STATUS_CODES.get(exc.status_code, "http_error")
    # Headers such as a 405's Allow are part of the answer.
    message, headers = _routing_error(request, exc)
    return _error(exc.status_code, code, message, headers=headers)


async def unhandled_handler(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "internal_error", "Internal error; the server log has the details.")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    # The hot path's pool opens now, not under the first requests.
    await open_reader(settings.sqlalchemy_url)
    yield
    await close_readers()


def create_app() -> FastAPI:
    app = FastAPI(
        title="Graft",
        version="1.0",
        description="Transfer learning on images as a service: upload a dataset, fine-tune "
        "a pretrained torchvision model, download it. Every error has the shape "
        '`{"error": {"code", "message", "param"}}`.',
        lifespan=lifespan,
        # operationId = the endpoint's name (create_job, get_job), so generated clients
        # get those names rather than create_job_v1_jobs_post.
        generate_unique_id_function=lambda route: route.name,
        # The reference's sections in reading order (routes are included in another).
        openapi_tags=[{"name": name} for name in OPENAPI_TAGS],
        # /docs is served from the package (app/ui/routes.py), not from a CDN; ReDoc has
        # no vendored bundle, so it is off.
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unhandled_handler)
    # Routes are matched in order, one by one (FastAPI's router walks every route of
    # every router before the right one): the polled reads come first, since a route
    # tried in vain cost a few percent of a poll each (bench/bench_api.py).
    for module in (jobs, models, searches, datasets, evaluations, account, teams, health):
        app.include_router(module.router)
    ui.mount(app)
    app.add_middleware(BodyLimitMiddleware, operations=lambda: openapi_operations(app.openapi()))
    return app
