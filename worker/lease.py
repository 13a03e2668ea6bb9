"""The heartbeat: a thread that renews a job's lease and relays cancel requests.

The training loop only looks at two flags between steps; all SQL stays here.
"""

from __future__ import annotations

import logging
import threading

from app.db.session import session_scope
from app.repositories.jobs import JobRepository

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, job_id: str, owner: str, lease_seconds: float, interval: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id = job_id
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.cancelled = threading.Event()
        self.lease_lost = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                with session_scope() as session:
                    repo = JobRepository(session)
                    held = repo.renew_lease(self.job_id, self.owner, self.lease_seconds)
                    cancel = repo.cancel_requested(self.job_id)
                failures = 0
            except Exception:
                # A short database outage is survivable while the lease still runs.
                failures += 1
                log.warning("heartbeat of %s failed (%d in a row)", self.job_id, failures)
                if failures * self.interval >= self.lease_seconds:
                    self.lease_lost.set()
                continue
            if not held:
                self.lease_lost.set()
            if cancel:
                self.cancelled.set()

    def stop(self) -> None:
        self._stop.set()
        self.join(timeout=self.interval + 5)
