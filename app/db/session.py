"""Engines and the unit of work. session_scope() is the one place that commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

P = ParamSpec("P")
T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; busy_timeout waits for the
    # writer's lock instead of failing at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@lru_cache(maxsize=16)
def get_engine(url: str | None = None, *, autocommit: bool = False) -> Engine:
    """The engine of `url`; autocommit=True: a pool of its own whose connections run
    each statement outside a transaction (for reads: no BEGIN and COMMIT round trips,
    and no isolation switch at each checkout, which execution_options would cost)."""
    url = url or get_settings().sqlalchemy_url
    mode: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **mode
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if autocommit:
        # Nothing to reset on return, and no pre-ping round trip on the hot read path:
        # after a database restart the first read on a dead connection fails, and the
        # pool is invalidated so the next one reconnects.
        mode |= {"pool_reset_on_return": None, "pool_pre_ping": False}
    else:
        # Writes (and every worker transition) check the connection first.
        mode["pool_pre_ping"] = True
    # As many connections as the API's thread pool has threads (anyio's default, 40): a
    # request that holds one never waits for a thread held by a request waiting for one.
    return create_engine(url, pool_size=40, max_overflow=10, **mode)


def dispose_engines(url: str) -> None:
    for autocommit in (False, True):
        get_engine(url, autocommit=autocommit).dispose()


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False, autoflush=True)


@lru_cache(maxsize=8)
def _read_sessionmaker(url: str) -> sessionmaker[Session]:
    engine = get_engine(url, autocommit=True)
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run callback once the session's transaction has committed (e.g. enqueue a job)."""
    session.info.setdefault("after_commit", []).append(callback)


def on_rollback(session: Session, callback: Callable[[], None]) -> None:
    """Run callback if the transaction is rolled back (e.g. remove files it wrote)."""
    session.info.setdefault("on_rollback", []).append(callback)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: commit on success, roll back on error, then run after-commit hooks."""
    session = _sessionmaker(url or get_settings().sqlalchemy_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        for undo in session.info.pop("on_rollback", []):
            undo()
        raise
    finally:
        callbacks: list[Callable[[], None]] = session.info.pop("after_commit", [])
        session.close()
    for callback in callbacks:
        callback()


@contextmanager
def read_scope(url: str | None = None) -> Iterator[Session]:
    """A session for reads only (GET requests, authentication): it never commits, and
    its statements run outside any transaction. Writes go through session_scope()."""
    session = _read_sessionmaker(url or get_settings().sqlalchemy_url)()
    try:
        yield session
    finally:
        session.close()


def in_transaction(step: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs) -> T:
    """step(session, *args, **kw) in a transaction of its own (a worker's unit of work)."""
    with session_scope() as session:
        return step(session, *args, **kw)
