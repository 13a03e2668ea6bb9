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
from typing import Any

import httpx

from app import webhook_targets
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
        # The event's id (per job), the same on every retry: receivers dedupe by it.
        "Graft-Delivery": str(delivery.payload.get("id", "")),
        "Graft-Signature": webhooks.sign(delivery.secrets, int(time.time()), body),
    }
    status: int | None = None
    error: str | None = None
    final = False
    try:
        target = webhook_targets.resolve_for_send(
            delivery.url, allow_private=settings.webhook_allow_private
        )
        url, pinning, extensions = _pinned(delivery.url, target)
        response = client.post(
            url, content=body, headers={**headers, **pinning}, extensions=extensions
        )
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except webhook_targets.RefusedTarget as exc:
        # Nothing was sent: the team's event says why, never what the address answers.
        error, final = f"refused: {exc.reason}", True
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    except OSError as exc:  # the name did not resolve (this may change: retried)
        error = f"DNS lookup failed: {exc}"[:500]
    outcome = in_transaction(
        webhooks.record_attempt,
        delivery.id,
        status,
        error,
        max_attempts=settings.webhook_max_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        final=final,
    )
    if error:
        log.info("webhook %s: %s (%s)", delivery.id, error, outcome)


def _pinned(
    url: str, target: webhook_targets.Target
) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request's URL, extra headers and extensions: to the address that was checked,
    never to the name again, so a second DNS answer (rebinding) cannot differ. The Host
    header and, for https, the TLS server name (SNI, also the name the certificate is
    verified against) stay the URL's host. Allowed private (no address checked): as is."""
    parsed = httpx.URL(url)
    if target.address is None:
        return parsed, {}, {}
    host = f"[{target.host}]" if ":" in target.host else target.host
    default_port = webhook_targets.SCHEMES[target.scheme]
    headers = {"Host": host if target.port == default_port else f"{host}:{target.port}"}
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
        # The pool keys connections by address alone: never reuse one whose certificate
        # was verified for another name on the same address.
        headers["Connection"] = "close"
    return parsed.copy_with(host=target.address, port=target.port), headers, extensions


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
