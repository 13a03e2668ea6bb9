"""Recording what happens to a job: an event row, and a webhook outbox row with it.

Both are written in the caller's transaction, so a webhook goes out if and only if
the state change it announces committed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, WebhookDelivery
from app.repositories.jobs import JobRepository
from app.repositories.webhooks import WebhookRepository

WEBHOOK_EVENTS = frozenset(
    {"job.running", "job.progress", "job.succeeded", "job.failed", "job.cancelled"}
)


def record_event(
    session: Session, job_id: str, type_: str, data: dict[str, Any] | None = None
) -> JobEvent:
    jobs = JobRepository(session)
    event = jobs.add_event(job_id, type_, data)
    if type_ in WEBHOOK_EVENTS:
        job = jobs.get(job_id)
        url = (job.spec or {}).get("webhook_url") if job else None
        if job is not None and url:
            WebhookRepository(session).add(
                WebhookDelivery(
                    job_id=job_id,
                    event_id=event.id,
                    event_type=type_,
                    url=str(url),
                    payload=webhook_payload(job, event),
                    status="pending",
                    attempts=0,
                    next_attempt_at=event.created_at,
                    created_at=event.created_at,
                )
            )
    return event


def event_key(job_id: str, seq: int) -> str:
    """A webhook event's id, unique across jobs: `evt_<job id's suffix>_<number>`."""
    return f"evt_{job_id.removeprefix('job_')}_{seq}"


def webhook_payload(job: Job, event: JobEvent) -> dict[str, Any]:
    return {
        "id": event_key(job.id, event.seq),
        "type": event.type,
        "created_at": event.created_at.isoformat(),
        "job": {"id": job.id, "status": job.status, "attempt": job.attempt},
        "data": event.data,
    }
