"""Use cases for evaluations: a model scored on a labelled dataset, run by a worker.

An evaluation is a row of the jobs table of kind "evaluation" (id `ev_…`): it is
queued, claimed, leased, cancelled and reaped by the one job lifecycle
(app/services/job_runs.py); worker/evaluation.py does the scoring.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import Job, Model, Team
from app.errors import Conflict, InvalidInput, NotFound
from app.repositories.base import Page
from app.repositories.jobs import JobRepository
from app.schemas.evaluations import EvaluationCreate, EvaluationSpec
from app.services import jobs
from app.services.idempotency import idempotent, request_hash
from app.services.models import artifact_path, get_model
from app.storage import Storage

KIND = "evaluation"


def create_evaluation(
    session: Session,
    storage: Storage,
    team: Team,
    model_id: str,
    body: EvaluationCreate,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Queue an evaluation (once per Idempotency-Key); returns it and whether it is new."""
    spec = EvaluationSpec(model_id=model_id, **body.model_dump())
    return idempotent(
        session,
        team_id=team.id,
        scope="evaluations.create",
        key=idempotency_key,
        fingerprint=request_hash(spec.model_dump(mode="json")),
        load=lambda ev_id: jobs.of_kind(JobRepository(session).get_for_team(team.id, ev_id), KIND),
        create=lambda: _create(session, storage, team, spec),
        id_of=lambda job: job.id,
    )


def _create(session: Session, storage: Storage, team: Team, spec: EvaluationSpec) -> Job:
    model = get_model(session, team, spec.model_id)
    _check_model(storage, model, spec.artifact)
    dataset = jobs.ready_dataset(session, team, spec.dataset_id, kind="labeled", param="dataset_id")
    theirs = {c["name"] for c in dataset.classes}
    mine = set(model.classes)
    if theirs != mine:
        parts = []
        if mine - theirs:
            parts.append(f"missing from the dataset: {', '.join(sorted(mine - theirs))}")
        if theirs - mine:
            parts.append(f"not classes of the model: {', '.join(sorted(theirs - mine))}")
        raise InvalidInput(
            f"Dataset {dataset.id} must have exactly the classes of model {model.id} "
            f"(matched by name); {'; '.join(parts)}.",
            code="class_mismatch",
            param="dataset_id",
        )
    return jobs.enqueue(
        session,
        team,
        kind=KIND,
        dataset_id=dataset.id,
        spec=spec.model_dump(mode="json"),
        queued={"architecture": model.architecture, "model_id": model.id},
    )


def _check_model(storage: Storage, model: Model, artifact: str) -> None:
    if model.kind == "backbone":
        raise InvalidInput(
            f"Model {model.id} is a backbone without a classifier head: it predicts no "
            "classes. Train a job from it (base_model) and evaluate that job's model.",
            code="model_has_no_head",
            param="model_id",
        )
    try:
        path = artifact_path(storage, model, artifact)
    except NotFound as exc:
        # Here the artifact is a field of the body: a 422 that names it.
        raise InvalidInput(exc.message, code=exc.code, param="artifact") from exc
    if not path.is_file():
        raise Conflict(
            f"The files of model {model.id} are gone from the store ({path.name}); "
            "it cannot be evaluated.",
            code="model_files_missing",
            param="model_id",
        )


def get_evaluation(session: Session, team: Team, evaluation_id: str) -> Job:
    return jobs.get_job(session, team, evaluation_id, kind=KIND)


def list_evaluations(
    session: Session, team: Team, *, status: str | None, limit: int, cursor: str | None
) -> Page[Job]:
    return jobs.list_jobs(session, team, status=status, limit=limit, cursor=cursor, kind=KIND)


def cancel_evaluation(session: Session, team: Team, evaluation_id: str) -> Job:
    return jobs.cancel_job(session, team, evaluation_id, kind=KIND)
