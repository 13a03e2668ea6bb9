"""The webhook sender: a thread in each worker process that drains the outbox.

Deliveries are posted outside any job's path, so a slow or dead receiver delays only
other deliveries, never training. Every attempt is recorded as a `webhook.delivery`
event on the job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta

import httpx

from app.config import Settings, get_settings
from app.db.base import utcnow
from app.db.session import session_scope
from app.repositories.jobs import JobRepository
from app.repositories.teams import TeamRepository
from app.repositories.webhooks import WebhookRepository
from app.services.events import record_event
from app.services.webhooks import sign

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 600.0


def send_due(settings: Settings, client: httpx.Client) -> int:
    """Send every due delivery once; returns how many were attempted."""
    now = utcnow()
    lease = settings.webhook_timeout_seconds * 3 + 5
    with session_scope() as session:
        repo = WebhookRepository(session)
        taken = [d.id for d in repo.due(now) if repo.lease(d.id, now, lease)]
    for delivery_id in taken:
        _attempt(settings, client, delivery_id)
    return len(taken)


def _attempt(settings: Settings, client: httpx.Client, delivery_id: int) -> None:
    with session_scope() as session:
        delivery = WebhookRepository(session).get(delivery_id)
        assert delivery is not None
        job = JobRepository(session).get(delivery.job_id)
        team = TeamRepository(session).get(job.team_id) if job else None
        secret = team.webhook_secret if team else ""
        url, payload, event_type = delivery.url, delivery.payload, delivery.event_type
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Graft-Webhooks/1",
        "Graft-Event": event_type,
        "Graft-Delivery": str(delivery_id),
        "Graft-Signature": sign(secret, int(time.time()), body),
    }
    status: int | None = None
    error: str | None = None
    try:
        response = client.post(url, content=body, headers=headers)
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    _record(settings, delivery_id, status, error)


def _record(settings: Settings, delivery_id: int, status: int | None, error: str | None) -> None:
    now = utcnow()
    with session_scope() as session:
        delivery = WebhookRepository(session).get(delivery_id)
        assert delivery is not None
        delivery.attempts += 1
        if error is None:
            delivery.status, delivery.delivered_at, outcome = "delivered", now, "delivered"
        elif delivery.attempts >= settings.webhook_max_attempts:
            delivery.status, outcome = "failed", "gave_up"
        else:
            delay = settings.webhook_backoff_seconds * 2 ** (delivery.attempts - 1)
            delivery.next_attempt_at = now + timedelta(seconds=min(delay, MAX_BACKOFF_SECONDS))
            outcome = "retrying"
        delivery.last_error = error
        record_event(
            session,
            delivery.job_id,
            "webhook.delivery",
            {
                "delivery_id": delivery.id,
                "event_type": delivery.event_type,
                "attempt": delivery.attempts,
                "status_code": status,
                "error": error,
                "outcome": outcome,
            },
        )
    if error:
        log.info("webhook %s: %s (%s)", delivery_id, error, outcome)


def _deliver_loop(stop: threading.Event, interval: float) -> None:
    settings = get_settings()
    with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client:
        while not stop.is_set():
            try:
                sent = send_due(settings, client)
            except Exception:
                log.exception("webhook sender pass failed; will try again")
                sent = 0
            if not sent:
                stop.wait(interval)


class WebhookSender(threading.Thread):
    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(name="graft-webhooks", daemon=True)
        self.interval = interval
        self._stop = threading.Event()

    def run(self) -> None:
        _deliver_loop(self._stop, self.interval)

    def stop(self) -> None:
        self._stop.set()
