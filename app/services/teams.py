"""Teams, API keys and authentication."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.models import ApiKey, Team
from app.errors import Forbidden, NotFound, Unauthorized
from app.ids import new_id
from app.repositories.teams import TeamRepository
from app.security import constant_time_equal, generate_key, hash_key, new_webhook_secret


def create_team(session: Session, name: str) -> Team:
    team = Team(id=new_id("team"), name=name, webhook_secret=new_webhook_secret())
    team.created_at = utcnow()
    return TeamRepository(session).add(team)


def create_key(session: Session, team_id: str) -> tuple[ApiKey, str]:
    """Returns the row and the key in clear, which is never stored."""
    repo = TeamRepository(session)
    if repo.get(team_id) is None:
        raise NotFound(f"No team {team_id}.", code="team_not_found", param="team_id")
    key = generate_key()
    row = ApiKey(
        id=new_id("key"),
        team_id=team_id,
        key_hash=hash_key(key),
        prefix=key[:8],
        created_at=utcnow(),
    )
    return repo.add_key(row), key


def authenticate(session: Session, key: str | None) -> Team:
    if not key:
        raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
    team = TeamRepository(session).team_for_key_hash(hash_key(key))
    if team is None:
        raise Unauthorized("Unknown or revoked API key.")
    return team


def require_admin(settings: Settings, key: str | None) -> None:
    if not key:
        raise Unauthorized("Missing admin key: send `Authorization: Bearer <GRAFT_ADMIN_KEY>`.")
    admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
    if not admin:
        raise Forbidden("Team administration is disabled: GRAFT_ADMIN_KEY is not set.")
    if not constant_time_equal(key, admin):
        raise Unauthorized("Wrong admin key.")
