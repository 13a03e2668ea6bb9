"""SQL for model searches; their trials are rows of `jobs` (JobRepository.for_search)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from app.db.base import utcnow
from app.db.models import Search
from app.repositories.base import TeamScopedRepository
from app.repositories.jobs import rowcount

# Searches the maintenance pass advances at once, oldest first.
RUNNING_BATCH = 100


class SearchRepository(TeamScopedRepository[Search]):
    model = Search
    populate_existing = True

    def claim_slot(self, search_id: str, slot: int) -> bool:
        """Take trial slot `slot` of a running search: one conditional UPDATE, so two
        workers finishing trials at once cannot both create a trial for it."""
        result = self.session.execute(
            update(Search)
            .where(
                Search.id == search_id,
                Search.status == "running",
                Search.trials_created == slot,
            )
            .values(trials_created=slot + 1)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def finish(self, search_id: str, status: str, error: dict[str, Any] | None = None) -> bool:
        """End a running search; False when it had already ended."""
        result = self.session.execute(
            update(Search)
            .where(Search.id == search_id, Search.status == "running")
            .values(status=status, error=error, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def running_ids(self) -> list[str]:
        stmt = (
            select(Search.id)
            .where(Search.status == "running")
            .order_by(Search.id)
            .limit(RUNNING_BATCH)
        )
        return list(self.session.scalars(stmt))
