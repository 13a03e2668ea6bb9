"""jobs.kind: evaluations are jobs of kind "evaluation"; the kind leads the list indexes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = {
    "ix_jobs_team_id_id": ["team_id", "id"],
    "ix_jobs_team_id_status_id": ["team_id", "status", "id"],
}
NEW = {
    "ix_jobs_team_id_kind_id": ["team_id", "kind", "id"],
    "ix_jobs_team_id_kind_status_id": ["team_id", "kind", "status", "id"],
}


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=20), server_default="training", nullable=False)
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, columns in NEW.items():
            batch_op.create_index(name, columns, unique=False)
        for name in OLD:
            batch_op.drop_index(name)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, columns in OLD.items():
            batch_op.create_index(name, columns, unique=False)
        for name in NEW:
            batch_op.drop_index(name)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("kind")
