"""Glue between a job row and the training engine (the Celery task calls run_job).

claim (the typed spec) → inputs → engine.fit → domain adaptation → files → succeed;
for an evaluation: claim → worker/evaluation.py's evaluate → succeed with its report.
Every state change is a call to the lifecycle service (app/services/job_runs.py), each
in a transaction of its own; job_error() is the one place an exception becomes the
job's error.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from sqlalchemy.exc import OperationalError

from app.config import Settings, get_settings
from app.db.session import in_transaction
from app.services import job_runs, searches
from app.services.job_runs import ClaimedEvaluation, ClaimedJob, Lease, ModelRecord
from app.storage import Storage, storage_for
from worker.adapt.run import adapt
from worker.errors import DatabaseUnavailable, DevicesUnavailable, JobError, ResourcesExhausted
from worker.evaluation import Subject, evaluate
from worker.job_files import (
    CheckpointSync,
    attempt_workdir,
    record_validation_set,
    remove_checkpoints,
)
from worker.job_inputs import adaptation_data, prepare
from worker.launcher import Launch, worker_devices
from worker.lease import Heartbeat
from worker.publish import Trained, write_model
from worker.training import engine
from worker.training.types import EpochMetrics, Hooks, Progress, StopReason, TrainingStopped

log = logging.getLogger(__name__)

Fit = Callable[..., Any]  # engine.fit's signature; tests pass a fake engine

# Set by the worker's shutdown signal (worker/celery_app.py): the running job
# checkpoints and goes back to the queue instead of being lost with the process.
PREEMPTED = threading.Event()
# The outcomes after which a search's trial has ended (and its search may go on).
ENDED = frozenset({"succeeded", "failed", "cancelled", "pruned"})


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_job(job_id: str, settings: Settings | None = None, fit: Fit = engine.fit) -> str:
    """Run one job to its end; returns what happened (for logs and tests)."""
    settings = settings or get_settings()
    job = in_transaction(
        job_runs.claim,
        job_id,
        worker_identity(),
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        running_jobs_quota=settings.quota_running_jobs,
    )
    if job is None:
        return "not_claimed"
    beat = Heartbeat(job.lease, settings.lease_seconds, settings.heartbeat_seconds)
    beat.start()
    storage = storage_for(settings)
    try:
        if isinstance(job, ClaimedEvaluation):
            return _run(job.lease, lambda: _evaluate(job, settings, storage, beat))
        outcome = _run(job.lease, lambda: _train_and_publish(job, settings, storage, beat, fit))
    finally:
        beat.stop()
    if outcome in ("succeeded", "pruned"):
        # A cancelled or failed job keeps its last checkpoint (until it is deleted).
        remove_checkpoints(storage, job.lease)
    if storage.is_remote:
        # The bucket holds what the job keeps; this host's copy was a working one.
        storage.remove_local(storage.job_dir(job_id))
    if job.search_id is not None and outcome in ENDED:
        # The search goes on from here: Optuna hears of this trial, the next one starts.
        searches.advance_quietly(job.search_id)
    return outcome


def _run(lease: Lease, work: Callable[[], tuple[ModelRecord | None, dict[str, Any]]]) -> str:
    """Do the work, then record its end: succeed with what it returns, or the reason
    it stopped, or its error (retried when another attempt could help)."""
    try:
        record, report = work()
        if not in_transaction(job_runs.succeed, lease, record, report):
            raise TrainingStopped("lease_lost", 0, 0)
        return "succeeded"
    except TrainingStopped as stop:
        return _stopped(lease, stop)
    except Exception as exc:
        error = job_error(exc)
        if error.retryable:
            # Give the job back at once rather than waiting for the lease to expire.
            log.warning("job %s hit a transient failure: %s", lease.job_id, error.message)
            in_transaction(
                job_runs.requeue, lease, "job.retrying", {"reason": error.message}, counts=True
            )
            return "retrying"
        if type(error) is JobError:
            log.exception("job %s failed", lease.job_id)
        in_transaction(job_runs.fail, lease, error.as_dict())
        return "failed"


def job_error(exc: Exception) -> JobError:
    """The job's error for any exception: its own when it is a JobError."""
    if isinstance(exc, JobError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return ResourcesExhausted(message)
    if isinstance(exc, OperationalError):
        return DatabaseUnavailable(message)
    return JobError(message)


def _stopped(lease: Lease, stop: TrainingStopped) -> str:
    if stop.reason == "cancelled":
        in_transaction(job_runs.stopped_by_cancel, lease)
    elif stop.reason == "preempted":
        where = {"epoch": stop.epoch, "step": stop.step}
        in_transaction(job_runs.requeue, lease, "job.preempted", where, counts=False)
    elif stop.reason == "pruned":
        # The pruner spoke after the last epoch whose checkpoint and metrics are stored.
        detail = {"epoch": stop.epoch - 1, "reason": "The search's pruner stopped this trial."}
        in_transaction(job_runs.pruned, lease, detail)
    else:  # lease_lost: another worker owns the job now; write nothing.
        log.warning("job %s: lease lost, stopping", lease.job_id)
    return stop.reason


def _train_and_publish(
    job: ClaimedJob, settings: Settings, storage: Storage, beat: Heartbeat, fit: Fit
) -> tuple[ModelRecord, dict[str, Any]]:
    lease = job.lease
    trained = _train(job, settings, storage, beat, fit)
    if not in_transaction(job_runs.heartbeat, lease, settings.lease_seconds).held:
        raise TrainingStopped("lease_lost", trained.result.best_epoch, 0)
    model_dir = storage.model_dir(lease.model_id)
    record = write_model(model_dir, lease.model_id, lease.job_id, job.spec, trained)
    storage.publish(model_dir)  # in the bucket before the row points at it
    return record


def _evaluate(
    job: ClaimedEvaluation, settings: Settings, storage: Storage, beat: Heartbeat
) -> tuple[None, dict[str, Any]]:
    spec, lease = job.spec, job.lease
    subject = Subject(
        storage.fetch(storage.model_dir(spec.model_id)),
        job.model.architecture,
        job.model.classes,
        job.image_size,
        spec.artifact,
    )
    throttle = Throttle(settings.progress_interval_seconds)

    def progress(p: dict[str, Any]) -> None:
        if throttle.due(last=p["images_done"] >= p["images_total"]):
            in_transaction(job_runs.report_progress, lease, p)

    dataset = storage.fetch(storage.dataset_dir(spec.dataset_id))
    report = evaluate(subject, dataset, progress, _stop_check(beat))
    return None, {"model_id": spec.model_id, "dataset_id": spec.dataset_id, **report}


def _train(
    job: ClaimedJob, settings: Settings, storage: Storage, beat: Heartbeat, fit: Fit
) -> Trained:
    devices = job.spec.devices
    if devices > 1:
        have = worker_devices(settings.worker_devices)
        if devices > have:
            raise DevicesUnavailable(
                f"The job asks for {devices} devices and this worker has {have} "
                "(GRAFT_WORKER_DEVICES)."
            )
        fit = Launch(devices)
    inputs = prepare(job, settings, storage)
    record_validation_set(storage, job.lease.job_id, inputs.val)
    workdir = attempt_workdir(storage, job.lease)
    sync = CheckpointSync(storage, workdir)
    hooks = _hooks(job, beat, settings.progress_interval_seconds, sync)
    device = engine.select_device()
    model, cfg = inputs.model, inputs.cfg
    try:
        result = fit(model, cfg, inputs.train, inputs.val, inputs.classes, hooks, workdir, device)
    except TrainingStopped as stop:
        if stop.reason == "preempted":
            sync()  # the checkpoint of the step it stopped at, for whichever host resumes
        raise
    model.load_state_dict(result.state_dict)
    trained = Trained(result, cfg, inputs.classes, inputs.train, inputs.val, model)
    options = job.spec.domain_adaptation
    if options is not None:
        # The kept model changes only if adaptation's guard agrees.
        target, evaluation = adaptation_data(options, storage, cfg.image_size, inputs.classes)
        adapted = adapt(
            model,
            options.model_dump(),
            cfg=cfg,
            source_val=inputs.val,
            source_train=inputs.train,
            target=target,
            target_eval=evaluation,
            device=device,
            hooks=hooks,
            class_names=inputs.classes,
        )
        model.load_state_dict(adapted.state_dict)
        hooks.on_event("adapted", {"method": options.method, "kept": adapted.kept})
        trained.adaptation = {**adapted.report, "kept": adapted.kept, "history": adapted.history}
    return trained


def _stop_check(
    beat: Heartbeat, pruned: threading.Event | None = None
) -> Callable[[], StopReason | None]:
    def should_stop() -> StopReason | None:
        if beat.cancelled.is_set():
            return "cancelled"
        if beat.lease_lost.is_set():
            return "lease_lost"
        if PREEMPTED.is_set():
            return "preempted"
        if pruned is not None and pruned.is_set():
            return "pruned"
        return None

    return should_stop


class Throttle:
    """Progress is written at most once per `every` seconds, and always at the end of
    a pass, so the database sees a bounded rate of writes."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.previous = 0.0

    def due(self, last: bool) -> bool:
        now = time.monotonic()
        if now - self.previous < self.every and not last:
            return False
        self.previous = now
        return True


def _hooks(
    job: ClaimedJob, beat: Heartbeat, progress_every: float, checkpointed: Callable[[], None]
) -> Hooks:
    lease, metrics = job.lease, job.metrics
    throttle = Throttle(progress_every)
    pruned = threading.Event()

    def on_progress(p: Progress) -> None:
        if throttle.due(last=p.step >= p.steps_per_epoch):
            in_transaction(job_runs.report_progress, lease, _progress_dict(p))

    def on_epoch_end(m: EpochMetrics) -> None:
        checkpointed()  # in the bucket before the row says the epoch is checkpointed
        metrics[:] = [x for x in metrics if x["epoch"] < m.epoch] + [m.as_dict()]
        in_transaction(job_runs.epoch_done, lease, list(metrics), m.as_dict())
        if _should_prune(job, m.as_dict()):
            pruned.set()

    def on_event(kind: str, payload: dict[str, Any]) -> None:
        in_transaction(job_runs.note, lease, f"job.{kind}", payload)

    return Hooks(on_progress, on_epoch_end, _stop_check(beat, pruned), on_event)


def _should_prune(job: ClaimedJob, epoch: dict[str, Any]) -> bool:
    """For a search's trial: report the epoch to its pruner, and hear whether to stop."""
    if job.search_id is None or job.trial_number is None:
        return False
    try:
        return searches.report_epoch(job.search_id, job.trial_number, epoch)
    except Exception:
        # The pruner is advice: a trial it cannot reach trains on.
        log.exception("search %s: reporting trial %d failed", job.search_id, job.trial_number)
        return False


def _progress_dict(p: Progress) -> dict[str, Any]:
    d = asdict(p)
    d["fraction"] = round(p.fraction, 4)
    for key in ("eta_seconds", "images_per_second"):
        if d[key] is not None:
            d[key] = round(d[key], 1)
    return d
