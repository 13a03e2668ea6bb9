"""key lifecycle, quotas, per-job event numbers, model sizes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 11:30:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("previous_webhook_secret", sa.String(length=100), nullable=True)
        )
        batch_op.add_column(
            sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("quotas", JSON, nullable=False, server_default="{}"))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("name", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("scopes", sa.String(length=40), nullable=False, server_default="read,write")
        )
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("event_count", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("size_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))

    # Number the existing events 1, 2, 3… per job, in the order they were written.
    conn = op.get_bind()
    counts: dict[str, int] = {}
    rows = conn.execute(sa.text("SELECT id, job_id FROM job_events ORDER BY job_id, id"))
    for event_id, job_id in list(rows):
        counts[job_id] = counts.get(job_id, 0) + 1
        conn.execute(
            sa.text("UPDATE job_events SET seq = :seq WHERE id = :id"),
            {"seq": counts[job_id], "id": event_id},
        )
    for job_id, count in counts.items():
        conn.execute(
            sa.text("UPDATE jobs SET event_count = :n WHERE id = :id"), {"n": count, "id": job_id}
        )
    models = conn.execute(sa.text("SELECT id, artifacts FROM models"))
    for model_id, artifacts in list(models):
        if isinstance(artifacts, str):  # SQLite hands JSON back as text
            artifacts = json.loads(artifacts)
        size = sum(int(a.get("size_bytes", 0)) for a in artifacts or [])
        conn.execute(
            sa.text("UPDATE models SET size_bytes = :n WHERE id = :id"), {"n": size, "id": model_id}
        )

    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index("uq_job_events_job_id_seq", ["job_id", "seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_index("uq_job_events_job_id_seq")
        batch_op.drop_column("seq")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("size_bytes")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("event_count")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        for column in ("last_used_at", "expires_at", "scopes", "name"):
            batch_op.drop_column(column)
    with op.batch_alter_table("teams", schema=None) as batch_op:
        for column in ("quotas", "previous_secret_expires_at", "previous_webhook_secret"):
            batch_op.drop_column(column)
