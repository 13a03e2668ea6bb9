"""Reads on the API's hot path, in the event loop, on PostgreSQL.

A poll (`GET /v1/jobs/{id}`) is one indexed select. Run through the ORM in a read
thread it cost about 1 ms of Python, and the hop to the thread and back made the
event loop and the threads take turns on the GIL (bench/bench_api.py, BENCHMARKS.md).
Here the same statement, built with SQLAlchemy Core in a repository, is compiled once
for psycopg and run on psycopg's async driver from a psycopg_pool pool, in the event
loop, with no ORM objects: the columns come back as a dict, through each column
type's own result processor (UTCDateTime's included), so the values are those the
ORM would have given.

Connections are autocommit, as read_scope()'s are: a statement sees committed rows
only, and no transaction is left open. Other databases (SQLite, the embedded
default) have no reader here; their callers use the read threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Select, make_url
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine.interfaces import Dialect

# The dialect the sync engine uses too; SQLAlchemy ships it untyped.
_DIALECT: Dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]
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
        self.names = [str(c.key) for c in stmt.selected_columns]
        processors: list[Callable[[Any], Any] | None] = [
            c.type.result_processor(_DIALECT, None) for c in stmt.selected_columns
        ]
        self.processors = processors

    def row(self, values: tuple[Any, ...]) -> dict[str, Any]:
        return {
            name: (value if p is None or value is None else p(value))
            for name, value, p in zip(self.names, values, self.processors, strict=True)
        }


@cache
def _compiled(stmt: Select[Any]) -> _Compiled:
    return _Compiled(stmt)


async def _configure(conn: AsyncConnection[Any]) -> None:
    # JSON columns (a job's spec, metrics, report) are parsed with orjson: with the
    # standard library's parser they were an eighth of a job list's time (py-spy).
    set_json_loads(orjson.loads, conn)


class AsyncReader:
    """One pool per database URL and event loop; opened on first use."""

    def __init__(self, url: str) -> None:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            # Fail a request in seconds when the database is away, not after the
            # library's default 30 s. As with the read threads' pool, after a database
            # restart one read per dead connection fails and the pool replaces it.
            timeout=POOL_TIMEOUT_SECONDS,
            # Sessions in UTC: psycopg then gives datetimes in datetime.UTC itself, which
            # UTCDateTime passes through (converting each was a twentieth of a list).
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "options": "-c TimeZone=UTC",
            },
            configure=_configure,
        )
        self._opened = False

    async def first(self, stmt: Select[Any], params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The statement's first row by column key, or None."""
        rows = await self.all(stmt, params)
        return rows[0] if rows else None

    async def all(self, stmt: Select[Any], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row of the statement, by column key."""
        compiled = _compiled(stmt)
        await self._open()
        async with self.pool.connection() as conn:
            # prepare=True: a server-side prepared statement per connection (parsed once).
            cursor = await conn.execute(
                compiled.sql, compiled.compiled.construct_params(dict(params)), prepare=True
            )
            return [compiled.row(values) for values in await cursor.fetchall()]

    async def _open(self) -> None:
        if not self._opened:
            await self.pool.open()
            self._opened = True

    async def close(self) -> None:
        await self.pool.close()


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


async def close_readers() -> None:
    """At the API's shutdown: the running loop's pools."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _readers if k[1] == loop]:
        await _readers.pop(key).close()
