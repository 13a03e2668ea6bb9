"""The job lifecycle: every state transition of a job after it was created.

    queued ──claim──▶ running ──succeed──▶ succeeded
      ▲                │ ├──fail────────▶ failed
      │                │ ├──cancelled───▶ cancelled   (the loop saw cancel_requested)
      └──requeue───────┘ └──(lease lost: another worker owns it; nothing is written)
      │                │ ├──pruned──────▶ pruned      (a search's pruner stopped the trial)
      └──reap (lease expired) ... give_up ──▶ failed (too_many_attempts)
    queued ──cancel──▶ cancelled;  running ──cancel──▶ cancel_requested

Each function is one transaction: it takes the caller's session (session_scope() or
the API's request session commits it) and does its SQL through JobRepository. Writes
on behalf of a worker go through its Lease: they only land while that worker still
holds the job, so a worker that lost its lease cannot overwrite its successor.
Messages to the broker are sent only after the commit (after_commit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, Model
from app.db.session import after_commit, session_scope
from app.errors import Conflict
from app.queue import devices_of, enqueue_job
from app.repositories.jobs import TERMINAL_STATUSES, JobRepository
from app.repositories.models import ModelRepository
from app.schemas.evaluations import EvaluationSpec
from app.schemas.jobs import JobCreate
from app.services import quotas
from app.services.events import record_event
from app.storage import artifacts_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """What a worker holds while it runs a job; the attempt is its fencing token."""

    job_id: str
    owner: str
    attempt: int

    @property
    def model_id(self) -> str:
        # A stale worker that still reaches publishing writes a directory nobody will
        # point at, never the one that was published.
        return f"mdl_{self.job_id.removeprefix('job_')}{self.attempt:02x}"


@dataclass(frozen=True)
class BaseModelRef:
    """The model a job continues from (base_model = mdl_…)."""

    id: str
    architecture: str
    classes: list[str]
    kind: str = "model"  # or "backbone": no head, the job builds a fresh one


@dataclass(frozen=True)
class ClaimedJob:
    lease: Lease
    team_id: str
    spec: JobCreate  # parsed once, here, into the model the API validated
    base: BaseModelRef | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    # A trial of a model search: the search and the trial's number in its study.
    search_id: str | None = None
    trial_number: int | None = None

    @property
    def architecture(self) -> str:
        return self.base.architecture if self.base else self.spec.base_model


@dataclass(frozen=True)
class ClaimedEvaluation:
    lease: Lease
    team_id: str
    spec: EvaluationSpec
    model: BaseModelRef  # the model scored
    image_size: int  # its preprocessing's input size


Claimed = ClaimedJob | ClaimedEvaluation


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class ModelRecord:
    """The model row a successful job publishes (its files are already in place)."""

    name: str
    architecture: str
    classes: list[str]
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: list[dict[str, Any]]
    recommended_artifact: str


# ---------------------------------------------------------------- queueing


def dispatch(job_id: str, devices: int = 1) -> None:
    """Send a committed job to the broker (to the queue of its device count); if it is
    down, leave it to redispatch()."""
    if not enqueue_job(job_id, devices):
        log.warning("job %s stays queued for the dispatcher: broker unreachable", job_id)
        with session_scope() as session:
            JobRepository(session).mark_undispatched(job_id)


def dispatch_after_commit(session: Session, job: Job) -> None:
    # Only after the commit: a worker must never receive an id it cannot read.
    after_commit(session, partial(dispatch, job.id, devices_of(job.spec)))


def redispatch(session: Session, *, older_than_seconds: float) -> list[str]:
    """Send again the queued jobs nobody claimed for a while (the broker was down, or
    lost the message). Duplicates are harmless: only one claim can win."""
    now = utcnow()
    repo = JobRepository(session)
    stale = repo.stale_queued(now - timedelta(seconds=older_than_seconds))
    for job in stale:
        repo.mark_dispatched(job.id, now)
        dispatch_after_commit(session, job)
    return [job.id for job in stale]


# ---------------------------------------------------------------- claiming


def claim(
    session: Session,
    job_id: str,
    owner: str,
    *,
    lease_seconds: float,
    max_attempts: int,
    running_jobs_quota: int | None = None,
) -> Claimed | None:
    """Take the job (or evaluation) for `owner`, or None: someone else has it, it ended, it used up
    its attempts (then it fails here, too_many_attempts), or its team already runs
    as many jobs as its running_jobs quota (the default given here, or the team's own):
    then it stays queued and the dispatcher sends it again at its next pass."""
    repo = JobRepository(session)
    queued = repo.get(job_id)
    if (
        running_jobs_quota is not None
        and queued is not None
        and queued.status == "queued"
        and not quotas.may_start(session, queued.team_id, running_jobs_quota)
    ):
        repo.mark_undispatched(job_id)
        return None
    if not repo.claim(job_id, owner, lease_seconds, max_attempts):
        job = repo.get(job_id)
        if job is not None and job.attempt >= max_attempts:
            _give_up(session, job, max_attempts)
        return None
    job = repo.get(job_id)
    assert job is not None
    lease = Lease(job_id, owner, job.attempt)
    claimed = _claimed(session, lease, job)
    if claimed is None:
        return None
    record_event(
        session,
        job_id,
        "job.running",
        {
            "attempt": job.attempt,
            "worker": owner,
            "last_checkpoint_epoch": job.last_checkpoint_epoch,
        },
    )
    return claimed


def _claimed(session: Session, lease: Lease, job: Job) -> Claimed | None:
    """The typed work of a claimed row; None (and the job failed) when it cannot run."""
    spec_type = EvaluationSpec if job.kind == "evaluation" else JobCreate
    try:
        spec = spec_type.model_validate(job.spec)
    except ValidationError as exc:
        # The API validated it; only a row written by hand or by another version gets here.
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        message = f"The stored job spec is not valid: {where}: {problem['msg']}."
        _end(session, lease, "failed", {"code": "invalid_spec", "message": message})
        return None
    if isinstance(spec, EvaluationSpec):
        row = _model_or_fail(session, lease, spec.model_id, "model")
        if row is None:
            return None
        image_size = int(row.preprocessing["image_size"])
        return ClaimedEvaluation(lease, job.team_id, spec, _ref(row), image_size)
    base = None
    if spec.base_model.startswith("mdl_"):
        row = _model_or_fail(session, lease, spec.base_model, "base_model")
        if row is None:
            return None
        base = _ref(row)
    return ClaimedJob(
        lease,
        job.team_id,
        spec,
        base,
        list(job.metrics or []),
        search_id=job.search_id,
        trial_number=job.trial_number,
    )


def _model_or_fail(session: Session, lease: Lease, model_id: str, what: str) -> Model | None:
    row = ModelRepository(session).get(model_id)
    if row is None:
        message = f"The {what.replace('_', ' ')} {model_id} no longer exists."
        _end(session, lease, "failed", {"code": f"{what}_not_found", "message": message})
    return row


def _ref(row: Model) -> BaseModelRef:
    return BaseModelRef(row.id, row.architecture, list(row.classes), row.kind)


def heartbeat(session: Session, lease: Lease, lease_seconds: float) -> LeaseState:
    """Renew the lease; say whether it is still held and whether a cancel was asked."""
    repo = JobRepository(session)
    held = repo.renew_lease(lease.job_id, lease.owner, lease_seconds)
    return LeaseState(held=held, cancel_requested=repo.cancel_requested(lease.job_id))


# ---------------------------------------------------------------- while running


def report_progress(session: Session, lease: Lease, progress: dict[str, Any]) -> bool:
    return JobRepository(session).update_held(lease.job_id, lease.owner, progress=progress)


def epoch_done(
    session: Session, lease: Lease, metrics: list[dict[str, Any]], epoch: dict[str, Any]
) -> bool:
    """An epoch ended and its checkpoint is on disk: its metrics, and the resume point."""
    repo = JobRepository(session)
    held = repo.update_held(
        lease.job_id, lease.owner, metrics=metrics, last_checkpoint_epoch=epoch["epoch"]
    )
    if held:
        record_event(session, lease.job_id, "job.progress", {"metrics": epoch})
    return held


def note(session: Session, lease: Lease, kind: str, payload: dict[str, Any]) -> bool:
    """An event of the running job (precision chosen, resumed, adapted, …)."""
    held = JobRepository(session).holds(lease.job_id, lease.owner)
    if held:
        record_event(session, lease.job_id, kind, payload)
    return held


# ---------------------------------------------------------------- endings


def succeed(
    session: Session, lease: Lease, model: ModelRecord | None, report: dict[str, Any]
) -> bool:
    """The job succeeded, with the model it trained (none for an evaluation: its report
    is its result); False, and nothing written, if the lease was lost."""
    done = JobRepository(session).update_held(
        lease.job_id,
        lease.owner,
        status="succeeded",
        finished_at=utcnow(),
        result_model_id=lease.model_id if model else None,
        report=report,
        lease_owner=None,
        lease_expires_at=None,
    )
    if not done:
        return False
    if model is None:
        record_event(session, lease.job_id, "job.succeeded", {})
        return True
    job = JobRepository(session).get(lease.job_id)
    assert job is not None
    ModelRepository(session).add(
        Model(
            id=lease.model_id,
            team_id=job.team_id,
            job_id=lease.job_id,
            source="job",
            created_at=utcnow(),
            size_bytes=artifacts_size(model.artifacts),
            **vars(model),
        )
    )
    record_event(
        session,
        lease.job_id,
        "job.succeeded",
        {"model_id": lease.model_id, "best_epoch": report.get("best_epoch")},
    )
    return True


def fail(session: Session, lease: Lease, error: dict[str, str]) -> bool:
    """The job failed for a reason another attempt would not change."""
    return _end(session, lease, "failed", error)


def stopped_by_cancel(session: Session, lease: Lease) -> bool:
    """The loop saw the cancel request and stopped."""
    return _end(session, lease, "cancelled", None)


def pruned(session: Session, lease: Lease, detail: dict[str, Any]) -> bool:
    """The search's pruner stopped the trial after an epoch; its metrics stay."""
    return _end(session, lease, "pruned", None, detail)


def requeue(
    session: Session, lease: Lease, event: str, payload: dict[str, Any], *, counts: bool
) -> bool:
    """Hand the job back to the queue: after SIGTERM (counts=False: a pre-emption is not
    the job's fault and uses up no attempt) or a transient failure (counts=True)."""
    values: dict[str, Any] = {
        "status": "queued",
        "lease_owner": None,
        "lease_expires_at": None,
        "dispatched_at": utcnow(),
    }
    if not counts:
        values["attempt"] = max(lease.attempt - 1, 0)
    repo = JobRepository(session)
    if not repo.update_held(lease.job_id, lease.owner, **values):
        return False
    record_event(session, lease.job_id, event, payload)
    job = repo.get(lease.job_id)
    assert job is not None
    dispatch_after_commit(session, job)
    return True


def reap(session: Session, *, max_attempts: int) -> list[str]:
    """Jobs whose lease expired (their worker died) go back to the queue, or fail once
    they used max_attempts; returns the ids re-queued."""
    now = utcnow()
    repo = JobRepository(session)
    requeued: list[str] = []
    for job in repo.expired_leases(now):
        if job.attempt >= max_attempts:
            _give_up(session, job, max_attempts)
        elif repo.requeue_expired(job.id, now):
            record_event(
                session, job.id, "job.requeued", {"reason": "lease_expired", "attempt": job.attempt}
            )
            dispatch_after_commit(session, job)
            requeued.append(job.id)
    return requeued


def cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    repo = JobRepository(session)
    if repo.cancel_if_queued(job.id):
        record_event(session, job.id, "job.cancelled", {"while": "queued"})
    elif repo.request_cancel_if_running(job.id):
        record_event(session, job.id, "job.cancel_requested", {})
    else:
        current = repo.get(job.id)
        if current is not None and current.status in TERMINAL_STATUSES:
            what = "Evaluation" if job.kind == "evaluation" else "Job"
            raise Conflict(
                f"{what} {job.id} already ended ({current.status}).",
                code="job_finished",
                param="job_id",
            )
    refreshed = repo.get(job.id)
    assert refreshed is not None
    return refreshed


def _end(
    session: Session,
    lease: Lease,
    status: str,
    error: dict[str, str] | None,
    detail: dict[str, Any] | None = None,
) -> bool:
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if error is not None:
        values["error"] = error
    if not JobRepository(session).update_held(lease.job_id, lease.owner, **values):
        return False
    record_event(session, lease.job_id, f"job.{status}", detail or error or {})
    return True


def _give_up(session: Session, job: Job, max_attempts: int) -> bool:
    error = {
        "code": "too_many_attempts",
        "message": f"The job was attempted {job.attempt} times without finishing "
        f"(GRAFT_MAX_ATTEMPTS={max_attempts}).",
    }
    if not JobRepository(session).give_up(job.id, utcnow(), error):
        return False
    record_event(session, job.id, "job.failed", error)
    return True
