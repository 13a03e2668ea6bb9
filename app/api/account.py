"""The caller's own team: its webhook secret and its usage against each quota."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.api.deps import CurrentTeam, ReadAsTeam, SessionDep, SettingsDep
from app.api.responses import as_json
from app.db.models import Team
from app.schemas.common import ERROR_RESPONSES
from app.schemas.teams import OwnTeamRead, QuotaUsage, UsageRead
from app.services import quotas
from app.services import teams as service

router = APIRouter(prefix="/v1", tags=["team"], responses=ERROR_RESPONSES)


def own_team(team: Team) -> OwnTeamRead:
    return OwnTeamRead(
        id=team.id,
        name=team.name,
        webhook_secret=team.webhook_secret,
        previous_secret_expires_at=team.previous_secret_expires_at,
        created_at=team.created_at,
    )


@router.get("/team", response_model=OwnTeamRead)
async def get_own_team(read: ReadAsTeam) -> Response:
    """The caller's team and its webhook signing secret."""
    return await read(lambda session, team: as_json(own_team(team)))


@router.post("/team/webhook-secret/rotate", response_model=OwnTeamRead)
def rotate_webhook_secret(
    session: SessionDep, settings: SettingsDep, team: CurrentTeam
) -> OwnTeamRead:
    """A new webhook secret. For `GRAFT_WEBHOOK_SECRET_GRACE_SECONDS` (24 h by default)
    deliveries carry a signature with each secret, so a receiver that still has the old
    one keeps verifying them while it switches."""
    return own_team(service.rotate_webhook_secret(session, settings, team.id))


@router.get("/usage", response_model=UsageRead)
async def usage(read: ReadAsTeam, settings: SettingsDep) -> Response:
    """The team's usage against each of its quotas."""

    def answer(session: Session, team: Team) -> Response:
        found = quotas.report(session, settings, team).as_dict()
        body = UsageRead(team_id=team.id, quotas={k: QuotaUsage(**v) for k, v in found.items()})
        return as_json(body)

    return await read(answer)
