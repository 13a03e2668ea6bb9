"""Repositories on both databases: the conditional updates that keep jobs safe."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.base import utcnow
from app.db.models import Dataset, Job
from app.db.session import session_scope
from app.repositories.jobs import JobRepository
from app.services.teams import create_team
from worker.maintenance import reap


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "postgres":
        env = request.getfixturevalue("pg_env")
    else:
        env = request.getfixturevalue("sqlite_env")
    yield env["GRAFT_DATABASE_URL"] or get_settings().sqlalchemy_url


def a_dataset(id: str, team_id: str) -> Dataset:
    """A ready dataset row (no files: the repositories never look at them)."""
    return Dataset(
        id=id,
        team_id=team_id,
        name="d",
        kind="labeled",
        status="ready",
        num_images=0,
        classes=[],
        rejected=[],
        warnings=[],
        sha256="0" * 64,
        size_bytes=0,
        created_at=utcnow(),
    )


def a_job(id: str, team_id: str, status: str = "queued", spec: dict[str, Any] | None = None) -> Job:
    return Job(
        id=id,
        team_id=team_id,
        spec=spec or {},
        status=status,
        metrics=[],
        attempt=0,
        cancel_requested=False,
        created_at=utcnow(),
    )


def make_job(session: Session, spec: dict[str, Any] | None = None) -> str:
    """A team, a ready dataset, and a queued job on it (a valid spec unless given)."""
    team = create_team(session, "t")
    ds = a_dataset("ds_1" + team.id[-6:], team.id)
    session.add(ds)
    job = a_job("job_1" + team.id[-6:], team.id, spec=spec)
    job.dataset_id = ds.id
    if spec is None:
        job.spec = {"dataset_id": ds.id, "base_model": "resnet18"}
    session.add(job)
    session.flush()
    return job.id


def test_only_one_claim_wins(db: str) -> None:
    with session_scope() as s:
        job_id = make_job(s)
    with session_scope() as s:
        assert JobRepository(s).claim(job_id, "w1", 60, 3) is True
    with session_scope() as s:
        assert JobRepository(s).claim(job_id, "w2", 60, 3) is False
    with session_scope() as s:
        job = JobRepository(s).get(job_id)
        assert job is not None
        assert (job.status, job.attempt, job.lease_owner) == ("running", 1, "w1")
        # Only the lease holder may write.
        assert JobRepository(s).update_held(job_id, "w2", status="succeeded") is False
        assert JobRepository(s).update_held(job_id, "w1", progress={"epoch": 1}) is True


def test_an_expired_lease_can_be_claimed_again(db: str) -> None:
    with session_scope() as s:
        job_id = make_job(s)
    with session_scope() as s:
        assert JobRepository(s).claim(job_id, "w1", -1, 3)  # lease already expired
    with session_scope() as s:
        assert JobRepository(s).claim(job_id, "w2", 60, 3)
        assert JobRepository(s).renew_lease(job_id, "w1", 60) is False
        assert JobRepository(s).renew_lease(job_id, "w2", 60) is True
    with session_scope() as s:
        job = JobRepository(s).get(job_id)
        assert job is not None and job.attempt == 2 and job.lease_owner == "w2"


def test_cancel_of_a_queued_job_prevents_the_claim(db: str) -> None:
    with session_scope() as s:
        job_id = make_job(s)
    with session_scope() as s:
        assert JobRepository(s).cancel_if_queued(job_id)
    with session_scope() as s:
        assert JobRepository(s).claim(job_id, "w1", 60, 3) is False
        assert JobRepository(s).cancel_if_queued(job_id) is False


def test_reaper_requeues_then_gives_up_after_max_attempts(db: str) -> None:
    settings = get_settings()
    with session_scope() as s:
        job_id = make_job(s)
    for attempt in range(1, settings.max_attempts + 1):
        with session_scope() as s:
            assert JobRepository(s).claim(job_id, f"w{attempt}", -1, settings.max_attempts)
        requeued = reap(settings)
        with session_scope() as s:
            job = JobRepository(s).get(job_id)
            assert job is not None
        if attempt < settings.max_attempts:
            assert requeued == [job_id] and job.status == "queued"
        else:
            assert requeued == [] and job.status == "failed"
            assert job.error == {
                "code": "too_many_attempts",
                "message": job.error["message"],
            }
    with session_scope() as s:
        types = [e.type for e in JobRepository(s).events(job_id)]
    assert types.count("job.requeued") == settings.max_attempts - 1
    assert types[-1] == "job.failed"
