"""SQL for teams and their API keys."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Select, and_, bindparam, or_, select, true, update

from app.db.models import ApiKey, Team
from app.repositories.base import RepositoryBase

R = TypeVar("R")


# The authentication statements are built once, with bound parameters: building one
# per request cost a third of a GET by id (bench/bench_api.py, py-spy).
@cache
def _key_and_team() -> Select[ApiKey, Team]:
    return (
        select(ApiKey, Team)
        .join(Team, ApiKey.team_id == Team.id)
        .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
    )


@cache
def _key_team_and(model: Any) -> Select[ApiKey, Team, Any]:
    on = and_(model.id == bindparam("object_id"), model.team_id == Team.id)
    return (
        select(ApiKey, Team, model)
        .join(Team, ApiKey.team_id == Team.id)
        .outerjoin(model, on)
        .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
    )


# What authentication reads of a key (services.teams: expiry, scope, rate limit, and
# last_used_at), labelled apart from the object's columns.
KEY_COLUMNS = ("id", "prefix", "scopes", "expires_at", "last_used_at")


@cache
def key_and_columns(model: Any, fields: tuple[str, ...]) -> Select[Any]:
    """key_team_and's statement as plain columns, for the async hot path
    (app/db/async_reads.py): the unrevoked key's KEY_COLUMNS as `key_<name>`, and the
    `fields` of the team's `model` row `object_id` (all None when the team has none)."""
    on = and_(model.id == bindparam("object_id"), model.team_id == ApiKey.team_id)
    columns = [getattr(ApiKey, c).label(f"key_{c}") for c in KEY_COLUMNS]
    columns += [getattr(model, f).label(f) for f in fields]
    return (
        select(*columns)
        .select_from(ApiKey)
        .outerjoin(model, on)
        .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
    )


@cache
def key_and_page(
    model: Any, fields: tuple[str, ...], filters: tuple[str, ...], after: bool
) -> Select[Any]:
    """The unrevoked key's KEY_COLUMNS (as `key_<name>`) beside a page of its team's
    `model` rows, newest first, in one statement (PostgreSQL: a LATERAL join, whose
    inner select reads the page through the (team_id, …, id) index): `fields` of at
    most the bound `limit` rows, each of `filters` equal to the bound `f_<name>`, ids
    below the bound `cursor` when `after`. A team with no such row gives one row of
    None fields; an unknown key gives no row."""
    inner = select(*[getattr(model, f).label(f) for f in fields]).where(
        model.team_id == ApiKey.team_id,
        *[getattr(model, f) == bindparam(f"f_{f}") for f in filters],
    )
    if after:
        inner = inner.where(model.id < bindparam("cursor"))
    page = inner.order_by(model.id.desc()).limit(bindparam("limit")).lateral("page")
    columns = [getattr(ApiKey, c).label(f"key_{c}") for c in KEY_COLUMNS]
    columns += [page.c[f] for f in fields]
    return (
        select(*columns)
        .select_from(ApiKey)
        .outerjoin(page, true())
        .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
    )


class TeamRepository(RepositoryBase[Team, str]):
    model = Team

    def lock(self, team_id: str) -> Team | None:
        """The team row, locked until the transaction ends (PostgreSQL; SQLite takes its
        database-wide write lock anyway): quota checks of one team take turns."""
        stmt = select(Team).where(Team.id == team_id).with_for_update()
        return self.session.scalars(stmt.execution_options(populate_existing=True)).first()

    # -- keys ---------------------------------------------------------------

    def add_key(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        self.session.flush()
        return key

    def key_and_team(self, key_hash: str) -> tuple[ApiKey, Team] | None:
        """The unrevoked key with this hash and its team, in one round trip."""
        row = self.session.execute(_key_and_team(), {"key_hash": key_hash}).first()
        return None if row is None else (row[0], row[1])

    def key_team_and(
        self, key_hash: str, model: type[R], object_id: str
    ) -> tuple[ApiKey, Team, R | None] | None:
        """key_and_team, and the team's `model` row with `object_id` (None when the team
        has none), in the same round trip. `model` is a team-owned row (id, team_id)."""
        owned: Any = model
        params = {"key_hash": key_hash, "object_id": object_id}
        row = self.session.execute(_key_team_and(owned), params).first()
        return None if row is None else (row[0], row[1], row[2])

    def key_and_columns(
        self, model: Any, fields: tuple[str, ...], params: dict[str, str]
    ) -> dict[str, Any] | None:
        """key_and_columns()'s row by column key, or None (no such key)."""
        row = self.session.execute(key_and_columns(model, fields), params).mappings().first()
        return None if row is None else dict(row)

    def keys(self, team_id: str) -> list[ApiKey]:
        stmt = select(ApiKey).where(ApiKey.team_id == team_id).order_by(ApiKey.id)
        return list(self.session.scalars(stmt))

    def get_key(self, team_id: str, key_id: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.team_id == team_id)
        return self.session.scalars(stmt).first()

    def revoke_key(self, key_id: str, now: datetime) -> None:
        self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )

    def touch_key(self, key_id: str, now: datetime, stale_before: datetime) -> None:
        """Set last_used_at, unless it was set after `stale_before` (a write per key per
        interval, not per request)."""
        self.session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < stale_before),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
