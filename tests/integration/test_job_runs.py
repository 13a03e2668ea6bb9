"""The job lifecycle service on both databases, without any worker process.

Each transition is driven as a worker (or the reaper, or the API) would call it, and
the job row, its events and the broker's queue are read back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.base import utcnow
from app.db.session import session_scope
from app.errors import Conflict
from app.repositories.jobs import JobRepository
from app.repositories.models import ModelRepository
from app.schemas.jobs import Hyperparameters, JobCreate
from app.services import job_runs
from app.services.job_runs import ClaimedJob, Lease, ModelRecord
from tests.integration.test_repositories import db, make_job  # noqa: F401  (both databases)

pytestmark = pytest.mark.usefixtures("db")

LEASE, MAX = 60.0, 3


@pytest.fixture
def queued() -> Callable[[], int]:
    """How many train messages wait in this test's queue, on Redis or the embedded broker."""
    settings = get_settings()
    if settings.is_embedded_broker:
        folder = settings.broker_folder / "queue"
        return lambda: len(list(folder.glob(f"*.{settings.queue}.msg")))
    r = redis.Redis.from_url(settings.broker_url)
    return lambda: int(r.llen(settings.queue))


def tx(step: Callable[..., object], *args: object, **kw: object) -> object:
    with session_scope() as s:
        return step(s, *args, **kw)


def new_job() -> str:
    with session_scope() as s:
        return make_job(s)


def claim(job_id: str, owner: str = "w1", lease: float = LEASE) -> ClaimedJob | None:
    with session_scope() as s:
        return job_runs.claim(s, job_id, owner, lease_seconds=lease, max_attempts=MAX)


def row(job_id: str) -> dict[str, object]:
    with session_scope() as s:
        job = JobRepository(s).get(job_id)
        assert job is not None
        return {c: getattr(job, c) for c in ("status", "attempt", "lease_owner", "error")} | {
            "cancel_requested": job.cancel_requested,
            "result_model_id": job.result_model_id,
        }


def events(job_id: str) -> list[str]:
    with session_scope() as s:
        return [e.type for e in JobRepository(s).events(job_id)]


def record() -> ModelRecord:
    return ModelRecord(
        name="m",
        architecture="resnet18",
        classes=["a", "b"],
        preprocessing={"image_size": 16},
        metrics={"val_accuracy": 1.0},
        artifacts=[],
        recommended_artifact="safetensors",
    )


def expire(session: Session, job_id: str) -> None:
    job = JobRepository(session).get(job_id)
    assert job is not None
    job.lease_expires_at = utcnow() - timedelta(seconds=1)


def test_a_claim_parses_the_spec_once_and_a_second_claim_gets_nothing() -> None:
    job_id = new_job()
    first = claim(job_id)
    assert first is not None
    assert isinstance(first.spec, JobCreate)
    assert first.spec.hyperparameters == Hyperparameters()  # the schema's defaults, filled in
    assert first.lease == Lease(job_id, "w1", 1)
    assert claim(job_id, "w2") is None
    assert row(job_id)["lease_owner"] == "w1"
    assert events(job_id) == ["job.running"]


def test_a_stored_spec_that_does_not_validate_fails_at_claim() -> None:
    with session_scope() as s:
        job_id = make_job(s, spec={"dataset_id": "ds_x", "base_model": "resnet18", "epochz": 3})
    assert claim(job_id) is None
    r = row(job_id)
    assert r["status"] == "failed"
    assert r["error"] == {
        "code": "invalid_spec",
        "message": "The stored job spec is not valid: epochz: Extra inputs are not permitted.",
    }


def test_after_the_lease_expires_a_new_owner_takes_over_and_the_old_one_is_fenced() -> None:
    job_id = new_job()
    old = claim(job_id, "w1", lease=-1)  # its lease has already expired
    assert old is not None
    new = claim(job_id, "w2")
    assert new is not None and new.lease.attempt == 2
    stale = old.lease
    # Nothing the stale worker does lands.
    assert tx(job_runs.heartbeat, stale, LEASE) == job_runs.LeaseState(False, False)
    assert tx(job_runs.report_progress, stale, {"epoch": 9}) is False
    assert tx(job_runs.epoch_done, stale, [{"epoch": 9}], {"epoch": 9}) is False
    assert tx(job_runs.note, stale, "job.adapted", {}) is False
    assert tx(job_runs.succeed, stale, record(), {"best_epoch": 9}) is False
    assert tx(job_runs.fail, stale, {"code": "x", "message": "y"}) is False
    assert tx(job_runs.requeue, stale, "job.retrying", {}, counts=True) is False
    assert row(job_id)["status"] == "running" and row(job_id)["lease_owner"] == "w2"
    with session_scope() as s:
        assert ModelRepository(s).get(stale.model_id) is None
    # The new owner publishes its own model.
    assert tx(job_runs.succeed, new.lease, record(), {"best_epoch": 2}) is True
    assert stale.model_id != new.lease.model_id
    assert row(job_id)["result_model_id"] == new.lease.model_id
    with session_scope() as s:
        model = ModelRepository(s).get(new.lease.model_id)
        assert model is not None and model.job_id == job_id and model.classes == ["a", "b"]
    assert events(job_id) == ["job.running", "job.running", "job.succeeded"]


def test_sigterm_requeue_hands_the_job_back_without_using_an_attempt(
    queued: Callable[[], int],
) -> None:
    job_id = new_job()
    before = queued()
    for _ in range(MAX + 1):  # more pre-emptions than attempts: none of them counts
        job = claim(job_id)
        assert job is not None and job.lease.attempt == 1
        where = {"epoch": 1, "step": 3}
        assert tx(job_runs.requeue, job.lease, "job.preempted", where, counts=False) is True
        r = row(job_id)
        assert (r["status"], r["attempt"], r["lease_owner"]) == ("queued", 0, None)
    # Each requeue sent the job to the broker, after its commit.
    assert queued() == before + MAX + 1
    assert events(job_id).count("job.preempted") == MAX + 1


def test_transient_failures_use_up_attempts_then_the_claim_gives_up() -> None:
    job_id = new_job()
    for attempt in range(1, MAX + 1):
        job = claim(job_id)
        assert job is not None and job.lease.attempt == attempt
        tx(job_runs.requeue, job.lease, "job.retrying", {"reason": "MemoryError"}, counts=True)
    assert claim(job_id) is None
    r = row(job_id)
    assert r["status"] == "failed"
    assert isinstance(r["error"], dict) and r["error"]["code"] == "too_many_attempts"
    assert events(job_id)[-1] == "job.failed"


def test_the_reaper_requeues_an_expired_lease_and_sends_it_again(
    queued: Callable[[], int],
) -> None:
    job_id = new_job()
    live = new_job()
    assert claim(job_id) is not None and claim(live) is not None
    tx(expire, job_id)
    before = queued()
    assert tx(job_runs.reap, max_attempts=MAX) == [job_id]
    assert queued() == before + 1
    assert row(job_id)["status"] == "queued" and row(live)["status"] == "running"
    assert claim(job_id, "w2") is not None  # the next worker takes it


def test_cancel_while_queued_ends_it_and_nobody_can_claim_it() -> None:
    job_id = new_job()
    with session_scope() as s:
        job = JobRepository(s).get(job_id)
        assert job is not None
        assert job_runs.cancel(s, job).status == "cancelled"
    assert claim(job_id) is None
    assert events(job_id) == ["job.cancelled"]


def test_cancel_while_running_is_relayed_by_the_heartbeat() -> None:
    job_id = new_job()
    job = claim(job_id)
    assert job is not None
    with session_scope() as s:
        current = JobRepository(s).get(job_id)
        assert current is not None
        cancelled = job_runs.cancel(s, current)
        assert (cancelled.status, cancelled.cancel_requested) == ("running", True)
    assert tx(job_runs.heartbeat, job.lease, LEASE) == job_runs.LeaseState(True, True)
    assert tx(job_runs.stopped_by_cancel, job.lease) is True
    assert row(job_id)["status"] == "cancelled"
    with session_scope() as s, pytest.raises(Conflict, match="already ended"):
        current = JobRepository(s).get(job_id)
        assert current is not None
        job_runs.cancel(s, current)
    assert events(job_id) == ["job.running", "job.cancel_requested", "job.cancelled"]


def test_a_failure_is_final() -> None:
    job_id = new_job()
    job = claim(job_id)
    assert job is not None
    error = {"code": "dataset_unusable", "message": "cannot read a/1.png"}
    assert tx(job_runs.fail, job.lease, error) is True
    assert row(job_id)["error"] == error and row(job_id)["status"] == "failed"
    assert claim(job_id, "w2") is None
