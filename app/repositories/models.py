"""SQL for trained and uploaded models."""

from __future__ import annotations

from sqlalchemy import select

from app.db.models import Model
from app.repositories.base import TeamScopedRepository


class ModelRepository(TeamScopedRepository[Model]):
    model = Model

    def get_by_job(self, job_id: str) -> Model | None:
        return self.session.scalars(select(Model).where(Model.job_id == job_id)).first()
