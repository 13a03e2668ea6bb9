"""What every repository shares: keyset pagination over prefixed, time-ordered ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


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
    if cursor:
        stmt = stmt.where(id_column < cursor)
    rows = list(session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)))
    has_more = len(rows) > limit
    items = rows[:limit]
    next_cursor = getattr(items[-1], "id", None) if has_more and items else None
    return Page(items=items, has_more=has_more, next_cursor=next_cursor)
