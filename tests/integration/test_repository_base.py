"""The shared repository base on both databases: team scoping and keyset pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import update

from app.db.base import utcnow
from app.db.models import Job, Model
from app.db.session import session_scope
from app.repositories.base import TeamScopedRepository
from app.repositories.datasets import DatasetRepository
from app.repositories.idempotency import IdempotencyRepository
from app.repositories.jobs import JobRepository
from app.repositories.models import ModelRepository
from app.repositories.webhooks import WebhookRepository
from app.services.teams import create_team
from tests.integration.test_repositories import (  # (db: PostgreSQL and SQLite)
    a_dataset,
    a_job,
    db,  # noqa: F401
)

pytestmark = pytest.mark.usefixtures("db")


def a_model(id: str, team_id: str) -> Model:
    return Model(
        id=id,
        team_id=team_id,
        name="m",
        source="uploaded",
        architecture="resnet18",
        classes=["a", "b"],
        preprocessing={},
        metrics={},
        artifacts=[],
        created_at=utcnow(),
    )


Kind = tuple[str, type[TeamScopedRepository[Any]], Callable[[str, str], Any]]
KINDS: list[Kind] = [
    ("ds", DatasetRepository, a_dataset),
    ("mdl", ModelRepository, a_model),
    ("job", JobRepository, a_job),
]


def two_teams() -> tuple[str, str]:
    with session_scope() as s:
        return create_team(s, "mine").id, create_team(s, "theirs").id


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_get_for_team_hides_another_teams_rows(kind: Kind) -> None:
    prefix, repository, make = kind
    mine, theirs = two_teams()
    row_id = f"{prefix}_{mine[-12:]}"
    with session_scope() as s:
        added = repository(s).add(make(row_id, mine))
        assert added.id == row_id
    with session_scope() as s:
        repo = repository(s)
        assert repo.get(row_id) is not None
        assert repo.get(f"{prefix}_missing") is None
        found = repo.get_for_team(mine, row_id)
        assert found is not None and found.id == row_id and found.team_id == mine
        assert repo.get_for_team(theirs, row_id) is None
        assert repo.get_for_team(mine, f"{prefix}_missing") is None


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_list_for_team_pages_newest_first(kind: Kind) -> None:
    prefix, repository, make = kind
    mine, theirs = two_teams()
    # Ids are time-ordered: a larger id is a newer row.
    ids = [f"{prefix}_{n:012x}{mine[-8:]}" for n in range(1, 6)]
    with session_scope() as s:
        repo = repository(s)
        for row_id in ids:
            repo.add(make(row_id, mine))
        repo.add(make(f"{prefix}_{99:012x}{theirs[-8:]}", theirs))
    newest_first = ids[::-1]
    with session_scope() as s:
        repo = repository(s)
        first = repo.list_for_team(mine, limit=2, cursor=None)
        assert [r.id for r in first.items] == newest_first[:2]
        assert first.has_more is True and first.next_cursor == newest_first[1]

        second = repo.list_for_team(mine, limit=2, cursor=first.next_cursor)
        assert [r.id for r in second.items] == newest_first[2:4]
        assert second.has_more is True and second.next_cursor == newest_first[3]

        last = repo.list_for_team(mine, limit=2, cursor=second.next_cursor)
        assert [r.id for r in last.items] == newest_first[4:]
        assert last.has_more is False and last.next_cursor is None

        exact = repo.list_for_team(mine, limit=5, cursor=None)
        assert len(exact.items) == 5 and exact.has_more is False and exact.next_cursor is None

        assert [r.id for r in repo.list_for_team(theirs, limit=10, cursor=None).items] == [
            f"{prefix}_{99:012x}{theirs[-8:]}"
        ]


def test_job_list_filters_by_status_when_given() -> None:
    mine, _ = two_teams()
    with session_scope() as s:
        repo = JobRepository(s)
        repo.add(a_job("job_1" + mine[-8:], mine, "queued"))
        repo.add(a_job("job_2" + mine[-8:], mine, "failed"))
        repo.add(a_job("job_3" + mine[-8:], mine, "queued"))
    with session_scope() as s:
        repo = JobRepository(s)
        queued = repo.list_for_team(mine, status="queued", limit=10, cursor=None)
        assert [j.id for j in queued.items] == ["job_3" + mine[-8:], "job_1" + mine[-8:]]
        every = repo.list_for_team(mine, status=None, limit=10, cursor=None)
        assert len(every.items) == 3


def test_job_get_rereads_a_row_changed_elsewhere() -> None:
    mine, _ = two_teams()
    job_id = "job_1" + mine[-8:]
    with session_scope() as s:
        JobRepository(s).add(a_job(job_id, mine))
    with session_scope() as s:
        job = JobRepository(s).get(job_id)
        assert job is not None and job.status == "queued"
        with session_scope() as other:
            other.execute(update(Job).where(Job.id == job_id).values(status="running"))
        again = JobRepository(s).get(job_id)
        assert again is job and again.status == "running"
        # Models keep the identity map's copy: only jobs re-read.
        assert ModelRepository.populate_existing is False


def test_webhooks_and_idempotency_share_add_and_get() -> None:
    mine, _ = two_teams()
    with session_scope() as s:
        JobRepository(s).add(a_job("job_1" + mine[-8:], mine))
    from app.db.models import IdempotencyKey, WebhookDelivery

    with session_scope() as s:
        delivery = WebhookRepository(s).add(
            WebhookDelivery(
                job_id="job_1" + mine[-8:],
                event_id=1,
                event_type="job.succeeded",
                url="http://example.invalid/hook",
                payload={},
            )
        )
        delivery_id = delivery.id
        IdempotencyRepository(s).add(
            IdempotencyKey(
                team_id=mine, scope="jobs", key="k1", request_hash="h", resource_id="job_1"
            )
        )
    with session_scope() as s:
        got = WebhookRepository(s).get(delivery_id)
        assert got is not None and got.event_type == "job.succeeded"
        repo = IdempotencyRepository(s)
        record = repo.get((mine, "jobs", "k1"))
        assert record is not None and record.resource_id == "job_1"
        assert repo.get((mine, "models", "k1")) is None
        repo.delete(record)
        assert repo.get((mine, "jobs", "k1")) is None
    with session_scope() as s:
        assert IdempotencyRepository(s).get((mine, "jobs", "k1")) is None
