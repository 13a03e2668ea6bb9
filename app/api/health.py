from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from app.api.deps import AddressDep, SettingsDep, TokenDep
from app.config import Settings, get_settings
from app.db.session import session_scope
from app.errors import Forbidden, Unauthorized
from app.queue import broker_reachable
from app.repositories.health import ping
from app.schemas.common import ERROR_RESPONSES
from app.services.teams import secret_matches

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"] = Field(
        description="ok when every check passed", examples=["ok"]
    )
    checks: dict[str, str] = Field(
        description="Each dependency: `ok`, or `error: <what failed>`",
        examples=[{"database": "ok", "broker": "ok"}],
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency cannot be reached"}},
)
def readyz() -> JSONResponse:
    """The database, the broker and the bucket (with GRAFT_STORAGE_URL=s3://…) can be
    reached (503 otherwise, saying which)."""
    checks: dict[str, str] = {}
    try:
        with session_scope() as session:
            ping(session)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    checks["broker"] = "ok" if broker_reachable() else "error: unreachable"
    settings = get_settings()
    if settings.is_remote_storage:
        checks["storage"] = storage_check(settings)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


def storage_check(settings: Settings) -> str:
    from app.object_store import StoreUnavailable, object_store

    try:
        object_store(settings).check()
    except StoreUnavailable as exc:
        return f"error: {exc}"
    return "ok"


def require_metrics_token(settings: Settings, token: str | None, address: str) -> None:
    """The bearer token must be GRAFT_METRICS_TOKEN or the admin key (403 if neither
    is set: metrics are then off). Wrong tokens count as failed authentications of the
    address, like wrong API keys (app/rate_limits.py)."""
    accepted = [
        secret.get_secret_value()
        for secret in (settings.metrics_token, settings.admin_key)
        if secret is not None and secret.get_secret_value()
    ]
    if not accepted:
        raise Forbidden("Metrics are disabled: set GRAFT_METRICS_TOKEN.", code="metrics_disabled")
    if not token:
        raise Unauthorized(
            "Missing metrics token: send `Authorization: Bearer <GRAFT_METRICS_TOKEN>` "
            "(or the admin key)."
        )
    if not secret_matches(token, accepted, address):
        raise Unauthorized(
            "Wrong metrics token: send GRAFT_METRICS_TOKEN (or the admin key) as the bearer token."
        )


JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus metrics, in its text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        # Errors are JSON in the one error shape, though the answer itself is text.
        401: {"description": "Missing or wrong metrics token", "content": JSON_ERROR},
        403: {"description": "Metrics are disabled (no token is set)", "content": JSON_ERROR},
        429: {
            **{k: v for k, v in ERROR_RESPONSES[429].items() if k != "model"},
            "content": JSON_ERROR,
        },
    },
)
def metrics(settings: SettingsDep, token: TokenDep, address: AddressDep) -> Response:
    """Prometheus metrics, for a scraper holding a token: `Authorization: Bearer <token>`,
    where the token is GRAFT_METRICS_TOKEN or the admin key (GRAFT_ADMIN_KEY). Without a
    token: 401; with neither setting set, metrics are off: 403."""
    require_metrics_token(settings, token, address)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
