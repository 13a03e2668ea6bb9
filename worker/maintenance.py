"""The reaper and the dispatcher: a worker-side loop that keeps the queue honest.

- reaper: a running job whose lease expired (its worker died) goes back to the queue,
  or ends `too_many_attempts` once it used GRAFT_MAX_ATTEMPTS;
- dispatcher: a queued job that no worker claimed for a while (say the broker was down
  when it was created) is sent to the broker again. Duplicates are harmless: only one
  claim can win;
- searches: every running model search is advanced (app/services/searches.py), so one
  whose last worker died between ending a trial and starting the next goes on.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import timedelta

from app.config import Settings, get_settings
from app.db.base import utcnow
from app.db.session import in_transaction, session_scope
from app.queue import enqueue_ingest
from app.repositories.datasets import DatasetRepository
from app.services import job_runs, searches

log = logging.getLogger(__name__)


def reap(settings: Settings) -> list[str]:
    """Re-queue or fail jobs whose lease expired; returns the ids re-queued."""
    return in_transaction(job_runs.reap, max_attempts=settings.max_attempts)


def redispatch(settings: Settings) -> list[str]:
    """Send again the queued jobs that nobody claimed within redispatch_after_seconds."""
    return in_transaction(job_runs.redispatch, older_than_seconds=settings.redispatch_after_seconds)


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
        # After the reaper: a trial that gave up is told, and its slot filled.
        searches.advance_all()
        redispatch_ingests(settings)
        sweep_temporary_files(settings)
    except Exception:
        log.exception("maintenance pass failed; will try again")


class MaintenanceLoop(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="graft-maintenance", daemon=True)
        self.interval = interval
        # Not `_stop`: threading.Thread has a method of that name, which join() calls.
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            run_once()

    def stop(self) -> None:
        self._stopping.set()
