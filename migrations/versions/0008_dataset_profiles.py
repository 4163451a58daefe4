"""What an upload was checked as, and what a search needs to know of its columns: four nullable columns on datasets.

Revision ID: 0008
Revises: 0007
Create Date: issue 30

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree).

* `label_column`, `task_type`: the label column an upload's classes were checked in, and as what (classification
  or regression); NULL when the file had no `label` column and none was named.
* `label_counts`: rows per label of that column (classification only), shown to the owner and used to refuse a
  search whose test labels its train file lacks.
* `profile`: per column, what supernet.readers.check_column judges a column by (first blank row, distinct values
  up to the class limit, first non-number, first fraction), so POST /searches refuses a text or label column that
  could not run without reading the file again.

Rows stored before this revision have NULL in all four: their searches are checked by the worker's reader alone.
Added in batch mode, which is how SQLite alters a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("label_column", "task_type", "label_counts", "profile")


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("label_column", sa.String(200), nullable=True))
        batch.add_column(sa.Column("task_type", sa.String(16), nullable=True))
        batch.add_column(sa.Column("label_counts", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("profile", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
