"""Webhooks: the outbox's deliveries (taken, then recorded) and their signatures.

The worker's sender (worker/webhooks.py) only posts; every row it changes changes here.

A delivery carries `Graft-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256 over `"<t>.<raw body>"` with the team's webhook secret. A receiver
recomputes it, compares in constant time, and rejects old timestamps (replays). For
the grace period after a rotation there are two: `t=…,v1=<new>,v1=<old>`; a receiver
accepts the delivery when any v1 matches its secret.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.repositories.jobs import JobRepository
from app.repositories.teams import TeamRepository
from app.repositories.webhooks import WebhookRepository
from app.services.events import record_event
from app.services.teams import signing_secrets

MAX_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True)
class Outgoing:
    """One delivery to post, with the secrets to sign it."""

    id: int
    url: str
    event_type: str
    payload: dict[str, Any]
    secrets: tuple[str, ...]


def take_due(session: Session, lease_seconds: float) -> list[Outgoing]:
    """The deliveries due now, each taken for `lease_seconds` so no other sender posts it."""
    now = utcnow()
    repo = WebhookRepository(session)
    taken = []
    for d in repo.due(now):
        if not repo.lease(d.id, now, lease_seconds):
            continue
        job = JobRepository(session).get(d.job_id)
        team = TeamRepository(session).get(job.team_id) if job else None
        secrets = tuple(signing_secrets(team, now)) if team else ()
        taken.append(Outgoing(d.id, d.url, d.event_type, d.payload, secrets))
    return taken


def record_attempt(
    session: Session,
    delivery_id: int,
    status: int | None,
    error: str | None,
    *,
    max_attempts: int,
    backoff_seconds: float,
    final: bool = False,
) -> str:
    """Record one attempt (a webhook.delivery event on the job); returns the outcome:
    delivered, retrying (after backoff_seconds x 2^(n-1), at most 10 minutes) or gave_up.
    `final`: it failed for a reason a retry will not change (a refused address), so give
    up now."""
    now = utcnow()
    delivery = WebhookRepository(session).get(delivery_id)
    assert delivery is not None
    delivery.attempts += 1
    if error is None:
        delivery.status, delivery.delivered_at, outcome = "delivered", now, "delivered"
    elif final or delivery.attempts >= max_attempts:
        delivery.status, outcome = "failed", "gave_up"
    else:
        delay = backoff_seconds * 2 ** (delivery.attempts - 1)
        delivery.next_attempt_at = now + timedelta(seconds=min(delay, MAX_BACKOFF_SECONDS))
        outcome = "retrying"
    delivery.last_error = error
    record_event(
        session,
        delivery.job_id,
        "webhook.delivery",
        {
            "event_id": delivery.payload.get("id"),
            "event_type": delivery.event_type,
            "attempt": delivery.attempts,
            "status_code": status,
            "error": error,
            "outcome": outcome,
        },
    )
    return outcome


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secrets: str | tuple[str, ...], timestamp: int, body: bytes) -> str:
    """The Graft-Signature header: one v1 per secret (the current one first)."""
    keys = (secrets,) if isinstance(secrets, str) else secrets
    return ",".join([f"t={timestamp}", *(f"v1={_mac(k, timestamp, body)}" for k in keys)])


def verify(secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """For receivers: whether `header` signs `body` with `secret`, at most `tolerance`
    seconds from `now` (older deliveries are refused as possible replays)."""
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    timestamps = [v for k, v in parts if k == "t"]
    try:
        timestamp = int(timestamps[0])
    except (IndexError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, v) for k, v in parts if k == "v1")
