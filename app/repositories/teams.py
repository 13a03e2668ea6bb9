"""SQL for teams and their API keys."""

from __future__ import annotations

from sqlalchemy import select

from app.db.models import ApiKey, Team
from app.repositories.base import RepositoryBase


class TeamRepository(RepositoryBase[Team, str]):
    model = Team

    def add_key(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        self.session.flush()
        return key

    def team_for_key_hash(self, key_hash: str) -> Team | None:
        stmt = (
            select(Team)
            .join(ApiKey, ApiKey.team_id == Team.id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
        return self.session.scalars(stmt).first()
