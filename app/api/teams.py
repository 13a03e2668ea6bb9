from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import AdminDep, SessionDep
from app.schemas.common import ERROR_RESPONSES
from app.schemas.teams import ApiKeyCreated, TeamCreate, TeamRead
from app.services import teams as service

router = APIRouter(prefix="/v1/teams", tags=["teams"], responses=ERROR_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TeamRead)
def create_team(body: TeamCreate, session: SessionDep, _: AdminDep) -> TeamRead:
    """Create a team (admin key only)."""
    return TeamRead.model_validate(service.create_team(session, body.name))


@router.post("/{team_id}/keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_key(team_id: str, session: SessionDep, _: AdminDep) -> ApiKeyCreated:
    """Create an API key for a team (admin key only). The key is shown only here."""
    row, key = service.create_key(session, team_id)
    return ApiKeyCreated(id=row.id, team_id=row.team_id, key=key, created_at=row.created_at)
