"""Initial schema: searches, trials, front_points, exports.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree). Types and constraint names (op.f) are spelled out here rather than taken from the models or their naming
convention, so this file keeps its meaning when those change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "training", "searching", "exporting", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.Enum(*STATUSES, name="search_status", native_enum=False, length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stage", sa.String(64), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("total_steps", sa.Integer(), nullable=True),
        sa.Column("evaluations_done", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("evaluations_total", sa.Integer(), nullable=True),
        sa.Column("hypervolume", sa.Float(), nullable=True),
        sa.Column("eta_s", sa.Float(), nullable=True),
        sa.Column("folder", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_searches")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_searches_idempotency_key")),
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})",
                           name=op.f("ck_searches_search_status")),
    )
    op.create_index(op.f("ix_searches_status_created_at"), "searches", ["status", "created_at"])

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_key", sa.Text(), nullable=False),
        sa.Column("objectives", sa.JSON(), nullable=False),
        sa.Column("validation", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("macs", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("elapsed_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name=op.f("fk_trials_search_id_searches")),
        sa.UniqueConstraint("search_id", "index", name=op.f("uq_trials_search_id_index")),
        sa.UniqueConstraint("search_id", "config_key", name=op.f("uq_trials_search_id_config_key")),
    )

    op.create_table(
        "front_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("trial_index", sa.Integer(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("objectives", sa.JSON(), nullable=False),
        sa.Column("validation", sa.JSON(), nullable=False),
        sa.Column("test", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("macs", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_front_points")),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name=op.f("fk_front_points_search_id_searches")),
        sa.UniqueConstraint("search_id", "position", name=op.f("uq_front_points_search_id_position")),
    )

    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name=op.f("fk_exports_search_id_searches")),
        sa.UniqueConstraint("search_id", "position", "format", name=op.f("uq_exports_search_id_position_format")),
    )


def downgrade() -> None:
    op.drop_table("exports")
    op.drop_table("front_points")
    op.drop_table("trials")
    op.drop_index("ix_searches_status_created_at", table_name="searches")
    op.drop_table("searches")
