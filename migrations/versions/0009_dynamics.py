"""What a sub-network that changes with its input costs on the task's real inputs: a nullable `dynamics` JSON
column on trials and front_points.

Revision ID: 0009
Revises: 0008
Create Date: issue 31

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree).

* `dynamics`: for a sub-network with runtime fields (token elimination's `token_keep`), its expected MACs over the
  validation examples at their own lengths and the mean tokens each kept layer passes on; NULL for a static
  sub-network, whose cost the other columns already say, and for every row stored before this revision.

Added in batch mode, which is how SQLite alters a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("trials", "front_points")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("dynamics", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("dynamics")
