"""SQL for teams and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Team


class TeamRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, team: Team) -> Team:
        self.session.add(team)
        self.session.flush()
        return team

    def get(self, team_id: str) -> Team | None:
        return self.session.get(Team, team_id)

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
