"""The heartbeat: a thread that renews a job's lease and relays cancel requests.

The training loop only looks at two flags between steps; the transitions are the
lifecycle service's (app/services/job_runs.py).
"""

from __future__ import annotations

import logging
import threading

from app.db.session import in_transaction
from app.services import job_runs

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, lease: job_runs.Lease, lease_seconds: float, interval: float) -> None:
        super().__init__(name=f"heartbeat-{lease.job_id}", daemon=True)
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.cancelled = threading.Event()
        self.lease_lost = threading.Event()
        # Not `_stop`: threading.Thread has a method of that name, which join() calls.
        self._stopping = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self._stopping.wait(self.interval):
            try:
                state = in_transaction(job_runs.heartbeat, self.lease, self.lease_seconds)
                failures = 0
            except Exception:
                # A short database outage is survivable while the lease still runs.
                failures += 1
                log.warning("heartbeat of %s failed (%d in a row)", self.lease.job_id, failures)
                if failures * self.interval >= self.lease_seconds:
                    self.lease_lost.set()
                continue
            if not state.held:
                self.lease_lost.set()
            if state.cancel_requested:
                self.cancelled.set()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=self.interval + 5)
