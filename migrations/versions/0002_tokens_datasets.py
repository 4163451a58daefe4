"""API tokens (stored hashed), uploaded datasets, and the owner of each search.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree). `searches.owner_id` is added in batch mode, which is how SQLite alters a table (copy and rename).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )

    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner_id", sa.String(32), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("num_rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.ForeignKeyConstraint(["owner_id"], ["api_tokens.id"], name=op.f("fk_datasets_owner_id_api_tokens")),
    )
    op.create_index(op.f("ix_datasets_owner_id"), "datasets", ["owner_id"])

    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("owner_id", sa.String(32), nullable=True))
        batch.create_foreign_key(op.f("fk_searches_owner_id_api_tokens"), "api_tokens", ["owner_id"], ["id"])
        batch.create_index(op.f("ix_searches_owner_id"), ["owner_id"])


def downgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.drop_index("ix_searches_owner_id")
        batch.drop_constraint("fk_searches_owner_id_api_tokens", type_="foreignkey")
        batch.drop_column("owner_id")
    op.drop_index("ix_datasets_owner_id", table_name="datasets")
    op.drop_table("datasets")
    op.drop_table("api_tokens")
