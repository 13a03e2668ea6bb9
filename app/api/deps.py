"""Dependencies shared by the routers, as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.models import Team
from app.db.session import session_scope
from app.services.teams import authenticate, require_admin
from app.storage import Storage


def get_session() -> Iterator[Session]:
    # scope="function" below: the transaction commits when the endpoint returns,
    # before the response is sent, so a client never reads an uncommitted object.
    with session_scope() as session:
        yield session


def get_storage(settings: Annotated[Settings, Depends(get_settings)]) -> Storage:
    return Storage(settings.resolved_data_dir)


def bearer_token(authorization: Annotated[str | None, Header()] = None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
TokenDep = Annotated[str | None, Depends(bearer_token)]


def current_team(session: SessionDep, token: TokenDep) -> Team:
    return authenticate(session, token)


def admin(settings: SettingsDep, token: TokenDep) -> None:
    require_admin(settings, token)


CurrentTeam = Annotated[Team, Depends(current_team)]
AdminDep = Annotated[None, Depends(admin)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retry-safe creation: same key, same object"),
]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
