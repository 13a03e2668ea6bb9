"""team list indexes in id order

A team's list (GET /v1/jobs, /v1/datasets, /v1/models, newest first, keyset cursor)
read every row of the team through (team_id[, status]) and sorted them: 21 ms for a
team with 10,000 jobs. (team_id, id) and (team_id, status, id) hand the page over in
order; they also serve the foreign key and the quota counts the old indexes served.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, old indexes, new indexes as name: columns)
CHANGES = [
    (
        "jobs",
        {"ix_jobs_team_id": ["team_id"], "ix_jobs_team_id_status": ["team_id", "status"]},
        {
            "ix_jobs_team_id_id": ["team_id", "id"],
            "ix_jobs_team_id_status_id": ["team_id", "status", "id"],
        },
    ),
    (
        "datasets",
        {"ix_datasets_team_id": ["team_id"]},
        {"ix_datasets_team_id_id": ["team_id", "id"]},
    ),
    ("models", {"ix_models_team_id": ["team_id"]}, {"ix_models_team_id_id": ["team_id", "id"]}),
]


def _swap(drop: int, create: int) -> None:
    for table, *indexes in CHANGES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, columns in indexes[create].items():
                batch_op.create_index(name, columns, unique=False)
            for name in indexes[drop]:
                batch_op.drop_index(name)


def upgrade() -> None:
    _swap(drop=0, create=1)


def downgrade() -> None:
    _swap(drop=1, create=0)
