"""Model search: the searches table, jobs.search_id and trial_number, Optuna's tables

Optuna's RDB storage keeps each search's study in Graft's own database. Its tables are
created here, from the pinned Optuna's own table definitions, rather than by Optuna at
run time: Optuna would otherwise stamp its revision into `alembic_version`, the table
that holds Graft's. Graft opens the storage with skip_table_creation and
skip_compatibility_check (app/services/studies.py), so a new Optuna schema comes with a
new Graft migration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from optuna.storages._rdb import models as optuna_models
from optuna.version import __version__ as optuna_version
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=True),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("trials_created", sa.Integer(), nullable=False),
        sa.Column("error", _json(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name="fk_searches_team_id_teams", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_searches_dataset_id_datasets",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_searches"),
    )
    op.create_index("ix_searches_team_id_id", "searches", ["team_id", "id"], unique=False)
    op.create_index("ix_searches_status", "searches", ["status"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_jobs_search_id_searches", "searches", ["search_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_index("ix_jobs_search_id", ["search_id"], unique=False)
    bind = op.get_bind()
    optuna_models.BaseModel.metadata.create_all(bind)
    version_info = optuna_models.VersionInfoModel.__table__
    if bind.execute(sa.select(sa.func.count()).select_from(version_info)).scalar_one() == 0:
        bind.execute(
            version_info.insert().values(
                version_info_id=1,
                schema_version=optuna_models.SCHEMA_VERSION,
                library_version=optuna_version,
            )
        )


def downgrade() -> None:
    optuna_models.BaseModel.metadata.drop_all(op.get_bind())
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_search_id")
        batch_op.drop_constraint("fk_jobs_search_id_searches", type_="foreignkey")
        batch_op.drop_column("trial_number")
        batch_op.drop_column("search_id")
    op.drop_index("ix_searches_status", table_name="searches")
    op.drop_index("ix_searches_team_id_id", table_name="searches")
    op.drop_table("searches")
