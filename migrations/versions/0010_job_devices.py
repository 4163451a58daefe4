"""Where each job ran: a nullable `device` column on searches, refinements and exports.

Revision ID: 0010
Revises: 0009
Create Date: issue 35

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree).

* `device`: set by the worker when a run of the job starts ("cpu", or "cuda:0 (NVIDIA H200)"); a job resumed on
  another worker records the device of its latest run. NULL for a job not started yet and every row stored before
  this revision.

Added in batch mode, which is how SQLite alters a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("searches", "refinements", "exports")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("device", sa.String(length=200), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("device")
