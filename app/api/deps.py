"""Dependencies shared by the routers, as Annotated aliases.

The ones that do no I/O are `async def`: FastAPI runs a plain `def` dependency (or
endpoint) in its thread pool, and on this machine each hop there and back cost more
than the database work of a GET (bench/bench_api.py). So a GET endpoint is `async def`
and does its whole read, the key included, in one hop through `TeamReader`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.models import Team
from app.db.session import read_scope, session_scope
from app.services.teams import authenticate, require_admin
from app.storage import Storage


def get_session() -> Iterator[Session]:
    # scope="function" below: the transaction commits when the endpoint returns,
    # before the response is sent, so a client never reads an uncommitted object.
    with session_scope() as session:
        yield session


async def settings() -> Settings:
    return get_settings()


async def get_storage(settings: Annotated[Settings, Depends(settings)]) -> Storage:
    return Storage(settings.resolved_data_dir)


async def bearer_token(authorization: Annotated[str | None, Header()] = None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
TokenDep = Annotated[str | None, Depends(bearer_token)]


T = TypeVar("T")


class TeamReader:
    """Runs a read as the caller's team: the key lookup and the read in one session
    outside any transaction (reads see committed rows only), in one thread-pool hop."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    async def __call__(self, read: Callable[[Session, Team], T]) -> T:
        return await run_in_threadpool(self.run, read)

    def run(self, read: Callable[[Session, Team], T]) -> T:
        # The key is looked up on every request (no cache), so a revoked key stops
        # working at once on every API process.
        with read_scope() as session:
            return read(session, authenticate(session, self.token))


async def team_reader(token: TokenDep) -> TeamReader:
    return TeamReader(token)


def current_team(token: TokenDep) -> Team:
    """The caller's team, for endpoints that write (in a transaction of their own)."""
    return TeamReader(token).run(lambda session, team: team)


async def admin(settings: SettingsDep, token: TokenDep) -> None:
    require_admin(settings, token)


CurrentTeam = Annotated[Team, Depends(current_team)]
ReadAsTeam = Annotated[TeamReader, Depends(team_reader)]
AdminDep = Annotated[None, Depends(admin)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retry-safe creation: same key, same object"),
]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
