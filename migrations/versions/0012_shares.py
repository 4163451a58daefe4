"""Parameter-shared models made on demand: the shares table.

Revision ID: 0012
Revises: 0011
Create Date: issue 34

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree). A new table only: no existing table is altered and no existing row is touched. Its partial unique index
(one queued, running or succeeded share per settings key) works on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
KEPT = sa.text("status IN ('queued', 'running', 'succeeded')")


def upgrade() -> None:
    op.create_table(
        "shares",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("settings_key", sa.String(64), nullable=False),
        sa.Column("status", sa.Enum(*STATUSES, name="share_status", native_enum=False, length=16), nullable=False),
        sa.Column("stage", sa.String(64), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("total_steps", sa.Integer(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("device", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
        sa.ForeignKeyConstraint(["owner_id"], ["api_tokens.id"], name=op.f("fk_shares_owner_id_api_tokens")),
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name=op.f("ck_shares_share_status")),
    )
    op.create_index(op.f("ix_shares_owner_id"), "shares", ["owner_id"])
    op.create_index(op.f("ix_shares_status_created_at"), "shares", ["status", "created_at"])
    op.create_index(op.f("uq_shares_kept_settings"), "shares", ["settings_key"], unique=True, sqlite_where=KEPT,
                    postgresql_where=KEPT)


def downgrade() -> None:
    for name in ("uq_shares_kept_settings", "ix_shares_status_created_at", "ix_shares_owner_id"):
        op.drop_index(name, table_name="shares")
    op.drop_table("shares")
