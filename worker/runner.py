"""Glue between a job row and the training engine (the Celery task calls run_job).

It claims the row, turns it into plain inputs for the engine, relays the engine's
callbacks to rows and events, and writes the outcome only while it holds the lease.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from sqlalchemy.exc import OperationalError

from app.architectures import ARCHITECTURES
from app.config import Settings, get_settings
from app.db.base import utcnow
from app.db.models import Model
from app.db.session import session_scope
from app.repositories.datasets import DatasetRepository
from app.repositories.jobs import JobRepository
from app.repositories.models import ModelRepository
from app.services.events import record_event
from app.services.jobs import dispatch_job, fail_exhausted
from app.storage import Storage, write_json
from worker.adapt.run import AdaptationNotApplicable, adapt
from worker.errors import JobFailed, TransientFailure
from worker.lease import Heartbeat
from worker.publish import Trained, write_model
from worker.training import checkpoint, data, engine, registry
from worker.training.types import (
    EpochMetrics,
    Hooks,
    ImageSet,
    Progress,
    StopReason,
    TrainConfig,
    TrainingStopped,
)

log = logging.getLogger(__name__)

CHECKPOINT = checkpoint.FILENAME

# Set by the worker's SIGTERM handler: the running job checkpoints and goes back to
# the queue instead of being lost with the process.
PREEMPTED = threading.Event()


@dataclass
class Claimed:
    job_id: str
    team_id: str
    owner: str
    attempt: int
    spec: dict[str, Any]
    dataset_dir: Path
    base: dict[str, Any] | None  # the model row a job continues from
    metrics: list[dict[str, Any]]


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_job(job_id: str, settings: Settings | None = None) -> str:
    """Run one job to its end; returns what happened (for logs and tests)."""
    settings = settings or get_settings()
    storage = Storage(settings.resolved_data_dir)
    claimed = claim(job_id, settings, storage)
    if claimed is None:
        return "not_claimed"
    beat = Heartbeat(job_id, claimed.owner, settings.lease_seconds, settings.heartbeat_seconds)
    beat.start()
    try:
        return _run_claimed(claimed, settings, storage, beat)
    finally:
        beat.stop()


def claim(job_id: str, settings: Settings, storage: Storage) -> Claimed | None:
    owner = worker_identity()
    with session_scope() as session:
        repo = JobRepository(session)
        if not repo.claim(job_id, owner, settings.lease_seconds, settings.max_attempts):
            job = repo.get(job_id)
            if job is not None:
                fail_exhausted(session, job, settings.max_attempts)
            return None
        job = repo.get(job_id)
        assert job is not None
        base = None
        if str(job.spec["base_model"]).startswith("mdl_"):
            row = ModelRepository(session).get(job.spec["base_model"])
            if row is not None:
                base = {"id": row.id, "architecture": row.architecture, "classes": row.classes}
        dataset = DatasetRepository(session).get(job.dataset_id) if job.dataset_id else None
        resumed = job.last_checkpoint_epoch
        record_event(
            repo.session,
            job_id,
            "job.running",
            {"attempt": job.attempt, "worker": owner, "last_checkpoint_epoch": resumed},
        )
        return Claimed(
            job_id=job_id,
            team_id=job.team_id,
            owner=owner,
            attempt=job.attempt,
            spec=dict(job.spec),
            dataset_dir=storage.dataset_dir(dataset.id if dataset else "missing"),
            base=base,
            metrics=list(job.metrics or []),
        )


def _run_claimed(claimed: Claimed, settings: Settings, storage: Storage, beat: Heartbeat) -> str:
    try:
        _publish(claimed, settings, storage, _train(claimed, settings, storage, beat))
    except TrainingStopped as stop:
        return _stopped(claimed, stop)
    except JobFailed as exc:
        _finish(claimed, "failed", error={"code": exc.code, "message": exc.message})
        return "failed"
    except (TransientFailure, OperationalError, torch.OutOfMemoryError, MemoryError) as exc:
        # Give the job back at once rather than waiting for the lease to expire.
        log.warning("job %s hit a transient failure: %s", claimed.job_id, exc)
        _requeue(claimed, "job.retrying", {"reason": f"{type(exc).__name__}: {exc}"}, count=True)
        return "retrying"
    except Exception as exc:
        log.exception("job %s failed", claimed.job_id)
        _finish(
            claimed,
            "failed",
            error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"},
        )
        return "failed"
    return "succeeded"


def train_config(spec: dict[str, Any], architecture: str, num_classes: int) -> TrainConfig:
    arch = ARCHITECTURES[architecture]
    names = {f.name for f in fields(TrainConfig)}
    hp = {k: v for k, v in spec.get("hyperparameters", {}).items() if k in names}
    return TrainConfig(
        architecture=architecture,
        num_classes=num_classes,
        strategy=spec.get("strategy", "linear_probe"),
        unfreeze_last=spec.get("unfreeze_last"),
        mean=arch.mean,
        std=arch.std,
        **hp,
    )


def _build_model(
    claimed: Claimed, settings: Settings, storage: Storage, cfg: TrainConfig
) -> torch.nn.Module:
    if claimed.base is not None:
        weights_path = storage.model_dir(claimed.base["id"]) / "model.safetensors"
        try:
            state = load_file(str(weights_path))
            model = registry.build_from_state(
                cfg.architecture, len(claimed.base["classes"]), state, cfg.image_size
            )
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise JobFailed(
                "incompatible_weights",
                f"the weights of {claimed.base['id']} do not fit {cfg.architecture}: {exc}",
            ) from exc
        return registry.replace_head(model, cfg.architecture, cfg.num_classes)
    try:
        return registry.build_model(
            cfg.architecture,
            cfg.num_classes,
            weights=claimed.spec.get("pretrained_weights", "imagenet"),
            cache_dir=settings.weights_cache,
            image_size=cfg.image_size,
            allow_download=settings.allow_weight_download,
        )
    except registry.WeightsUnavailable as exc:
        raise JobFailed("weights_unavailable", str(exc)) from exc


def _train(claimed: Claimed, settings: Settings, storage: Storage, beat: Heartbeat) -> Trained:
    spec = claimed.spec
    hp = spec.get("hyperparameters", {})
    architecture = claimed.base["architecture"] if claimed.base else spec["base_model"]
    try:
        train, val, classes = data.image_sets(
            claimed.dataset_dir,
            int(hp.get("image_size", 224)),
            float(spec["validation_split"]),
            int(hp.get("seed", 0)),
        )
    except data.DatasetError as exc:
        raise JobFailed("dataset_unusable", str(exc)) from exc
    cfg = train_config(spec, architecture, len(classes))
    # Seeded before the model is built: a new head's initial weights depend on it, and
    # the same spec must give the same model on the CPU.
    engine.seed_everything(cfg.seed)
    model = _build_model(claimed, settings, storage, cfg)
    _record_validation_set(claimed, storage, val)
    hooks = _hooks(claimed, beat, settings.progress_interval_seconds)
    device = engine.select_device()
    result = engine.fit(
        model, cfg, train, val, classes, hooks, attempt_workdir(storage, claimed), device
    )
    model.load_state_dict(result.state_dict)
    trained = Trained(result=result, cfg=cfg, classes=classes, train=train, val=val, model=model)
    if spec.get("domain_adaptation"):
        trained.adaptation = _adapt(claimed, storage, trained, hooks, device)
    return trained


def _adapt(
    claimed: Claimed, storage: Storage, trained: Trained, hooks: Hooks, device: torch.device
) -> dict[str, Any]:
    """Adapt the kept model to the target domain; it changes only if the guard agrees."""
    options = claimed.spec["domain_adaptation"]
    size = trained.cfg.image_size
    try:
        target = data.all_images(storage.dataset_dir(options["target_dataset_id"]), size)
        evaluation = None
        if options.get("target_eval_dataset_id"):
            evaluation = data.labeled_set(
                storage.dataset_dir(options["target_eval_dataset_id"]), size, trained.classes
            )
    except data.DatasetError as exc:
        raise JobFailed("dataset_unusable", f"domain adaptation: {exc}") from exc
    try:
        result = adapt(
            trained.model,
            options,
            cfg=trained.cfg,
            source_val=trained.val,
            source_train=trained.train,
            target=np.asarray(target),
            target_eval=evaluation,
            device=device,
            hooks=hooks,
            class_names=trained.classes,
        )
    except AdaptationNotApplicable as exc:
        raise JobFailed("adaptation_not_applicable", str(exc)) from exc
    trained.model.load_state_dict(result.state_dict)
    summary = {**result.report, "kept": result.kept, "history": result.history}
    hooks.on_event("adapted", {"method": options["method"], "kept": result.kept})
    return summary


def _record_validation_set(claimed: Claimed, storage: Storage, val: ImageSet) -> None:
    """Which images the job validated on, so a team can reproduce its numbers."""
    path = storage.job_dir(claimed.job_id) / "validation_set.json"
    if not path.exists():
        write_json(path, {"paths": val.paths, "labels": [int(x) for x in val.labels]})


def _hooks(claimed: Claimed, beat: Heartbeat, progress_every: float) -> Hooks:
    state = {"last_progress": 0.0}
    metrics = claimed.metrics

    def should_stop() -> StopReason | None:
        if beat.cancelled.is_set():
            return "cancelled"
        if beat.lease_lost.is_set():
            return "lease_lost"
        if PREEMPTED.is_set():
            return "preempted"
        return None

    def on_progress(p: Progress) -> None:
        now = time.monotonic()
        if now - state["last_progress"] < progress_every and p.step < p.steps_per_epoch:
            return
        state["last_progress"] = now
        _write(claimed, progress=_progress_dict(p))

    def on_epoch_end(m: EpochMetrics) -> None:
        metrics[:] = [x for x in metrics if x["epoch"] < m.epoch] + [m.as_dict()]
        _write(
            claimed,
            metrics=list(metrics),
            last_checkpoint_epoch=m.epoch,
            event=("job.progress", {"metrics": m.as_dict()}),
        )

    def on_event(kind: str, payload: dict[str, Any]) -> None:
        _write(claimed, event=(f"job.{kind}", payload))

    return Hooks(
        on_progress=on_progress,
        on_epoch_end=on_epoch_end,
        should_stop=should_stop,
        on_event=on_event,
    )


def _progress_dict(p: Progress) -> dict[str, Any]:
    return {
        "epoch": p.epoch,
        "total_epochs": p.total_epochs,
        "step": p.step,
        "steps_per_epoch": p.steps_per_epoch,
        "fraction": round(p.fraction, 4),
        "eta_seconds": None if p.eta_seconds is None else round(p.eta_seconds, 1),
        "images_per_second": None if p.images_per_second is None else round(p.images_per_second, 1),
        "learning_rate": p.learning_rate,
    }


def _write(
    claimed: Claimed, event: tuple[str, dict[str, Any]] | None = None, **values: Any
) -> None:
    """Update the running job while we hold its lease; record an event with it."""
    with session_scope() as session:
        repo = JobRepository(session)
        held = repo.update_held(claimed.job_id, claimed.owner, **values) if values else True
        if held and event is not None:
            record_event(repo.session, claimed.job_id, *event)


def attempt_workdir(storage: Storage, claimed: Claimed) -> Path:
    """The directory this attempt checkpoints into, seeded with the newest checkpoint
    of earlier attempts (and the files that go with it: frozen weights, features).

    Each attempt writes only its own directory: a worker that was frozen (not dead)
    and wakes up after losing its lease cannot overwrite its successor's checkpoint.
    """
    job_dir = storage.job_dir(claimed.job_id)
    workdir = job_dir / f"attempt-{claimed.attempt}"
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / CHECKPOINT).exists():
        return workdir
    earlier = [d for d in job_dir.glob("attempt-*") if d != workdir and (d / CHECKPOINT).exists()]
    if earlier:
        newest = max(earlier, key=lambda d: (d / CHECKPOINT).stat().st_mtime)
        for path in newest.iterdir():
            if path.is_file() and not path.name.startswith("."):
                # Hard links: the earlier attempt replacing its files later (by rename)
                # does not change ours.
                os.link(path, workdir / path.name)
    return workdir


def model_id_for(job_id: str, attempt: int) -> str:
    # The attempt is a fencing token: a stale worker that still reaches this point
    # writes a directory nobody will point at, never the one that was published.
    return f"mdl_{job_id.removeprefix('job_')}{attempt:02x}"


def _publish(claimed: Claimed, settings: Settings, storage: Storage, trained: Trained) -> None:
    result = trained.result
    if not _still_held(claimed, settings):
        raise TrainingStopped("lease_lost", result.best_epoch, 0)
    model_id = model_id_for(claimed.job_id, claimed.attempt)
    published = write_model(
        storage.model_dir(model_id), model_id, claimed.job_id, claimed.spec, trained
    )
    report = {"best_epoch": result.best_epoch, **result.report}
    for key in ("export", "domain_adaptation"):
        if key in published.metrics:
            report[key] = published.metrics[key]
    with session_scope() as session:
        repo = JobRepository(session)
        models = ModelRepository(session)
        if models.get(model_id) is None:
            models.add(
                Model(
                    id=model_id,
                    team_id=claimed.team_id,
                    job_id=claimed.job_id,
                    name=f"{trained.cfg.architecture} from {claimed.job_id}",
                    source="job",
                    architecture=trained.cfg.architecture,
                    classes=trained.classes,
                    preprocessing=published.preprocessing,
                    metrics=published.metrics,
                    artifacts=published.artifacts,
                    recommended_artifact=published.recommended_artifact,
                    created_at=utcnow(),
                )
            )
        done = repo.update_held(
            claimed.job_id,
            claimed.owner,
            status="succeeded",
            finished_at=utcnow(),
            result_model_id=model_id,
            report=report,
            lease_owner=None,
            lease_expires_at=None,
        )
        if not done:
            # Someone else owns the job now: undo the model row with the transaction.
            raise TrainingStopped("lease_lost", result.best_epoch, 0)
        record_event(
            repo.session,
            claimed.job_id,
            "job.succeeded",
            {"model_id": model_id, "best_epoch": result.best_epoch},
        )


def _still_held(claimed: Claimed, settings: Settings) -> bool:
    with session_scope() as session:
        return JobRepository(session).renew_lease(
            claimed.job_id, claimed.owner, settings.lease_seconds
        )


def _finish(claimed: Claimed, status: str, *, error: dict[str, Any] | None = None) -> None:
    with session_scope() as session:
        repo = JobRepository(session)
        values: dict[str, Any] = {
            "status": status,
            "finished_at": utcnow(),
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if error is not None:
            values["error"] = error
        if repo.update_held(claimed.job_id, claimed.owner, **values):
            record_event(repo.session, claimed.job_id, f"job.{status}", error or {})


def _requeue(claimed: Claimed, event: str, payload: dict[str, Any], *, count: bool) -> None:
    """Hand the job back to the queue (it is re-sent by the dispatcher or redelivered)."""
    with session_scope() as session:
        repo = JobRepository(session)
        values: dict[str, Any] = {
            "status": "queued",
            "lease_owner": None,
            "lease_expires_at": None,
            "dispatched_at": utcnow(),
        }
        if not count:
            # A pre-emption is not the job's fault: it does not use up an attempt.
            values["attempt"] = max(claimed.attempt - 1, 0)
        if not repo.update_held(claimed.job_id, claimed.owner, **values):
            return
        record_event(repo.session, claimed.job_id, event, payload)
    dispatch_job(claimed.job_id)


def _stopped(claimed: Claimed, stop: TrainingStopped) -> str:
    if stop.reason == "cancelled":
        _finish(claimed, "cancelled")
        return "cancelled"
    if stop.reason == "preempted":
        _requeue(claimed, "job.preempted", {"epoch": stop.epoch, "step": stop.step}, count=False)
        return "preempted"
    # lease_lost: another worker owns the job now; write nothing.
    log.warning("job %s: lease lost, stopping", claimed.job_id)
    return "lease_lost"


def install_sigterm_handler() -> None:
    """SIGTERM (a deploy, a pre-emption): let the running job checkpoint and requeue."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        PREEMPTED.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
