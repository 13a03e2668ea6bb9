"""SQL for a team's usage: what its quotas count, in one round trip."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ScalarSelect, func, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Job, Model


@dataclass(frozen=True)
class Usage:
    running_jobs: int
    queued_jobs: int
    datasets: int
    dataset_bytes: int
    model_bytes: int

    @property
    def stored_bytes(self) -> int:
        return self.dataset_bytes + self.model_bytes


class UsageRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def for_team(self, team_id: str) -> Usage:
        def jobs(status: str) -> ScalarSelect[int]:
            return (
                select(func.count())
                .select_from(Job)
                .where(Job.team_id == team_id, Job.status == status)
                .scalar_subquery()
            )

        datasets = select(
            func.count().label("n"), func.coalesce(func.sum(Dataset.size_bytes), 0).label("bytes")
        ).where(Dataset.team_id == team_id)
        model_bytes = select(func.coalesce(func.sum(Model.size_bytes), 0)).where(
            Model.team_id == team_id
        )
        sub = datasets.subquery()
        stmt = select(
            jobs("running"),
            jobs("queued"),
            sub.c.n,
            sub.c.bytes,
            model_bytes.scalar_subquery(),
        )
        row = self.session.execute(stmt).one()
        return Usage(*(int(v or 0) for v in row))
