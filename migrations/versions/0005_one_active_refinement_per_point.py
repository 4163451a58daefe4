"""At most one queued or running refinement per front point: a partial unique index on refinements.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree). Two requests to refine the same point that arrived at the same instant could both be queued under 0004
(each checked for an active one before either inserted); the index makes the database keep one. A database that
already holds such duplicates keeps the oldest active refinement of each point and cancels the others (with the
reason in `error`) before the index is built; no row is deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status IN ('queued', 'running')")

# A queued refinement of a point that has an older active one (or a running one) is cancelled; the running one of a
# point always wins, then the oldest.
CANCEL_DUPLICATES = sa.text("""
UPDATE refinements
SET status = 'cancelled', finished_at = CURRENT_TIMESTAMP,
    error = 'a duplicate of another queued or running refinement of this point (cancelled by migration 0005)'
WHERE status = 'queued' AND EXISTS (
    SELECT 1 FROM refinements AS other
    WHERE other.search_id = refinements.search_id AND other.position = refinements.position
      AND other.id != refinements.id
      AND (other.status = 'running'
           OR (other.status = 'queued' AND (other.created_at < refinements.created_at
                                            OR (other.created_at = refinements.created_at
                                                AND other.id < refinements.id)))))
""")


def upgrade() -> None:
    op.execute(CANCEL_DUPLICATES)
    op.create_index(op.f("uq_refinements_active_point"), "refinements", ["search_id", "position"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)


def downgrade() -> None:
    op.drop_index("uq_refinements_active_point", table_name="refinements")
