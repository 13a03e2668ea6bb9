"""Use cases for jobs: create (validate, commit, then enqueue), read, list, cancel, events.

What happens to a job after it was created lives in app/services/job_runs.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app import webhook_targets
from app.architectures import ARCHITECTURES, Architecture
from app.config import get_settings
from app.db.base import utcnow
from app.db.models import Dataset, Job, JobEvent, Model, Team
from app.db.session import after_commit, read_scope
from app.errors import Conflict, InvalidInput, found
from app.ids import new_id
from app.repositories.base import Page
from app.repositories.jobs import TERMINAL_STATUSES, JobRepository
from app.schemas.jobs import JobCreate
from app.services import job_runs, quotas
from app.services.datasets import get_dataset
from app.services.events import record_event
from app.services.idempotency import create_once
from app.services.models import get_model
from app.storage import Storage

# The id prefix and the noun (in errors) of each kind of row in the jobs table.
KIND_PREFIXES = {"training": "job", "evaluation": "ev"}
KIND_NOUNS = {"training": "job", "evaluation": "evaluation"}


def resolve_base_model(
    session: Session, team: Team, base_model: str
) -> tuple[Architecture, Model | None]:
    """A registry name, or one of the team's models to continue from."""
    if base_model.startswith("mdl_"):
        model = get_model(session, team, base_model, param="base_model")
        return ARCHITECTURES[model.architecture], model
    arch = ARCHITECTURES.get(base_model)
    if arch is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise InvalidInput(
            f"Unknown base_model {base_model!r}: use one of {known}, or a model id (mdl_…).",
            code="unknown_base_model",
            param="base_model",
        )
    return arch, None


def check_spec(spec: JobCreate, arch: Architecture, from_model: Model | None) -> None:
    hp = spec.hyperparameters
    most = get_settings().max_devices_per_job
    if spec.devices > most:
        raise InvalidInput(
            f"The job asks for {spec.devices} devices; a job may use at most {most} here "
            "(GRAFT_MAX_DEVICES_PER_JOB).",
            code="too_many_devices",
            param="resources.devices",
        )
    if spec.strategy == "partial":
        if spec.unfreeze_last is None:
            raise InvalidInput(
                "strategy `partial` needs `unfreeze_last` (how many backbone blocks train).",
                param="unfreeze_last",
            )
        if spec.unfreeze_last > arch.num_blocks:
            raise InvalidInput(
                f"{arch.name} has {arch.num_blocks} blocks; unfreeze_last must be at most that.",
                param="unfreeze_last",
            )
    elif spec.unfreeze_last is not None:
        raise InvalidInput(
            "`unfreeze_last` applies to strategy `partial` only.", param="unfreeze_last"
        )
    if hp.image_size % arch.size_multiple:
        raise InvalidInput(
            f"{arch.name} needs an image_size that is a multiple of {arch.size_multiple}.",
            param="hyperparameters.image_size",
        )
    uses_imagenet = from_model is None and spec.pretrained_weights == "imagenet"
    if uses_imagenet and arch.size_multiple > 1 and hp.image_size != arch.default_image_size:
        raise InvalidInput(
            f"{arch.name}'s ImageNet weights need image_size {arch.default_image_size}.",
            param="hyperparameters.image_size",
        )
    if (
        from_model is not None
        and from_model.preprocessing.get("image_size")
        not in (
            None,
            hp.image_size,
        )
        and arch.size_multiple > 1
    ):
        raise InvalidInput(
            f"{from_model.id} was trained at image_size {from_model.preprocessing['image_size']}.",
            param="hyperparameters.image_size",
        )
    if hp.random_invert > 0 and (hp.augmentation == "none" or spec.strategy == "linear_probe"):
        raise InvalidInput(
            "random_invert is part of augmentation: it needs augmentation light or strong and "
            "strategy partial or full (a linear probe trains on cached, unaugmented features).",
            param="hyperparameters.random_invert",
        )
    if hp.warmup_epochs >= hp.epochs and hp.warmup_epochs > 0:
        raise InvalidInput(
            "warmup_epochs must be fewer than epochs.", param="hyperparameters.warmup_epochs"
        )


def create_job_idempotent(
    session: Session, team: Team, spec: JobCreate, idempotency_key: str | None
) -> tuple[Job, bool]:
    """create_job, once per Idempotency-Key; returns the job and whether it is new."""
    return create_once(
        session,
        JobRepository(session),
        team_id=team.id,
        scope="jobs.create",
        key=idempotency_key,
        body=spec,
        create=lambda: create_job(session, team, spec),
    )


def ready_dataset(
    session: Session, team: Team, dataset_id: str, *, kind: str, param: str
) -> Dataset:
    dataset = get_dataset(session, team, dataset_id, param=param)
    if dataset.status != "ready":
        raise InvalidInput(
            f"Dataset {dataset.id} is {dataset.status}, not ready.",
            code="dataset_not_ready",
            param=param,
        )
    if dataset.kind != kind:
        raise InvalidInput(
            f"Dataset {dataset.id} is {dataset.kind}; {param} needs a {kind} dataset.",
            code=f"dataset_not_{kind}",
            param=param,
        )
    return dataset


def _check_adaptation(
    session: Session, team: Team, spec: JobCreate, source: Dataset, arch: Architecture
) -> None:
    da = spec.domain_adaptation
    if da is None:
        return
    if da.method == "adabn" and not arch.has_batchnorm:
        raise InvalidInput(
            f"adabn re-estimates BatchNorm statistics, and {arch.name} has no BatchNorm "
            "layer; use tent, dann or pseudo_label.",
            code="adaptation_not_applicable",
            param="domain_adaptation.method",
        )
    ready_dataset(
        session,
        team,
        da.target_dataset_id,
        kind="unlabeled",
        param="domain_adaptation.target_dataset_id",
    )
    if da.method == "auto" and da.target_eval_dataset_id is None:
        raise InvalidInput(
            "auto keeps the method that scores best on labelled target images; give a "
            "labeled dataset of the target domain in target_eval_dataset_id.",
            code="target_eval_required",
            param="domain_adaptation.target_eval_dataset_id",
        )
    if da.target_eval_dataset_id is not None:
        param = "domain_adaptation.target_eval_dataset_id"
        evaluation = ready_dataset(
            session, team, da.target_eval_dataset_id, kind="labeled", param=param
        )
        unknown = {c["name"] for c in evaluation.classes} - {c["name"] for c in source.classes}
        if unknown:
            raise InvalidInput(
                f"Dataset {evaluation.id} has classes the training dataset does not: "
                f"{', '.join(sorted(unknown))}.",
                code="class_mismatch",
                param=param,
            )


def create_job(session: Session, team: Team, spec: JobCreate) -> Job:
    dataset = ready_dataset(session, team, spec.dataset_id, kind="labeled", param="dataset_id")
    arch, from_model = resolve_base_model(session, team, spec.base_model)
    check_spec(spec, arch, from_model)
    _check_adaptation(session, team, spec, dataset, arch)
    if spec.webhook_url is not None:
        allow_private = get_settings().webhook_allow_private
        try:
            webhook_targets.check_url(str(spec.webhook_url), allow_private=allow_private)
        except webhook_targets.RefusedTarget as exc:
            raise InvalidInput(
                str(exc), code="webhook_url_not_allowed", param="webhook_url"
            ) from exc
    return enqueue(
        session,
        team,
        kind="training",
        dataset_id=dataset.id,
        spec=spec.model_dump(mode="json"),
        queued={"architecture": arch.name},
    )


def enqueue(
    session: Session,
    team: Team,
    *,
    kind: str,
    dataset_id: str,
    spec: dict[str, Any],
    queued: dict[str, Any],
    search_id: str | None = None,
    trial_number: int | None = None,
) -> Job:
    """A new row for a worker (a training job or an evaluation), queued and sent to the
    broker once committed; `queued` is its job.queued event's data."""
    quotas.check_can_queue(session, get_settings(), team)
    now = utcnow()
    job = Job(
        id=new_id(KIND_PREFIXES[kind]),
        team_id=team.id,
        kind=kind,
        dataset_id=dataset_id,
        spec=spec,
        status="queued",
        created_at=now,
        metrics=[],
        attempt=0,
        cancel_requested=False,
        dispatched_at=now,
        search_id=search_id,
        trial_number=trial_number,
    )
    repo = JobRepository(session)
    repo.add(job)
    record_event(repo.session, job.id, "job.queued", queued)
    job_runs.dispatch_after_commit(session, job)
    return job


def of_kind(job: Job | None, kind: str) -> Job | None:
    """The row if it is of `kind`: an evaluation's id reads as missing under /v1/jobs."""
    return job if job is not None and job.kind == kind else None


def get_job(session: Session, team: Team, job_id: str, *, kind: str = "training") -> Job:
    job = of_kind(JobRepository(session).get_for_team(team.id, job_id), kind)
    return found(job, KIND_NOUNS[kind], job_id, f"{KIND_NOUNS[kind]}_id")


def list_jobs(
    session: Session,
    team: Team,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
    kind: str = "training",
) -> Page[Job]:
    return JobRepository(session).list_for_team(
        team.id, kind=kind, status=status, limit=limit, cursor=cursor
    )


def cancel_job(session: Session, team: Team, job_id: str, *, kind: str = "training") -> Job:
    return job_runs.cancel(session, get_job(session, team, job_id, kind=kind))


def delete_job(session: Session, storage: Storage, team: Team, job_id: str) -> None:
    """Delete a finished job, its events and its files (checkpoints, logs). The model it
    produced stays: delete that separately."""
    job = get_job(session, team, job_id)
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(
            f"Job {job_id} is {job.status}; cancel it and wait for it to end, then delete it.",
            code="job_active",
            param="job_id",
        )
    JobRepository(session).remove(job)
    after_commit(session, lambda: storage.remove_tree(storage.job_dir(job_id)))


def poll_events(job_id: str, *, after_seq: int) -> tuple[list[JobEvent], bool]:
    """One short read for an event stream: the job's events after `after_seq`, and
    whether the job had ended before they were read (then no event can follow them)."""
    with read_scope() as session:
        repo = JobRepository(session)
        job = repo.get(job_id)
        ended = job is None or job.status in TERMINAL_STATUSES
        # Read after the status: the events that came with the end are then included.
        return repo.events(job_id, after_seq=after_seq), ended


def list_events(session: Session, team: Team, job_id: str, *, after_seq: int = 0) -> list[JobEvent]:
    job = get_job(session, team, job_id)
    return JobRepository(session).events(job.id, after_seq=after_seq)
