"""Use cases for datasets: receive an upload, ingest it, list, read, delete."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Dataset, Team
from app.db.session import after_commit, on_rollback
from app.errors import AppError, Conflict, PayloadTooLarge, found
from app.ids import new_id
from app.queue import enqueue_ingest
from app.repositories.base import Page
from app.repositories.datasets import DatasetRepository
from app.services import quotas
from app.services.archive import ArchiveLimits
from app.services.idempotency import idempotent, request_hash
from app.services.ingest import IngestLimits, IngestReport, ingest
from app.services.layout import Kind
from app.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class Upload:
    path: Path
    size: int
    sha256: str


def upload_too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is larger than this team's limit of {max_bytes} bytes (quota "
        "`upload_bytes`, at most GRAFT_MAX_UPLOAD_BYTES).",
        code="upload_too_large",
        param="file",
    )


def ingest_limits(settings: Settings) -> IngestLimits:
    return IngestLimits(
        archive=ArchiveLimits(
            max_total_bytes=settings.archive_max_total_bytes,
            max_file_bytes=settings.archive_max_file_bytes,
            max_entries=settings.archive_max_entries,
            max_ratio=settings.archive_max_ratio,
        ),
        max_image_pixels=settings.max_image_pixels,
        min_image_side=settings.min_image_side,
        max_file_bytes=settings.max_image_bytes,
    )


def create_dataset_idempotent(
    session: Session,
    storage: Storage,
    settings: Settings,
    team: Team,
    *,
    name: str,
    kind: Kind,
    upload: Upload,
    idempotency_key: str | None,
) -> tuple[Dataset, bool]:
    """create_dataset, once per Idempotency-Key; returns the dataset and whether it is new."""
    repo = DatasetRepository(session)
    # A known archive (same sha256) is not new either, with or without a key.
    new_archive = [True]

    def create() -> Dataset:
        dataset, new_archive[0] = create_dataset(
            session, storage, settings, team, name=name, kind=kind, upload=upload
        )
        return dataset

    try:
        dataset, created = idempotent(
            session,
            team_id=team.id,
            scope="datasets.create",
            key=idempotency_key,
            fingerprint=request_hash({"sha256": upload.sha256, "name": name, "kind": kind}),
            load=lambda dataset_id: repo.get_for_team(team.id, dataset_id),
            create=create,
            id_of=lambda d: d.id,
        )
    finally:
        upload.path.unlink(missing_ok=True)
    return dataset, created and new_archive[0]


def create_dataset(
    session: Session,
    storage: Storage,
    settings: Settings,
    team: Team,
    *,
    name: str,
    kind: Kind,
    upload: Upload,
) -> tuple[Dataset, bool]:
    """Returns the dataset and whether it is new (False: the same archive was known)."""
    repo = DatasetRepository(session)
    existing = repo.find_by_sha256(team.id, upload.sha256, kind)
    if existing is not None:
        upload.path.unlink(missing_ok=True)
        return existing, False
    quotas.check_can_store(session, settings, team, upload.size, new_dataset=True)
    dataset = Dataset(
        id=new_id("ds"),
        team_id=team.id,
        name=name,
        kind=kind,
        status="processing",
        num_images=0,
        classes=[],
        splits=None,
        rejected=[],
        warnings=[],
        sha256=upload.sha256,
        size_bytes=upload.size,
        created_at=utcnow(),
    )
    if upload.size <= settings.inline_ingest_bytes:
        try:
            report = ingest(
                upload.path,
                storage.dataset_dir(dataset.id),
                kind=kind,
                limits=ingest_limits(settings),
            )
        finally:
            upload.path.unlink(missing_ok=True)
        # If the row does not commit, the files it would point at must go too.
        on_rollback(session, lambda: storage.remove_tree(storage.dataset_dir(dataset.id)))
        storage.publish(storage.dataset_dir(dataset.id))
        apply_report(dataset, report)
        repo.add(dataset)
        return dataset, True
    archive = pending_archive(storage, dataset.id)
    archive.parent.mkdir(parents=True, exist_ok=True)
    os.replace(upload.path, archive)
    on_rollback(session, lambda: storage.remove_file(archive))
    storage.publish(archive)  # the worker that ingests it may be on another host
    repo.add(dataset)
    after_commit(session, lambda: _enqueue_ingest(dataset.id))
    return dataset, True


def _enqueue_ingest(dataset_id: str) -> None:
    if not enqueue_ingest(dataset_id):
        log.warning("dataset %s waits for the dispatcher: broker unreachable", dataset_id)


def pending_archive(storage: Storage, dataset_id: str) -> Path:
    return storage.root / "uploads" / f"{dataset_id}.archive"


def ingest_pending(session: Session, storage: Storage, settings: Settings, dataset_id: str) -> None:
    """Ingest an archive that was too large to ingest in the request (runs in the worker)."""
    repo = DatasetRepository(session)
    dataset = repo.get(dataset_id)
    archive = pending_archive(storage, dataset_id)
    if dataset is None or dataset.status != "processing":
        storage.remove_file(archive)  # deleted (or done) meanwhile: nothing to ingest
        return
    storage.download(archive)
    dest = storage.dataset_dir(dataset_id)
    if dest.exists():  # a previous attempt finished the files but not the row
        shutil.rmtree(dest)
    try:
        report = ingest(
            archive, dest, kind=cast(Kind, dataset.kind), limits=ingest_limits(settings)
        )
    except AppError as exc:
        dataset.status = "failed"
        dataset.error = {"code": exc.code, "message": exc.message, "param": exc.param}
    else:
        storage.publish(dest)
        apply_report(dataset, report)
    storage.remove_file(archive)


def apply_report(dataset: Dataset, report: IngestReport) -> None:
    data: dict[str, Any] = report.to_dict()
    dataset.status = "ready"
    dataset.num_images = int(data["num_images"])
    dataset.classes = list(data["classes"])
    dataset.splits = data.get("splits")
    dataset.rejected = list(data["rejected"])
    dataset.warnings = list(data["warnings"])
    dataset.near_duplicates = list(data["near_duplicates"])


def get_dataset(
    session: Session, team: Team, dataset_id: str, *, param: str = "dataset_id"
) -> Dataset:
    dataset = DatasetRepository(session).get_for_team(team.id, dataset_id)
    return found(dataset, "dataset", dataset_id, param)


def list_datasets(session: Session, team: Team, *, limit: int, cursor: str | None) -> Page[Dataset]:
    return DatasetRepository(session).list_for_team(team.id, limit=limit, cursor=cursor)


def delete_dataset(session: Session, storage: Storage, team: Team, dataset_id: str) -> None:
    dataset = get_dataset(session, team, dataset_id)
    repo = DatasetRepository(session)
    if repo.used_by_active_job(team.id, dataset.id):
        raise Conflict(
            f"Dataset {dataset_id} is used by a queued or running job; cancel it first.",
            code="dataset_in_use",
            param="dataset_id",
        )
    repo.delete(dataset.id)

    def remove_files() -> None:
        storage.remove_tree(storage.dataset_dir(dataset_id))
        storage.remove_file(pending_archive(storage, dataset_id))

    after_commit(session, remove_files)
