"""Every migration goes down and up again on both databases, and head has the indexes
the models declare."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from app.db.base import Base
from app.db.migrate import alembic_config, upgrade
from tests.conftest import require_server, scratch_database


def _round_trip(url: str) -> None:
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.sorted_tables:
            declared = {index.name for index in table.indexes}
            present = {index["name"] for index in inspector.get_indexes(table.name)}
            assert declared <= present, (table.name, declared - present)
    finally:
        engine.dispose()


def test_migrations_round_trip_on_sqlite(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'graft.db'}")


@pytest.mark.postgres
def test_migrations_round_trip_on_postgres() -> None:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    with scratch_database("graft_migrations") as url:
        _round_trip(url)
