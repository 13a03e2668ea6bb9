"""Teams and their keys (admin key only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import AdminDep, SessionDep
from app.db.models import ApiKey, Team
from app.schemas.common import ERROR_RESPONSES, ObjectId
from app.schemas.teams import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    TeamCreate,
    TeamRead,
    TeamUpdate,
)
from app.services import teams as service

router = APIRouter(prefix="/v1/teams", tags=["teams"], responses=ERROR_RESPONSES)


def team_read(team: Team) -> TeamRead:
    return TeamRead(
        id=team.id, name=team.name, quotas=team.quotas or {}, created_at=team.created_at
    )


def key_read(row: ApiKey) -> ApiKeyRead:
    return ApiKeyRead(
        id=row.id,
        team_id=row.team_id,
        name=row.name,
        prefix=row.prefix,
        scopes=service.key_scopes(row),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TeamRead)
def create_team(body: TeamCreate, session: SessionDep, _: AdminDep) -> TeamRead:
    """Create a team, optionally with its own quotas."""
    quotas = body.quotas.model_dump(exclude_none=True) if body.quotas else None
    return team_read(service.create_team(session, body.name, quotas))


@router.get("/{team_id}", response_model=TeamRead)
def get_team(team_id: ObjectId, session: SessionDep, _: AdminDep) -> TeamRead:
    return team_read(service.get_team(session, team_id))


@router.patch("/{team_id}", response_model=TeamRead)
def update_team(team_id: ObjectId, body: TeamUpdate, session: SessionDep, _: AdminDep) -> TeamRead:
    """Rename a team or change its quotas (a quota set to null returns to the default)."""
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None
    return team_read(service.update_team(session, team_id, name=body.name, quotas=quotas))


@router.post("/{team_id}/keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_key(
    team_id: ObjectId, session: SessionDep, _: AdminDep, body: ApiKeyCreate | None = None
) -> ApiKeyCreated:
    """Create an API key for a team. The key is shown only here."""
    body = body or ApiKeyCreate()
    row, key = service.create_key(
        session, team_id, name=body.name, scopes=list(body.scopes), expires_at=body.expires_at
    )
    return ApiKeyCreated(**key_read(row).model_dump(), key=key)


@router.get("/{team_id}/keys", response_model=list[ApiKeyRead])
def list_keys(team_id: ObjectId, session: SessionDep, _: AdminDep) -> list[ApiKeyRead]:
    """The team's keys, revoked ones included; never their secrets."""
    return [key_read(k) for k in service.list_keys(session, team_id)]


@router.delete("/{team_id}/keys/{key_id}", response_model=ApiKeyRead)
def revoke_key(team_id: ObjectId, key_id: ObjectId, session: SessionDep, _: AdminDep) -> ApiKeyRead:
    """Revoke a key: the next request with it, on any API process, answers 401."""
    return key_read(service.revoke_key(session, team_id, key_id))
