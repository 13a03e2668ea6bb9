"""Dependencies shared by the routers, as Annotated aliases.

The ones that do no I/O are `async def`: FastAPI runs a plain `def` dependency (or
endpoint) in its thread pool, and on this machine each hop there and back cost more
than the database work of a GET (bench/bench_api.py). So a GET endpoint is `async def`
and does its whole read, the key included, in one hop through `TeamReader`, to a small
pool of read threads (GRAFT_READ_THREADS).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.async_reads import reader_for
from app.db.models import Team
from app.db.session import read_scope, session_scope
from app.repositories.base import Page
from app.repositories.teams import R
from app.services.teams import (
    ObjectQuery,
    PageQuery,
    authenticate,
    authenticate_and_columns,
    authenticate_and_columns_async,
    authenticate_and_get,
    authenticate_and_page,
    authenticate_and_page_async,
    require_admin,
    touch_key,
)
from app.storage import Storage, storage_for


def get_session() -> Iterator[Session]:
    # scope="function" below: the transaction commits when the endpoint returns,
    # before the response is sent, so a client never reads an uncommitted object.
    with session_scope() as session:
        yield session


async def settings() -> Settings:
    return get_settings()


async def get_storage(settings: Annotated[Settings, Depends(settings)]) -> Storage:
    return storage_for(settings)


# Declares the Bearer scheme in the OpenAPI spec (securitySchemes) for every route
# that takes a key; a missing or non-Bearer header reads as no key (the 401 says so).
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A team's API key (`graft_…`); on /v1/teams, GRAFT_ADMIN_KEY; on /metrics, "
    "GRAFT_METRICS_TOKEN or the admin key",
)


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    token = credentials.credentials.strip() if credentials else ""
    return token or None


def _address(request: Request) -> str:
    # Behind a proxy, run uvicorn with --proxy-headers and --forwarded-allow-ips so
    # this is the client's address, not the proxy's.
    return request.client.host if request.client else "unknown"


async def bearer_token(credentials: Credentials) -> str | None:
    return _token(credentials)


async def client_address(request: Request) -> str:
    """The peer's address."""
    return _address(request)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
TokenDep = Annotated[str | None, Depends(bearer_token)]
AddressDep = Annotated[str, Depends(client_address)]


T = TypeVar("T")

_read_threads: anyio.CapacityLimiter | None = None


async def in_read_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking read in one of GRAFT_READ_THREADS threads (made on first use: a
    limiter belongs to the running event loop)."""
    global _read_threads
    if _read_threads is None:
        _read_threads = anyio.CapacityLimiter(get_settings().read_threads)
    return await anyio.to_thread.run_sync(partial(fn, *args), limiter=_read_threads)


class TeamReader:
    """Runs a read as the caller's team: the key lookup and the read in one session
    outside any transaction (reads see committed rows only), in one thread-pool hop."""

    def __init__(self, token: str | None, address: str, scope: str = "read") -> None:
        self.token = token
        self.address = address
        self.scope = scope

    async def __call__(self, read: Callable[[Session, Team], T]) -> T:
        return await in_read_thread(self.run, read)

    def run(self, read: Callable[[Session, Team], T]) -> T:
        # The key is looked up on every request (no cache), so a revoked key stops
        # working at once on every API process.
        with read_scope() as session:
            team = authenticate(session, self.token, scope=self.scope, address=self.address)
            return read(session, team)

    async def get(
        self, model: type[R], object_id: str, answer: Callable[[Session, Team, R | None], T]
    ) -> T:
        """Like calling with a read, for a GET by id: the key and the team's `model` row
        `object_id` (None if it has none) come in one database round trip."""
        return await in_read_thread(self._get, model, object_id, answer)

    def _get(
        self, model: type[R], object_id: str, answer: Callable[[Session, Team, R | None], T]
    ) -> T:
        with read_scope() as session:
            team, obj = authenticate_and_get(
                session, self.token, model, object_id, scope=self.scope, address=self.address
            )
            return answer(session, team, obj)

    async def columns(self, query: ObjectQuery) -> dict[str, Any] | None:
        """The fields of the team's row (None if it has none), after the same key
        checks, in one statement without ORM objects: the poll's path."""
        return await self._plain(query, authenticate_and_columns, authenticate_and_columns_async)

    async def page(self, query: PageQuery) -> Page[dict[str, Any]]:
        """A page of the team's rows as column dicts, after the key's checks."""
        return await self._plain(query, authenticate_and_page, authenticate_and_page_async)

    async def _plain(
        self,
        query: Any,
        in_thread: Callable[..., T],
        in_loop: Callable[..., Awaitable[tuple[T, str | None]]],
    ) -> T:
        """A read without ORM objects: on PostgreSQL `in_loop` in the event loop
        (app/db/async_reads.py), then the key's last_used_at in a thread when it is
        due; elsewhere `in_thread` in a read thread."""
        reader = reader_for(get_settings().sqlalchemy_url)
        if reader is None:
            return await in_read_thread(self._in_session, in_thread, query)
        found, stale_key = await in_loop(
            reader, self.token, query, scope=self.scope, address=self.address
        )
        if stale_key is not None and stale_key not in _touching:
            # One write per due key at a time: the requests in flight all find it due
            # at once (a new key, or each minute), and 32 of them queued 32 UPDATEs of
            # one row on the read threads: a stall of 0.15 s (bench/bench_api.py).
            _touching.add(stale_key)
            try:
                await in_read_thread(_touch, stale_key)
            finally:
                _touching.discard(stale_key)
        return found

    def _in_session(self, read: Callable[..., T], query: Any) -> T:
        with read_scope() as session:
            return read(session, self.token, query, scope=self.scope, address=self.address)


# Keys whose last_used_at a request of this process (its event loop) is writing now.
_touching: set[str] = set()


def _touch(key_id: str) -> None:
    with read_scope() as session:
        touch_key(session, key_id)


class _TeamKey(HTTPBearer):
    """The Bearer scheme (declared in the OpenAPI spec as `_bearer` is) whose call
    makes the request's TeamReader: one dependency with no sub-dependencies, since each
    level costs a pass of FastAPI's solver per request, a share of a poll's time
    (bench/bench_api.py)."""

    async def __call__(self, request: Request) -> TeamReader:  # type: ignore[override]
        return TeamReader(_token(await super().__call__(request)), _address(request))


team_reader = _TeamKey(
    auto_error=False, scheme_name=_bearer.scheme_name, description=_bearer.model.description
)


def current_team(token: TokenDep, address: AddressDep) -> Team:
    """The caller's team, for endpoints that write (in a transaction of their own):
    the key needs the `write` scope."""
    return TeamReader(token, address, "write").run(lambda session, team: team)


def reading_team(token: TokenDep, address: AddressDep) -> Team:
    """The caller's team, for a POST that only reads (predict): `read` scope is enough."""
    return TeamReader(token, address).run(lambda session, team: team)


async def admin(settings: SettingsDep, token: TokenDep, address: AddressDep) -> None:
    require_admin(settings, token, address)


CurrentTeam = Annotated[Team, Depends(current_team)]
ReadingTeam = Annotated[Team, Depends(reading_team)]
ReadAsTeam = Annotated[TeamReader, Depends(team_reader)]
AdminDep = Annotated[None, Depends(admin)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Retry-safe creation: same key, same object",
    ),
]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=r"^[a-z]+_[0-9a-f]+$",
        description="`next_cursor` of the previous page",
    ),
]
