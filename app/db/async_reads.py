"""Reads on the API's hot path, in the event loop, on PostgreSQL.

A poll (`GET /v1/jobs/{id}`) is one indexed select. Run through the ORM in a read
thread it cost about 1 ms of Python, and the hop to the thread and back made the
event loop and the threads take turns on the GIL (bench/bench_api.py, BENCHMARKS.md).
Here the same statement, built with SQLAlchemy Core in a repository, is compiled once
for asyncpg and run on an asyncpg pool in the event loop, with no ORM objects: the
columns come back as a dict, through each column type's own result processor
(UTCDateTime's included), so the values are those the ORM would have given.

asyncpg rather than psycopg's async mode (which the sync engine's driver also has):
side by side in one session, the poll served about a tenth more with it (0.57-0.60x
the bare endpoint against 0.49-0.53x, bench/bench_api.py), its rows being decoded in
C and its pool lighter.

Connections run outside transactions (asyncpg's default, as read_scope()'s do): a
statement sees committed rows only, and no transaction is left open. Other databases
(SQLite, the embedded default) have no reader here; their callers use the read threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import asyncpg
import orjson
from sqlalchemy import JSON, Select, make_url
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine.interfaces import Dialect

log = logging.getLogger(__name__)

# The statements are compiled for asyncpg ($1 parameters with casts); SQLAlchemy ships
# the dialect untyped.
_DIALECT: Dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
# Connections per API process: the loop runs one statement at a time anyway, and
# eight in flight hide the round trips (four made a poll wait for one, bench_api.py).
POOL_SIZE = 8
POOL_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5


class _Compiled:
    def __init__(self, stmt: Select[Any]) -> None:
        compiled = stmt.compile(dialect=_DIALECT)
        self.sql = str(compiled)
        self.compiled = compiled
        self.order = list(compiled.positiontup or [])
        self.names = [str(c.key) for c in stmt.selected_columns]
        # JSON columns arrive parsed (the connection's codec); the others through their
        # type's own result processor (UTCDateTime's included).
        self.processors: list[Callable[[Any], Any] | None] = [
            None if isinstance(c.type, JSON) else c.type.result_processor(_DIALECT, None)
            for c in stmt.selected_columns
        ]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        values = self.compiled.construct_params(dict(params))
        return [values[name] for name in self.order]

    def row(self, values: Any) -> dict[str, Any]:
        return {
            name: (value if p is None or value is None else p(value))
            for name, value, p in zip(self.names, values, self.processors, strict=True)
        }


@cache
def _compiled(stmt: Select[Any]) -> _Compiled:
    return _Compiled(stmt)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _configure(conn: asyncpg.Connection) -> None:
    # JSON columns (a job's spec, metrics, report) are parsed with orjson: with the
    # standard library's parser they were an eighth of a job list's time (py-spy).
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection it takes back, besides its own clean-up (an
    open transaction rolled back): nothing. Its default sends a reset query (RESET
    ALL, CLOSE ALL, UNLISTEN *, …), a second round trip per read, for session state
    that these reads never set."""


class AsyncReader:
    """One pool per database URL and event loop; opened at start-up (open_reader) or
    by the first read."""

    def __init__(self, url: str) -> None:
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None

    async def first(self, stmt: Select[Any], params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The statement's first row by column key, or None."""
        rows = await self.all(stmt, params)
        return rows[0] if rows else None

    async def all(self, stmt: Select[Any], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row of the statement, by column key."""
        compiled = _compiled(stmt)
        pool = self._pool or await self.open()
        # asyncpg prepares each statement once per connection (its statement cache).
        async with pool.acquire(timeout=POOL_TIMEOUT_SECONDS) as conn:
            rows = await conn.fetch(compiled.sql, *compiled.args(params))
        return [compiled.row(values) for values in rows]

    async def open(self) -> asyncpg.Pool:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                # Fail a request in seconds when the database is away. After a database
                # restart one read per dead connection fails and the pool replaces it.
                # Sessions in UTC (asyncpg's datetimes are in UTC anyway).
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    # All at once, at start-up (open_reader): none is opened under load.
                    min_size=POOL_SIZE,
                    max_size=POOL_SIZE,
                    timeout=CONNECT_TIMEOUT_SECONDS,
                    server_settings={"TimeZone": "UTC"},
                    init=_configure,
                    reset=_keep_session,
                )
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


_readers: dict[tuple[str, int], AsyncReader] = {}


@cache
def _is_postgresql(url: str) -> bool:
    # Cached: parsing the URL on every request was 4 % of a poll's time (py-spy).
    return make_url(url).get_backend_name() == "postgresql"


def reader_for(url: str) -> AsyncReader | None:
    """The running loop's reader of `url`, or None where there is none (not PostgreSQL)."""
    if not _is_postgresql(url):
        return None
    key = (url, id(asyncio.get_running_loop()))
    reader = _readers.get(key)
    if reader is None:
        reader = _readers[key] = AsyncReader(url)
    return reader


async def open_reader(url: str) -> None:
    """At the API's start-up: open `url`'s pool now, so the first requests do not wait
    for it. A database that is away is not an error here: the reads open the pool when
    it is back, and /readyz says so meanwhile."""
    reader = reader_for(url)
    if reader is None:
        return
    try:
        await reader.open()
    except Exception as exc:  # whatever the driver raises: the reads will say it again
        log.warning("Hot-path reads: could not open the pool yet (%s: %s)", type(exc).__name__, exc)


async def close_readers() -> None:
    """At the API's shutdown: the running loop's pools."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _readers if k[1] == loop]:
        await _readers.pop(key).close()
