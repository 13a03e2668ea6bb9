"""Idempotency-Key: the same key and body answer the same object; another body is a 409.

Keys are scoped to a team and an endpoint and kept for GRAFT_IDEMPOTENCY_TTL_HOURS
(a later request with an expired key creates a new object).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from operator import attrgetter
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import IdempotencyKey
from app.errors import Conflict, InvalidInput
from app.repositories.idempotency import IdempotencyRepository

T = TypeVar("T")
R = TypeVar("R", covariant=True)


class _TeamRows(Protocol[R]):
    """A repository of a team's rows (TeamScopedRepository)."""

    def get_for_team(self, team_id: str, id: str) -> R | None: ...


MAX_KEY_LENGTH = 200
TTL = timedelta(hours=24)


def request_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def idempotent(
    session: Session,
    *,
    team_id: str,
    scope: str,
    key: str | None,
    fingerprint: str,
    load: Callable[[str], T | None],
    create: Callable[[], T],
    id_of: Callable[[T], str],
) -> tuple[T, bool]:
    """Run create() once per key; returns the object and whether it was created now."""
    if key is None:
        return create(), True
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.", param="Idempotency-Key"
        )
    repo = IdempotencyRepository(session)
    record = repo.get((team_id, scope, key))
    if record is not None and record.created_at > utcnow() - TTL:
        if record.request_hash != fingerprint:
            raise Conflict(
                "This Idempotency-Key was used with a different request body.",
                code="idempotency_key_reused",
                param="Idempotency-Key",
            )
        existing = load(record.resource_id)
        if existing is not None:
            return existing, False
    obj = create()
    if record is not None:
        repo.delete(record)
    repo.add(
        IdempotencyKey(
            team_id=team_id,
            scope=scope,
            key=key,
            request_hash=fingerprint,
            resource_id=id_of(obj),
            created_at=utcnow(),
        )
    )
    return obj, True


def create_once(
    session: Session,
    repo: _TeamRows[T],
    *,
    team_id: str,
    scope: str,
    key: str | None,
    body: BaseModel,
    create: Callable[[], T],
) -> tuple[T, bool]:
    """idempotent() for a row of the team created from a request body: the body is the
    fingerprint, the row's id is remembered, and a replay loads it from `repo`."""
    return idempotent(
        session,
        team_id=team_id,
        scope=scope,
        key=key,
        fingerprint=request_hash(body.model_dump(mode="json")),
        load=lambda object_id: repo.get_for_team(team_id, object_id),
        create=create,
        id_of=attrgetter("id"),
    )
