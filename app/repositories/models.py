"""SQL for trained and uploaded models."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Model
from app.repositories.base import Page, paginate


class ModelRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, model: Model) -> Model:
        self.session.add(model)
        self.session.flush()
        return model

    def get(self, model_id: str) -> Model | None:
        return self.session.get(Model, model_id)

    def get_for_team(self, team_id: str, model_id: str) -> Model | None:
        stmt = select(Model).where(Model.id == model_id, Model.team_id == team_id)
        return self.session.scalars(stmt).first()

    def get_by_job(self, job_id: str) -> Model | None:
        return self.session.scalars(select(Model).where(Model.job_id == job_id)).first()

    def list_for_team(self, team_id: str, *, limit: int, cursor: str | None) -> Page[Model]:
        stmt = select(Model).where(Model.team_id == team_id)
        return paginate(self.session, stmt, Model.id, limit=limit, cursor=cursor)
