"""Fixtures of the end-to-end tests: a stack with a real worker process per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import (
    REDIS_URL,
    Api,
    WorkerProcess,
    api_factory,
    base_env,
    configure,
    require_server,
)


@pytest.fixture(scope="module")
def pg_stack(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    require_server("Redis", "127.0.0.1", 6379)
    root = tmp_path_factory.mktemp("pg-stack")
    env = base_env(root, GRAFT_DATABASE_URL=pg_server_url, GRAFT_BROKER_URL=REDIS_URL)
    worker = WorkerProcess(env, root / "worker.log")
    try:
        worker.wait_ready()
        yield env
    finally:
        worker.stop()


@pytest.fixture
def pg_api(pg_stack: dict[str, str], make_api: Callable[[], Api]) -> Api:
    configure(pg_stack)
    return make_api()


@pytest.fixture(scope="module")
def make_api_module(pg_stack: dict[str, str]) -> Iterator[Callable[[], Api]]:
    """make_api for module-scoped fixtures (the stack's settings applied)."""
    with api_factory(pg_stack) as factory:
        yield factory
