"""SQL for jobs and their events.

Every state change that two processes could race on is one conditional UPDATE whose
WHERE clause states what must still be true; the row count says who won.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from app.db.base import utcnow
from app.db.models import Job, JobEvent
from app.repositories.base import TeamScopedRepository

# "pruned": a search's trial that its pruner stopped after an epoch (it keeps its metrics).
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled", "pruned")


class JobRepository(TeamScopedRepository[Job]):
    """get() re-reads the row (populate_existing): workers change jobs under the API.

    list_for_team(team_id, status=..., limit=..., cursor=...) filters by status when given.
    """

    model = Job
    populate_existing = True

    # -- claiming and leases -------------------------------------------------

    def claim(self, job_id: str, owner: str, lease_seconds: float, max_attempts: int) -> bool:
        """Take the job if it is queued, or running under an expired lease.

        One statement, so two workers that got the same message cannot both win.
        """
        now = utcnow()
        claimable = or_(
            and_(Job.status == "queued", Job.cancel_requested.is_(False)),
            and_(Job.status == "running", Job.lease_expires_at < now),
        )
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, claimable, Job.attempt < max_attempts)
            .values(
                status="running",
                attempt=Job.attempt + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                heartbeat_at=now,
                started_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def renew_lease(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        now = utcnow()
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def update_held(self, job_id: str, owner: str, **values: Any) -> bool:
        """Write to a running job only while `owner` still holds its lease."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def holds(self, job_id: str, owner: str) -> bool:
        """Whether `owner` still holds the running job's lease."""
        stmt = select(Job.id).where(
            Job.id == job_id, Job.lease_owner == owner, Job.status == "running"
        )
        return self.session.scalar(stmt) is not None

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    # -- cancellation --------------------------------------------------------

    def cancel_if_queued(self, job_id: str) -> bool:
        now = utcnow()
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def request_cancel_if_running(self, job_id: str) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    # -- reaper and dispatcher ----------------------------------------------

    def expired_leases(self, now: datetime) -> list[Job]:
        stmt = select(Job).where(Job.status == "running", Job.lease_expires_at < now)
        return list(self.session.scalars(stmt))

    def requeue_expired(self, job_id: str, now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", Job.lease_expires_at < now)
            .values(status="queued", lease_owner=None, lease_expires_at=None, dispatched_at=now)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def give_up(self, job_id: str, now: datetime, error: dict[str, Any]) -> bool:
        """Fail a job that used up its attempts, unless a worker holds a live lease."""
        result = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.status == "queued",
                    and_(Job.status == "running", Job.lease_expires_at < now),
                ),
            )
            .values(
                status="failed",
                error=error,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    def stale_queued(self, dispatched_before: datetime) -> list[Job]:
        stmt = select(Job).where(
            Job.status == "queued",
            Job.cancel_requested.is_(False),
            or_(Job.dispatched_at.is_(None), Job.dispatched_at < dispatched_before),
        )
        return list(self.session.scalars(stmt))

    def mark_undispatched(self, job_id: str) -> None:
        """The broker did not take the message: the dispatcher sends it at its next pass."""
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(dispatched_at=None)
            .execution_options(synchronize_session=False)
        )

    def mark_dispatched(self, job_id: str, now: datetime) -> None:
        self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )

    # -- searches ------------------------------------------------------------

    def for_search(self, search_id: str) -> list[Job]:
        """A search's trials, by trial number."""
        stmt = select(Job).where(Job.search_id == search_id).order_by(Job.trial_number)
        return list(self.session.scalars(stmt.execution_options(populate_existing=True)))

    # -- events --------------------------------------------------------------

    def add_event(self, job_id: str, type_: str, data: dict[str, Any] | None = None) -> JobEvent:
        # The job row's counter numbers the event: the UPDATE locks the row, so two
        # writers of one job's events (its worker, a cancel) take turns, never one number.
        seq = self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(event_count=Job.event_count + 1)
            .returning(Job.event_count)
            .execution_options(synchronize_session=False)
        ).scalar_one()
        event = JobEvent(job_id=job_id, seq=seq, type=type_, data=data or {}, created_at=utcnow())
        self.session.add(event)
        self.session.flush()
        return event

    def events(self, job_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        stmt = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
            .order_by(JobEvent.seq)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0))
