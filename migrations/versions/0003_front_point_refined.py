"""The refined model of a front point: front_points.refined.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree). `front_points.refined` holds front.json's "refined" entry of a point refined after the search (its
validation and test metrics, training time and settings); NULL for a point that was not refined, which is every
point stored before this revision. Added and dropped in batch mode, which is how SQLite alters a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("front_points") as batch:
        batch.add_column(sa.Column("refined", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("front_points") as batch:
        batch.drop_column("refined")
