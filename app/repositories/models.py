"""SQL for trained and uploaded models."""

from __future__ import annotations

from sqlalchemy import select

from app.db.models import Model
from app.repositories.base import TeamScopedRepository
from app.repositories.datasets import active_job_specs


class ModelRepository(TeamScopedRepository[Model]):
    model = Model

    def used_by_active_job(self, team_id: str, model_id: str) -> bool:
        """Whether a queued or running job continues from the model (or evaluates it)."""
        return any(
            model_id in (spec.get("base_model"), spec.get("model_id"))
            for spec in active_job_specs(self.session, team_id)
        )

    def get_by_job(self, job_id: str) -> Model | None:
        return self.session.scalars(select(Model).where(Model.job_id == job_id)).first()
