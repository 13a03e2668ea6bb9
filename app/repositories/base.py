"""What every repository shares: the session, the model class, add/get, team scoping,
and keyset pagination over prefixed, time-ordered ids.

Modelled on polar's `RepositoryBase` (server/polar/kit/repository/base.py): each
subclass names its model with a class attribute and gets the common methods typed
for it.

    class DatasetRepository(TeamScopedRepository[Dataset]):
        model = Dataset
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute, Mapped, Session

T = TypeVar("T")
M = TypeVar("M")
K = TypeVar("K")


@dataclass
class Page(Generic[T]):
    items: list[T]
    has_more: bool
    next_cursor: str | None


def paginate(
    session: Session,
    stmt: Select[T],
    id_column: InstrumentedAttribute[Any],
    *,
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """Newest first; the cursor is the last id of the previous page."""
    return page_of(list(session.scalars(keyset(stmt, id_column, limit, cursor))), limit)


def keyset(stmt: Select[T], id_column: Any, limit: int, cursor: str | None) -> Select[T]:
    """`stmt` narrowed to the page after `cursor`: ids below it, newest first, one row
    more than `limit` (page_of() reads it as "there is more")."""
    if cursor:
        stmt = stmt.where(id_column < cursor)
    return stmt.order_by(id_column.desc()).limit(limit + 1)


def page_of(rows: list[T], limit: int) -> Page[T]:
    """A page from up to limit + 1 rows (ORM objects or column dicts), newest first:
    one row more than the page says there is more."""
    has_more = len(rows) > limit
    items = rows[:limit]
    last = items[-1] if has_more and items else None
    next_cursor = last["id"] if isinstance(last, dict) else getattr(last, "id", None)
    return Page(items=items, has_more=has_more, next_cursor=next_cursor)


def team_page_columns(
    session: Session,
    model: Any,
    fields: tuple[str, ...],
    team_id: str,
    filters: dict[str, Any],
    *,
    limit: int,
    cursor: str | None,
) -> Page[dict[str, Any]]:
    """list_for_team as column dicts: `fields` of the team's rows, newest first, each
    filter given (not None) an equality."""
    stmt: Select[Any] = select(*[getattr(model, f).label(f) for f in fields]).where(
        model.team_id == team_id
    )
    for name, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, name) == value)
    rows = session.execute(keyset(stmt, model.id, limit, cursor)).mappings()
    return page_of([dict(r) for r in rows], limit)


class RepositoryBase(Generic[M, K]):
    """The session and the model class `M`, whose primary key has type `K`."""

    model: type[M]
    # Whether get() overwrites an already loaded object with the row as it is now
    # (for rows that another process changes, such as jobs under a worker).
    populate_existing: ClassVar[bool] = False

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, obj: M) -> M:
        self.session.add(obj)
        self.session.flush()
        return obj

    def get(self, id: K) -> M | None:
        return self.session.get(self.model, id, populate_existing=self.populate_existing)

    def remove(self, obj: M) -> None:
        """Delete the row (the database cascades to the rows that belong to it)."""
        self.session.delete(obj)
        self.session.flush()


class TeamOwned(Protocol):
    """A row that belongs to a team and has a prefixed, time-ordered string id."""

    id: Mapped[str]
    team_id: Mapped[str]


TM = TypeVar("TM", bound=TeamOwned)


class TeamScopedRepository(RepositoryBase[TM, str]):
    """Rows a team owns: another team's id reads exactly like a missing one."""

    def get_for_team(self, team_id: str, id: str) -> TM | None:
        stmt = select(self.model).where(self.model.id == id, self.model.team_id == team_id)
        return self.session.scalars(stmt).first()

    def get_many(self, ids: list[str]) -> list[TM]:
        """The rows of these ids that exist, in one statement (any team's: the ids
        come from rows already scoped to one)."""
        if not ids:
            return []
        return list(self.session.scalars(select(self.model).where(self.model.id.in_(ids))))

    def list_for_team(
        self, team_id: str, *, limit: int, cursor: str | None, **filters: object
    ) -> Page[TM]:
        """The team's rows, newest first; each filter given (not None) is an equality."""
        stmt = select(self.model).where(self.model.team_id == team_id)
        given = {name: value for name, value in filters.items() if value is not None}
        if given:
            stmt = stmt.filter_by(**given)
        return paginate(self.session, stmt, self.model.id, limit=limit, cursor=cursor)
