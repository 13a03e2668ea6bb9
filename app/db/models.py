"""ORM rows. Only repositories query them; services and routers see them as values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    webhook_secret: Mapped[str] = mapped_column(String(100))
    # After a rotation the old secret still signs deliveries until this passes.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The admin's per-team overrides of the quota defaults in Settings, by quota name.
    quotas: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    # sha256 of the key: the key itself has 256 bits of entropy, so a fast hash is safe
    # and lets us look it up by equality.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200), default="")
    # "read" (read and download) or "read,write" (also create, cancel and delete).
    scopes: Mapped[str] = mapped_column(String(40), default="read,write")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Written at most once per LAST_USED_RESOLUTION (app/services/teams.py), so the
    # read path does not write on every request.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_team_id_sha256", "team_id", "sha256"),
        Index("ix_datasets_team_id_id", "team_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    classes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    splits: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    rejected: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    near_duplicates: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONType, default=list, server_default="[]"
    )
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    # A team's list pages read these in id order (keyset pagination), with or without
    # a status filter: the page is the index's next rows, not a sort of the team's jobs.
    # Evaluations are rows of this table too (kind "evaluation"): they run on a worker
    # under the same lifecycle (claim, lease, cancel, reap), so the kind leads each index.
    __table_args__ = (
        Index("ix_jobs_team_id_kind_id", "team_id", "kind", "id"),
        Index("ix_jobs_team_id_kind_status_id", "team_id", "kind", "status", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    # "training" (job_…: fine-tune and export a model) or "evaluation" (ev_…: score a
    # model on a labelled dataset).
    kind: Mapped[str] = mapped_column(String(20), default="training", server_default="training")
    # A finished job outlives its dataset; the spec still names the dataset it used.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True, nullable=True
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    result_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Reliability: the row, not the broker, decides who runs a job (DESIGN.md section 4).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_checkpoint_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The last event's per-job number: incremented in the same UPDATE that numbers it.
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    # A trial of a model search: the search, and its trial's number in the Optuna study.
    search_id: Mapped[str | None] = mapped_column(
        ForeignKey("searches.id", ondelete="SET NULL"), index=True, nullable=True
    )
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Search(Base):
    """A model search: its trials are rows of `jobs` (search_id), steered by the Optuna
    study of the same name in Optuna's tables (migration 0007)."""

    __tablename__ = "searches"
    __table_args__ = (Index("ix_searches_team_id_id", "team_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    # The request as validated (SearchCreate, defaults filled in).
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # running → succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(20), index=True)
    # Trials created so far: the slot lock. A new trial takes slot n only by moving
    # this from n to n + 1 in one conditional UPDATE, so no two trials share a slot.
    trials_created: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("uq_job_events_job_id_seq", "job_id", "seq", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # The id a team sees: 1, 2, 3… per job, so it says nothing of other teams' jobs.
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(60))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_team_id_id", "team_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, unique=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(20))
    # "model", or "backbone": uploaded weights without a head (and no classes).
    kind: Mapped[str] = mapped_column(String(20), default="model", server_default="model")
    architecture: Mapped[str] = mapped_column(String(60))
    classes: Mapped[list[str]] = mapped_column(JSONType)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    recommended_artifact: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # The artifacts' bytes on disk, counted against the team's stored_bytes quota.
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    team_id: Mapped[str] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[str] = mapped_column(String(60), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """The outbox of webhook calls: written with the event, sent by the worker's sender."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(60))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
