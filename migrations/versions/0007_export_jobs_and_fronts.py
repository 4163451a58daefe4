"""One store of record for fronts; exports become worker jobs: the fronts table, job columns on exports.

Revision ID: 0007
Revises: 0006
Create Date: issue 29

Written by hand to match service/models.py at this revision (tests/test_migrations.py checks that the two
agree).

* `fronts`: what a search's front holds besides its points (reference, hypervolume, normalisation, ...), which
  until now lived only in the run folder's front.json. Searches written before this revision have no row here:
  service/legacy.py imports their front.json on first use.
* `exports` rows become export jobs (status, error, attempts, worker, heartbeat, ...: the columns every job table
  has) with the kind they build (`refined`, else the slice) in the unique key, so one point, format and kind has
  one job however many requests ask for it at once. An existing row is an archive already built: it becomes a
  succeeded job, refined if its archive's name says so (service/exports.py names refined archives
  "<point>-<format>-refined.tar.gz"). `path` is empty until a job succeeds.

Altered in batch mode, which is how SQLite alters a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_COLUMNS = ("error", "cancel_requested", "attempts", "worker_id", "heartbeat_at", "started_at", "finished_at")


def upgrade() -> None:
    op.create_table(
        "fronts",
        sa.Column("search_id", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("search_id", name=op.f("pk_fronts")),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name=op.f("fk_fronts_search_id_searches")),
    )
    with op.batch_alter_table("exports") as batch:
        batch.add_column(sa.Column("refined", sa.Boolean(), server_default=sa.false(), nullable=False))
        # existing rows are archives already built; new rows get their status from the application
        batch.add_column(sa.Column("status", sa.Enum(*STATUSES, name="export_status", native_enum=False, length=16),
                                   server_default="succeeded", nullable=False))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("worker_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch.alter_column("path", existing_type=sa.Text(), nullable=True)
        batch.drop_constraint("uq_exports_search_id_position_format", type_="unique")
    op.execute("UPDATE exports SET refined = true, finished_at = created_at WHERE path LIKE '%-refined.tar.gz'")
    op.execute("UPDATE exports SET finished_at = created_at WHERE finished_at IS NULL")
    with op.batch_alter_table("exports") as batch:
        batch.alter_column("status", existing_type=sa.String(16), server_default=None, existing_nullable=False)
        batch.create_check_constraint(op.f("ck_exports_export_status"),
                                      f"status IN ({', '.join(repr(s) for s in STATUSES)})")
        batch.create_unique_constraint(op.f("uq_exports_search_id_position_format_refined"),
                                       ["search_id", "position", "format", "refined"])
    op.create_index(op.f("ix_exports_status_created_at"), "exports", ["status", "created_at"])


def downgrade() -> None:
    # Back to one archive record per (point, format): only built archives are kept, the refined one where a
    # point has both (what the download route of the older release served for a refined point).
    op.execute("DELETE FROM exports WHERE status != 'succeeded' OR path IS NULL")
    op.execute("DELETE FROM exports WHERE refined = false AND EXISTS (SELECT 1 FROM exports AS other WHERE "
               "other.search_id = exports.search_id AND other.position = exports.position AND "
               "other.format = exports.format AND other.refined = true)")
    op.drop_index(op.f("ix_exports_status_created_at"), table_name="exports")
    with op.batch_alter_table("exports") as batch:
        batch.drop_constraint(op.f("uq_exports_search_id_position_format_refined"), type_="unique")
        batch.drop_constraint(op.f("ck_exports_export_status"), type_="check")
        for name in ("refined", "status", *JOB_COLUMNS):
            batch.drop_column(name)
        batch.alter_column("path", existing_type=sa.Text(), nullable=False)
        batch.create_unique_constraint("uq_exports_search_id_position_format", ["search_id", "position", "format"])
    op.drop_table("fronts")
