"""The runner's glue with a fake engine, in this process, on both databases.

A real team, dataset and job are made through the API; run_job() then claims the job
and calls a fake `fit` that plays one scenario (succeed, cancel, SIGTERM, lost lease,
failures), and the job row, its events and its model are read back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from torch import nn

from app.config import get_settings
from app.db.models import Model
from app.db.session import session_scope
from app.repositories.jobs import JobRepository
from app.repositories.models import ModelRepository
from app.services import job_runs
from tests.conftest import Api, digits_images
from tests.e2e.helpers import train_job, upload
from tests.weights import weights as zero_weights
from worker import runner
from worker.errors import DatasetError
from worker.training.types import (
    EpochMetrics,
    FitResult,
    Hooks,
    ImageSet,
    TrainConfig,
    TrainingStopped,
)

Fit = Callable[..., FitResult]
EPOCHS = 2


@pytest.fixture(params=["postgres", "sqlite"])
def api(request: pytest.FixtureRequest, make_api: Callable[[], Api]) -> Api:
    request.getfixturevalue("pg_env" if request.param == "postgres" else "sqlite_env")
    return make_api()


@pytest.fixture
def job_id(api: Api) -> str:
    key = api.new_team()
    ds = upload(api, key, digits_images(per_class=8))
    hp = {"epochs": EPOCHS, "batch_size": 8, "image_size": 16}
    return str(train_job(api, key, ds["id"], hyperparameters=hp)["id"])


@pytest.fixture(autouse=True)
def _not_preempted() -> Iterator[None]:
    yield
    runner.PREEMPTED.clear()


def fake_fit(during: Callable[[Hooks, int], None] = lambda hooks, epoch: None) -> Fit:
    """An engine that runs EPOCHS epochs instantly, calling `during` in each, and stops
    (as the real one does) when should_stop() says so."""

    def fit(
        model: nn.Module,
        cfg: TrainConfig,
        train: ImageSet,
        val: ImageSet,
        classes: list[str],
        hooks: Hooks,
        workdir: Path,
        device: torch.device,
    ) -> FitResult:
        assert (cfg.epochs, cfg.image_size, len(classes)) == (EPOCHS, 16, 3)
        history = []
        for epoch in range(1, cfg.epochs + 1):
            during(hooks, epoch)
            if (reason := hooks.should_stop()) is not None:
                raise TrainingStopped(reason, epoch, 0)
            m = EpochMetrics(epoch, 1.0 / epoch, 0.5, 1.0 / epoch, 0.5, 1e-3, 0.01)
            history.append(m)
            hooks.on_epoch_end(m)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        report = {"accuracy": 0.5}
        return FitResult(cfg.epochs, state, history, report, None, False)

    return fit


def wait_until(hooks: Hooks, reason: str, timeout: float = 20) -> None:
    """Block like a long training step until the heartbeat relays `reason`."""
    deadline = time.monotonic() + timeout
    while hooks.should_stop() != reason:
        assert time.monotonic() < deadline, f"should_stop() never said {reason}"
        time.sleep(0.05)


def job_row(job_id: str) -> Any:
    with session_scope() as s:
        job = JobRepository(s).get(job_id)
        assert job is not None
        return job


def events(job_id: str) -> list[str]:
    with session_scope() as s:
        return [e.type for e in JobRepository(s).events(job_id)]


def model_count(job_id: str) -> int:
    with session_scope() as s:
        return 1 if ModelRepository(s).get(job_runs.Lease(job_id, "", 1).model_id) else 0


def test_a_job_runs_to_success_and_publishes_its_model(job_id: str) -> None:
    assert runner.run_job(job_id, fit=fake_fit()) == "succeeded"
    job = job_row(job_id)
    assert (job.status, job.attempt, job.lease_owner) == ("succeeded", 1, None)
    assert [m["epoch"] for m in job.metrics] == [1, 2] and job.last_checkpoint_epoch == 2
    assert job.report["best_epoch"] == EPOCHS and job.report["accuracy"] == 0.5
    with session_scope() as s:
        model = ModelRepository(s).get(job.result_model_id)
        assert model is not None and model.classes == ["digit_0", "digit_1", "digit_2"]
    weights = get_settings().resolved_data_dir / "models" / job.result_model_id
    assert (weights / "model.safetensors").is_file()
    types = events(job_id)
    assert types[:2] == ["job.queued", "job.running"]
    assert types.count("job.progress") == EPOCHS and types[-1] == "job.succeeded"
    # The message delivered again finds nothing to claim.
    assert runner.run_job(job_id, fit=fake_fit()) == "not_claimed"


def test_a_cancel_from_the_api_stops_the_running_job(job_id: str, api: Api) -> None:
    def cancel_then_wait(hooks: Hooks, epoch: int) -> None:
        with session_scope() as s:
            job_runs.cancel(s, JobRepository(s).get(job_id))  # type: ignore[arg-type]
        wait_until(hooks, "cancelled")

    assert runner.run_job(job_id, fit=fake_fit(cancel_then_wait)) == "cancelled"
    assert job_row(job_id).status == "cancelled"
    assert events(job_id)[-2:] == ["job.cancel_requested", "job.cancelled"]
    assert model_count(job_id) == 0


def test_sigterm_requeues_the_job_without_using_an_attempt(job_id: str) -> None:
    def preempt_in_epoch_2(hooks: Hooks, epoch: int) -> None:
        if epoch == 2:
            runner.PREEMPTED.set()

    assert runner.run_job(job_id, fit=fake_fit(preempt_in_epoch_2)) == "preempted"
    job = job_row(job_id)
    assert (job.status, job.attempt, job.lease_owner) == ("queued", 0, None)
    assert job.last_checkpoint_epoch == 1  # the resume point
    assert events(job_id)[-1] == "job.preempted"


def test_a_worker_that_lost_its_lease_writes_nothing(job_id: str) -> None:
    def taken_over(hooks: Hooks, epoch: int) -> None:
        if epoch == EPOCHS:
            with session_scope() as s:
                job = JobRepository(s).get(job_id)
                assert job is not None and job.lease_owner is not None
                JobRepository(s).update_held(job_id, job.lease_owner, lease_owner="another")

    assert runner.run_job(job_id, fit=fake_fit(taken_over)) == "lease_lost"
    job = job_row(job_id)
    assert (job.status, job.lease_owner, job.result_model_id) == ("running", "another", None)
    assert model_count(job_id) == 0
    assert job.last_checkpoint_epoch == 1  # epoch 2 ended after the take-over: not recorded


@pytest.mark.parametrize(
    ("exc", "outcome", "status", "code"),
    [
        (DatasetError("cannot read digit_0/0001.png"), "failed", "failed", "dataset_unusable"),
        (RuntimeError("boom"), "failed", "failed", "internal_error"),
        (MemoryError("out of memory"), "retrying", "queued", None),
    ],
)
def test_failures_are_mapped_to_the_job_error_in_one_place(
    job_id: str, exc: Exception, outcome: str, status: str, code: str | None
) -> None:
    def raise_it(hooks: Hooks, epoch: int) -> None:
        raise exc

    assert runner.run_job(job_id, fit=fake_fit(raise_it)) == outcome
    job = job_row(job_id)
    assert (job.status, job.attempt) == (status, 1)
    if code is None:  # retryable: back in the queue, the attempt counted
        assert job.error is None and events(job_id)[-1] == "job.retrying"
    else:
        assert job.error["code"] == code and str(exc) in job.error["message"]
        assert events(job_id)[-1] == "job.failed"


# -- evaluations: the same lifecycle, worker/evaluation.py for the work -------------


@pytest.fixture
def evaluation_id(api: Api) -> str:
    """An evaluation of an all-zero resnet18 (every logit 0, so every image is predicted
    as the first class) on 8 digits of each of its 3 classes."""
    key = api.new_team()
    ds = upload(api, key, digits_images(per_class=8))
    classes = '["digit_0", "digit_1", "digit_2"]'
    mdl = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", zero_weights(classes=3))},
        data={"architecture": "resnet18", "classes": classes, "image_size": "16"},
    ).json()
    r = api.as_team(
        key, "POST", f"/v1/models/{mdl['id']}/evaluations", json={"dataset_id": ds["id"]}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_an_evaluation_runs_to_success_with_its_report_and_no_model(evaluation_id: str) -> None:
    with session_scope() as s:
        models_before = len(s.scalars(select(Model)).all())
    assert runner.run_job(evaluation_id) == "succeeded"
    ev = job_row(evaluation_id)
    assert (ev.status, ev.attempt, ev.result_model_id) == ("succeeded", 1, None)
    report = ev.report
    assert report["confusion_matrix"] == {
        "labels": ["digit_0", "digit_1", "digit_2"],
        "matrix": [[8, 0, 0], [8, 0, 0], [8, 0, 0]],
    }
    assert report["accuracy"] == pytest.approx(1 / 3) and report["num_samples"] == 24
    assert report["misclassified_total"] == 16 and len(report["misclassified"]) == 16
    assert ev.progress == {
        "images_done": 24, "images_total": 24, "fraction": 1.0,
        "eta_seconds": 0.0, "images_per_second": ev.progress["images_per_second"],
    }  # fmt: skip
    assert events(evaluation_id) == ["job.queued", "job.running", "job.succeeded"]
    with session_scope() as s:
        assert len(s.scalars(select(Model)).all()) == models_before
    assert runner.run_job(evaluation_id) == "not_claimed"


def test_sigterm_requeues_an_evaluation_and_missing_files_fail_it(
    evaluation_id: str,
) -> None:
    runner.PREEMPTED.set()  # stops it after its first batch
    assert runner.run_job(evaluation_id) == "preempted"
    ev = job_row(evaluation_id)
    assert (ev.status, ev.attempt, ev.report) == ("queued", 0, None)
    assert events(evaluation_id)[-1] == "job.preempted"
    runner.PREEMPTED.clear()

    model_dir = get_settings().resolved_data_dir / "models" / ev.spec["model_id"]
    (model_dir / "model.safetensors").unlink()
    assert runner.run_job(evaluation_id) == "failed"
    ev = job_row(evaluation_id)
    assert ev.error["code"] == "model_files_missing" and "model.safetensors" in ev.error["message"]


def test_checkpoints_go_only_up_to_the_leases_own_attempt(tmp_path: Path) -> None:
    """A worker that lost its lease to attempt 3 removes attempts 1 and 2 only; the
    successor's directory (and the job's validation set) stay."""
    from app.storage import Storage
    from worker.job_files import remove_checkpoints

    storage = Storage(tmp_path)
    job_dir = storage.job_dir("job_x")
    for attempt in (1, 2, 3):
        (job_dir / f"attempt-{attempt}").mkdir(parents=True)
        (job_dir / f"attempt-{attempt}" / "checkpoint.pt").write_bytes(b"x")
    (job_dir / "validation_set.json").write_text("{}")
    remove_checkpoints(storage, job_runs.Lease("job_x", "w", 2))
    assert sorted(p.name for p in job_dir.iterdir()) == ["attempt-3", "validation_set.json"]
    remove_checkpoints(storage, job_runs.Lease("job_x", "w", 3))
    assert sorted(p.name for p in job_dir.iterdir()) == ["validation_set.json"]
