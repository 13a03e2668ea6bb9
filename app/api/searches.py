"""Model searches: trials are ordinary jobs (search_id), steered by an Optuna study."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from app.api.deps import (
    CurrentTeam,
    Cursor,
    IdempotencyKeyHeader,
    Limit,
    ReadAsTeam,
    SessionDep,
)
from app.api.responses import as_json, replayed
from app.db.models import Team
from app.repositories.searches import SearchRepository
from app.schemas.common import ERROR_RESPONSES, ObjectId, PageOf
from app.schemas.searches import SearchCreate, SearchRead
from app.services import searches as service

router = APIRouter(prefix="/v1/searches", tags=["searches"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SearchRead,
    responses={200: {"model": SearchRead, "description": "Replay of an Idempotency-Key"}},
)
def create_search(
    body: SearchCreate,
    session: SessionDep,
    team: CurrentTeam,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SearchRead:
    """Start a model search: its first trials (up to budget.max_parallel) are queued as
    jobs at once; each trial that ends lets the next one start."""
    search, created = service.create_search_idempotent(session, team, body, idempotency_key)
    replayed(response, created)
    return service.read(session, search)


@router.get("", response_model=PageOf[SearchRead])
async def list_searches(read: ReadAsTeam, limit: Limit = 20, cursor: Cursor = None) -> Response:
    def page(session: Session, team: Team) -> PageOf[SearchRead]:
        found = SearchRepository(session).list_for_team(team.id, limit=limit, cursor=cursor)
        return PageOf[SearchRead](
            data=[service.read(session, s) for s in found.items],
            has_more=found.has_more,
            next_cursor=found.next_cursor,
        )

    return as_json(await read(page))


@router.get("/{search_id}", response_model=SearchRead)
async def get_search(search_id: ObjectId, read: ReadAsTeam) -> Response:
    """The search with its leaderboard (every trial, from its job), the Pareto front of
    objective against latency and size, and the recommended model."""

    def one(session: Session, team: Team) -> SearchRead:
        return service.read(session, service.get_search(session, team, search_id))

    return as_json(await read(one))


@router.post("/{search_id}/cancel", response_model=SearchRead)
def cancel_search(search_id: ObjectId, session: SessionDep, team: CurrentTeam) -> SearchRead:
    """Cancel the search: no trial starts any more, queued trials are cancelled and
    running ones stop at their next step (409 if it already ended)."""
    return service.read(session, service.cancel_search(session, team, search_id))
