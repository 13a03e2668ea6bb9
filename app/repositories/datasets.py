"""SQL for datasets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from app.db.models import Dataset, Job
from app.repositories.base import TeamScopedRepository

ACTIVE_JOB_STATUSES = ("queued", "running")


class DatasetRepository(TeamScopedRepository[Dataset]):
    model = Dataset

    def find_by_sha256(self, team_id: str, sha256: str, kind: str) -> Dataset | None:
        stmt = select(Dataset).where(
            Dataset.team_id == team_id,
            Dataset.sha256 == sha256,
            Dataset.kind == kind,
            Dataset.status != "failed",
        )
        return self.session.scalars(stmt).first()

    def processing_since(self, before: datetime) -> list[Dataset]:
        stmt = select(Dataset).where(Dataset.status == "processing", Dataset.created_at < before)
        return list(self.session.scalars(stmt))

    def used_by_active_job(self, team_id: str, dataset_id: str) -> bool:
        """Whether a queued or running job trains on the dataset or adapts to it."""
        stmt = select(Job.dataset_id, Job.spec).where(
            Job.team_id == team_id, Job.status.in_(ACTIVE_JOB_STATUSES)
        )
        for used, spec in self.session.execute(stmt):
            adaptation = (spec or {}).get("domain_adaptation") or {}
            targets = {
                adaptation.get("target_dataset_id"),
                adaptation.get("target_eval_dataset_id"),
            }
            if dataset_id == used or dataset_id in targets:
                return True
        return False

    def delete(self, dataset_id: str) -> None:
        self.session.execute(delete(Dataset).where(Dataset.id == dataset_id))
