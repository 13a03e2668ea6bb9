"""Evaluations: score a model on a labelled dataset (POST under its model), read them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
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
from app.api.responses import as_json, replayed, run_fields
from app.db.models import Job, Team
from app.errors import found
from app.schemas.common import ERROR_RESPONSES, ObjectId, PageOf
from app.schemas.evaluations import EvaluationCreate, EvaluationRead
from app.schemas.jobs import JobStatus
from app.services import evaluations as service
from app.services.jobs import of_kind

router = APIRouter(tags=["evaluations"], responses=ERROR_RESPONSES)


def to_read(job: Job) -> EvaluationRead:
    spec = job.spec
    return EvaluationRead.model_validate(
        {
            **run_fields(job),
            "model_id": spec["model_id"],
            "dataset_id": spec["dataset_id"],
            "artifact": spec.get("artifact", "safetensors"),
            "result": job.report if job.status == "succeeded" else None,
        }
    )


@router.post(
    "/v1/models/{model_id}/evaluations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvaluationRead,
    responses={200: {"model": EvaluationRead, "description": "Replay of an Idempotency-Key"}},
)
def create_evaluation(
    model_id: ObjectId,
    body: EvaluationCreate,
    session: SessionDep,
    storage: StorageDep,
    team: CurrentTeam,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> EvaluationRead:
    """Score the model on every image of a labelled dataset with the same classes; a
    worker runs it (poll the `Location`). The result: accuracy, balanced accuracy, macro
    F1, per-class precision/recall/F1, the confusion matrix, the misclassified images."""
    job, created = service.create_evaluation(
        session, storage, team, model_id, body, idempotency_key
    )
    replayed(response, created)
    response.headers["Location"] = f"/v1/evaluations/{job.id}"
    return to_read(job)


@router.get("/v1/evaluations", response_model=PageOf[EvaluationRead])
async def list_evaluations(
    read: ReadAsTeam,
    status: Annotated[JobStatus | None, Query(description="Only those in this status")] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    def answer(session: Session, team: Team) -> Response:
        page = service.list_evaluations(session, team, status=status, limit=limit, cursor=cursor)
        return as_json(
            PageOf[EvaluationRead](
                data=[to_read(j) for j in page.items],
                has_more=page.has_more,
                next_cursor=page.next_cursor,
            )
        )

    return await read(answer)


@router.get("/v1/evaluations/{evaluation_id}", response_model=EvaluationRead)
async def get_evaluation(evaluation_id: ObjectId, read: ReadAsTeam) -> Response:
    def answer(session: Session, team: Team, job: Job | None) -> Response:
        evaluation = found(of_kind(job, service.KIND), "evaluation", evaluation_id, "evaluation_id")
        return as_json(to_read(evaluation))

    return await read.get(Job, evaluation_id, answer)


@router.post("/v1/evaluations/{evaluation_id}/cancel", response_model=EvaluationRead)
def cancel_evaluation(
    evaluation_id: ObjectId, session: SessionDep, team: CurrentTeam
) -> EvaluationRead:
    """Cancel an evaluation: a queued one never starts, a running one stops at its next
    batch."""
    return to_read(service.cancel_evaluation(session, team, evaluation_id))
