"""The digest of a search request as the client sent it: searches.request_digest.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree). `searches.request` holds the request with the server's defaults filled in, so a client retrying a POST
with its idempotency key was refused (409, "a different request") when a default changed between the two calls,
for instance across an upgrade or between two servers of different versions behind one address. The digest of
the body as sent lets the retry match; NULL for searches stored before this revision, which keep the old
comparison. Added and dropped in batch mode, which is how SQLite alters a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("request_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("request_digest")
