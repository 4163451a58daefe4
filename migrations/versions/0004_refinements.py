"""On-demand refines of single front points: the refinements table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree). A new table only: no existing table is altered, so no batch mode (SQLite's copy-and-rename) is needed and
no existing row is touched. Its partial unique index (one running refinement per search) works on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    op.create_table(
        "refinements",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("search_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("status", sa.Enum(*STATUSES, name="refinement_status", native_enum=False, length=16),
                  nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refinements")),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name=op.f("fk_refinements_search_id_searches")),
        sa.ForeignKeyConstraint(["owner_id"], ["api_tokens.id"], name=op.f("fk_refinements_owner_id_api_tokens")),
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})",
                           name=op.f("ck_refinements_refinement_status")),
    )
    op.create_index(op.f("ix_refinements_search_id"), "refinements", ["search_id"])
    op.create_index(op.f("ix_refinements_owner_id"), "refinements", ["owner_id"])
    op.create_index(op.f("ix_refinements_status_created_at"), "refinements", ["status", "created_at"])
    op.create_index(op.f("uq_refinements_running_search_id"), "refinements", ["search_id"], unique=True,
                    sqlite_where=RUNNING, postgresql_where=RUNNING)


def downgrade() -> None:
    for name in ("uq_refinements_running_search_id", "ix_refinements_status_created_at", "ix_refinements_owner_id",
                 "ix_refinements_search_id"):
        op.drop_index(name, table_name="refinements")
    op.drop_table("refinements")
