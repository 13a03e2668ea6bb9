"""SQL for Idempotency-Key records."""

from __future__ import annotations

from app.db.models import IdempotencyKey
from app.repositories.base import RepositoryBase


class IdempotencyRepository(RepositoryBase[IdempotencyKey, tuple[str, str, str]]):
    """Keyed by (team_id, scope, key), the table's primary key in that order."""

    model = IdempotencyKey

    def delete(self, record: IdempotencyKey) -> None:
        self.session.delete(record)
        self.session.flush()
