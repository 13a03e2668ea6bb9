"""The reaper and the dispatcher: a worker-side loop that keeps the queue honest.

- reaper: a running job whose lease expired (its worker died) goes back to the queue,
  or ends `too_many_attempts` once it used GRAFT_MAX_ATTEMPTS;
- dispatcher: a queued job that no worker claimed for a while (say the broker was down
  when it was created) is sent to the broker again. Duplicates are harmless: only one
  claim can win.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import timedelta

from app.config import Settings, get_settings
from app.db.base import utcnow
from app.db.session import session_scope
from app.queue import enqueue_ingest, enqueue_job
from app.repositories.datasets import DatasetRepository
from app.repositories.jobs import JobRepository
from app.services.events import record_event
from app.services.jobs import dispatch_job, fail_exhausted

log = logging.getLogger(__name__)


def reap(settings: Settings) -> list[str]:
    """Re-queue or fail jobs whose lease expired; returns the ids re-queued."""
    now = utcnow()
    requeued: list[str] = []
    with session_scope() as session:
        repo = JobRepository(session)
        for job in repo.expired_leases(now):
            if job.attempt >= settings.max_attempts:
                fail_exhausted(session, job, settings.max_attempts)
            elif repo.requeue_expired(job.id, now):
                record_event(
                    repo.session,
                    job.id,
                    "job.requeued",
                    {"reason": "lease_expired", "attempt": job.attempt},
                )
                requeued.append(job.id)
    for job_id in requeued:
        dispatch_job(job_id)
    return requeued


def redispatch(settings: Settings) -> list[str]:
    """Send again the queued jobs that nobody claimed within redispatch_after_seconds."""
    now = utcnow()
    with session_scope() as session:
        stale = [
            j.id
            for j in JobRepository(session).stale_queued(
                now - timedelta(seconds=settings.redispatch_after_seconds)
            )
        ]
    sent = [job_id for job_id in stale if enqueue_job(job_id)]
    if sent:
        with session_scope() as session:
            repo = JobRepository(session)
            for job_id in sent:
                repo.mark_dispatched(job_id, now)
    return sent


def redispatch_ingests(settings: Settings) -> list[str]:
    """Send again the large uploads whose ingestion never started (broker was down)."""
    before = utcnow() - timedelta(seconds=settings.redispatch_after_seconds)
    with session_scope() as session:
        waiting = [d.id for d in DatasetRepository(session).processing_since(before)]
    return [dataset_id for dataset_id in waiting if enqueue_ingest(dataset_id)]


def sweep_temporary_files(settings: Settings, older_than: float = 3600.0) -> int:
    """Remove what a process killed mid-write left behind (ingestion temp folders)."""
    root = settings.resolved_data_dir / "datasets"
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for path in root.glob(".*.tmp"):
        if path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def run_once(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    try:
        reap(settings)
        redispatch(settings)
        redispatch_ingests(settings)
        sweep_temporary_files(settings)
    except Exception:
        log.exception("maintenance pass failed; will try again")


class MaintenanceLoop(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="graft-maintenance", daemon=True)
        self.interval = interval
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            run_once()

    def stop(self) -> None:
        self._stop.set()
