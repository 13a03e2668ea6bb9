from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import (
    CurrentTeam,
    Cursor,
    IdempotencyKeyHeader,
    Limit,
    ReadAsTeam,
    SessionDep,
    StorageDep,
)
from app.api.event_streams import hub
from app.api.responses import RUN_FIELDS, as_json, fields_of, replayed, run_fields
from app.db.models import Job, Team
from app.errors import found
from app.schemas.common import ERROR_RESPONSES, ObjectId, PageOf
from app.schemas.jobs import JobCreate, JobEventRead, JobRead, JobStatus
from app.services import jobs as service
from app.services.teams import ObjectQuery, PageQuery

# Event ids are 32-bit integers in the database; a larger `after` can match nothing.
MAX_EVENT_ID = 2**31 - 1

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


# What a job's JSON is built from: the poll reads these columns only.
JOB_FIELDS = (*RUN_FIELDS, "kind", "spec", "metrics", "report", "result_model_id", "search_id")


def _fields(job: Job | Mapping[str, Any]) -> dict[str, Any]:
    f = fields_of(job, JOB_FIELDS)
    return {
        **run_fields(f),
        "spec": f["spec"],
        "metrics": f["metrics"] or [],
        "report": f["report"],
        "result": {"model_id": f["result_model_id"]} if f["result_model_id"] else None,
        "search_id": f["search_id"],
    }


def to_read(job: Job | Mapping[str, Any]) -> JobRead:
    return JobRead.model_validate(_fields(job))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead,
    responses={200: {"model": JobRead, "description": "Replay of an Idempotency-Key"}},
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    team: CurrentTeam,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobRead:
    """Create a fine-tuning job; it is queued, then picked up by a worker."""
    job, created = service.create_job_idempotent(session, team, body, idempotency_key)
    replayed(response, created)
    return to_read(job)


@router.get("", response_model=PageOf[JobRead])
async def list_jobs(
    read: ReadAsTeam,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    filters = {"kind": "training", "status": status}
    page = await read.page(PageQuery(Job, JOB_FIELDS, filters, limit, cursor))
    # The page validated in one call, not a call per job (each has a fixed cost).
    answer = {"data": [_fields(j) for j in page.items], "has_more": page.has_more}
    return as_json(PageOf[JobRead].model_validate({**answer, "next_cursor": page.next_cursor}))


@router.get("/{job_id}", response_model=JobRead)
async def get_job(job_id: ObjectId, read: ReadAsTeam) -> Response:
    job = await read.columns(ObjectQuery(Job, job_id, JOB_FIELDS))
    if job is not None and job["kind"] != "training":
        job = None  # an evaluation's id reads as missing here
    return as_json(to_read(found(job, "job", job_id, "job_id")))


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: ObjectId, session: SessionDep, team: CurrentTeam) -> JobRead:
    """Cancel a job: a queued one never starts, a running one stops at its next step."""
    return to_read(service.cancel_job(session, team, job_id))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(
    job_id: ObjectId, session: SessionDep, storage: StorageDep, team: CurrentTeam
) -> Response:
    """Delete a finished job with its events and files (409 while it is queued or
    running). The model it produced is not deleted."""
    service.delete_job(session, storage, team, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{job_id}/events",
    response_model=list[JobEventRead],
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def list_events(
    job_id: ObjectId,
    read: ReadAsTeam,
    after: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="Only events with a larger id")
    ] = 0,
    accept: Annotated[str, Header(max_length=1000)] = "application/json",
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, le=MAX_EVENT_ID)
    ] = None,
) -> Any:
    """What happened to a job, oldest first; event ids count 1, 2, 3… within the job.
    With `Accept: text/event-stream`, a live Server-Sent Events stream that ends after
    the job's final event; reconnect with `Last-Event-ID` to resume."""
    if "text/event-stream" not in accept:

        def events(session: Session, team: Team) -> list[JobEventRead]:
            found = service.list_events(session, team, job_id, after_seq=after)
            return [JobEventRead.model_validate(e) for e in found]

        return await read(events)
    job = await read(lambda session, team: service.get_job(session, team, job_id))
    start = last_event_id if last_event_id is not None else after
    return StreamingResponse(
        hub.stream(job.id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
