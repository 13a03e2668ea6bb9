"""SQL for datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Job
from app.repositories.base import TeamScopedRepository

ACTIVE_JOB_STATUSES = ("queued", "running")


def active_job_specs(session: Session, team_id: str) -> list[dict[str, Any]]:
    """The specs of the team's queued and running jobs."""
    stmt = select(Job.spec).where(Job.team_id == team_id, Job.status.in_(ACTIVE_JOB_STATUSES))
    return [spec or {} for spec in session.scalars(stmt)]


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
        for spec in active_job_specs(self.session, team_id):
            adaptation = spec.get("domain_adaptation") or {}
            used = {
                spec.get("dataset_id"),
                adaptation.get("target_dataset_id"),
                adaptation.get("target_eval_dataset_id"),
            }
            if dataset_id in used:
                return True
        return False

    def delete(self, dataset_id: str) -> None:
        self.session.execute(delete(Dataset).where(Dataset.id == dataset_id))
