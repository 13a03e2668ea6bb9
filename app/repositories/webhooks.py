"""SQL for the webhook outbox."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from app.db.models import WebhookDelivery
from app.repositories.base import RepositoryBase


class WebhookRepository(RepositoryBase[WebhookDelivery, int]):
    model = WebhookDelivery

    def due(self, now: datetime, limit: int = 20) -> list[WebhookDelivery]:
        """For each job, its oldest pending delivery, if it is due: deliveries of one job
        go out in order, and a retrying one holds back the ones after it."""
        oldest = (
            select(func.min(WebhookDelivery.id))
            .where(WebhookDelivery.status == "pending")
            .group_by(WebhookDelivery.job_id)
        )
        stmt = (
            select(WebhookDelivery)
            .where(WebhookDelivery.id.in_(oldest), WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.id)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

    def lease(self, delivery_id: int, now: datetime, seconds: float) -> bool:
        """Take a due delivery for `seconds`, so two senders never post the same one."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + timedelta(seconds=seconds))
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    def for_job(self, job_id: str) -> list[WebhookDelivery]:
        stmt = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        return list(self.session.scalars(stmt.order_by(WebhookDelivery.id)))
