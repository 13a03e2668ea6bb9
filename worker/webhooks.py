"""The webhook sender: a thread in each worker process that drains the outbox.

Deliveries are posted outside any job's path, so a slow or dead receiver delays only
other deliveries, never training. Every attempt is recorded as a `webhook.delivery`
event on the job, by app/services/webhooks.py: this module only posts.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx

from app.config import Settings, get_settings
from app.db.session import in_transaction
from app.services import webhooks

log = logging.getLogger(__name__)


def send_due(settings: Settings, client: httpx.Client) -> int:
    """Send every due delivery once; returns how many were attempted."""
    lease = settings.webhook_timeout_seconds * 3 + 5
    taken = in_transaction(webhooks.take_due, lease)
    for delivery in taken:
        _attempt(settings, client, delivery)
    return len(taken)


def _attempt(settings: Settings, client: httpx.Client, delivery: webhooks.Outgoing) -> None:
    body = json.dumps(delivery.payload, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Graft-Webhooks/1",
        "Graft-Event": delivery.event_type,
        "Graft-Delivery": str(delivery.id),
        "Graft-Signature": webhooks.sign(delivery.secret, int(time.time()), body),
    }
    status: int | None = None
    error: str | None = None
    try:
        response = client.post(delivery.url, content=body, headers=headers)
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    outcome = in_transaction(
        webhooks.record_attempt,
        delivery.id,
        status,
        error,
        max_attempts=settings.webhook_max_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
    )
    if error:
        log.info("webhook %s: %s (%s)", delivery.id, error, outcome)


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
        # Not `_stop`: threading.Thread has a method of that name, which join() calls.
        self._stopping = threading.Event()

    def run(self) -> None:
        _deliver_loop(self._stopping, self.interval)

    def stop(self) -> None:
        self._stopping.set()
