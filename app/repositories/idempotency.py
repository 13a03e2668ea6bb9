"""SQL for Idempotency-Key records."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import IdempotencyKey


class IdempotencyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, team_id: str, scope: str, key: str) -> IdempotencyKey | None:
        stmt = select(IdempotencyKey).where(
            IdempotencyKey.team_id == team_id,
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
        )
        return self.session.scalars(stmt).first()

    def add(self, record: IdempotencyKey) -> None:
        self.session.add(record)
        self.session.flush()
