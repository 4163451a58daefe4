"""Database tables (SQLAlchemy 2 typed mappings). The schema itself is made by the migrations, never here.

    searches      one row per search job: its request, queue state (status, worker, heartbeat, attempts) and
                  progress figures the API shows while it runs
    trials        one row per evaluated sub-network; UNIQUE(search_id, config_key) is what guarantees at the
                  database level that no sub-network of a search is stored (and so counted) twice
    front_points  the Pareto front with test metrics (and, for a refined point, the refined model's "refined"
                  entry: the one record of it), replaced as a whole when the front is written
    fronts        the rest of a search's front (reference, hypervolume, normalisation, ...), one row per search
    exports       export jobs of front points and the archives they built, one per (point, format, kind), kind
                  being refined or sliced (a job queue, service/exports.py)
    api_tokens    bearer tokens (SHA-256 of the token only; the token itself is shown once, when created)
    datasets      custom datasets uploaded through POST /datasets (the file lives under the data root)
    refinements   on-demand refines of single front points of a finished search: settings and queue state (a
                  job queue of its own, next to the searches'; see service/refinements.py)
    compressions  on-demand compressions (decomposition + recovery) of single front points: settings, progress,
                  the compressed model's figures and its archive (service/compressions.py)

Searches, refinements, compressions and exports are jobs: their queue columns come from `JobColumns` and their state
changes from service.queue.JobTable, so a new kind of job is a table with these columns and a runner
(service/worker.py).

`owner_id` (searches, datasets, refinements, compressions) is the token that created the row; None when the server
runs without tokens.

A sub-network is stored as `SubNetworkConfig.to_dict()` JSON: the same shape the sampler draws, the optimizer
decodes, the API returns and the exporter reads.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints: Alembic's batch mode (how SQLite alters tables) can only drop or alter what has a name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no time zones: values are stored as naive UTC text and come back tagged UTC. Naive datetimes are
    refused on the way in, since nothing could tell local time from UTC afterwards. Fixed-width text also makes
    SQLite's string comparison (heartbeat_at < cutoff) a time comparison.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware one, e.g. datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SearchStatus(enum.StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    SEARCHING = "searching"
    EXPORTING = "exporting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_running(self) -> bool:
        return self in RUNNING_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


RUNNING_STATUSES = frozenset({SearchStatus.TRAINING, SearchStatus.SEARCHING, SearchStatus.EXPORTING})
TERMINAL_STATUSES = frozenset({SearchStatus.SUCCEEDED, SearchStatus.FAILED, SearchStatus.CANCELLED})


def status_type(statuses: type[enum.StrEnum], name: str) -> Enum:
    """A status column's type: the lower-case values (not the member names) in a VARCHAR with a CHECK constraint:
    readable in the database, portable, and a new status is a migration of the CHECK only."""
    return Enum(statuses, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda members: [m.value for m in members], validate_strings=True)


STATUS_TYPE = status_type(SearchStatus, "search_status")


class JobStatus(enum.StrEnum):
    """The states of every job kind but the search (whose running state has stages): refinements, exports, and the
    kinds to come. Each table still has its own CHECK constraint (`status_type`), named after it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


RefinementStatus = JobStatus
ExportStatus = JobStatus


JOB_ENDED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
REFINEMENT_ENDED = JOB_ENDED
REFINEMENT_ACTIVE = (RefinementStatus.QUEUED, RefinementStatus.RUNNING)  # at most one per front point
REFINEMENT_STATUS_TYPE = status_type(RefinementStatus, "refinement_status")


EXPORT_ENDED = JOB_ENDED
EXPORT_STATUS_TYPE = status_type(ExportStatus, "export_status")

CompressionStatus = JobStatus
COMPRESSION_KEPT = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)  # one per point and settings
COMPRESSION_STATUS_TYPE = status_type(CompressionStatus, "compression_status")

ShareStatus = JobStatus
SHARE_KEPT = COMPRESSION_KEPT  # one per owner and settings
SHARE_STATUS_TYPE = status_type(ShareStatus, "share_status")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class JobColumns:
    """The queue columns every job table has (searches, refinements, exports), next to its own `status`: what
    service.queue.JobTable reads and writes."""

    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Runs lost to a dead worker (stale heartbeat); the job fails once this reaches Settings.max_attempts.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    # Where the latest run ran: "cpu" or "cuda:0 (NVIDIA H200)"; a job resumed elsewhere records its new device.
    device: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]  # start of the latest run
    finished_at: Mapped[datetime | None]


class Search(JobColumns, Base):
    __tablename__ = "searches"
    __table_args__ = (Index("ix_searches_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[SearchStatus] = mapped_column(STATUS_TYPE, default=SearchStatus.QUEUED)
    # What the client sent: {"run": RunSpec.to_dict(), "job": SearchJob.to_dict()} (see repository.request_dict)
    request: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # sha256 of the body as sent (repository.body_digest): a retry with the same key and body is the same request
    # even when the server's defaults, which `request` has filled in, changed between the two calls.
    request_digest: Mapped[str | None] = mapped_column(String(64))
    # Progress, written by the worker as it goes.
    stage: Mapped[str | None] = mapped_column(String(64))
    epoch: Mapped[int | None]
    step: Mapped[int | None]
    total_steps: Mapped[int | None]
    evaluations_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    evaluations_total: Mapped[int | None]
    hypervolume: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    folder: Mapped[str | None] = mapped_column(Text)  # the run folder (checkpoints, refined models, exports, log)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_tokens.id"), index=True)

    # passive_deletes: the database's ON DELETE CASCADE removes children; the ORM need not load them first.
    trials: Mapped[list[TrialRow]] = relationship(back_populates="search", cascade="all, delete-orphan",
                                                  passive_deletes=True, order_by="TrialRow.index")
    front_points: Mapped[list[FrontPoint]] = relationship(back_populates="search", cascade="all, delete-orphan",
                                                          passive_deletes=True, order_by="FrontPoint.position")
    front: Mapped[FrontRow | None] = relationship(back_populates="search", cascade="all, delete-orphan",
                                                  passive_deletes=True)
    exports: Mapped[list[Export]] = relationship(back_populates="search", cascade="all, delete-orphan",
                                                 passive_deletes=True)
    refinements: Mapped[list[Refinement]] = relationship(back_populates="search", cascade="all, delete-orphan",
                                                         passive_deletes=True)
    compressions: Mapped[list[Compression]] = relationship(back_populates="search", cascade="all, delete-orphan",
                                                           passive_deletes=True)

    def __repr__(self) -> str:
        return f"Search(id={self.id!r}, status={self.status!s}, attempts={self.attempts})"


class TrialRow(Base):
    """One evaluated sub-network (`search.runner.Trial` in the database; named apart from it on purpose)."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("search_id", "index"), UniqueConstraint("search_id", "config_key"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    index: Mapped[int]
    config: Mapped[dict[str, Any]]
    # Canonical JSON of the SubNetworkConfig (sorted keys, no spaces): equal sub-networks, equal keys.
    config_key: Mapped[str] = mapped_column(Text)
    objectives: Mapped[dict[str, Any]]
    validation: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    macs: Mapped[int] = mapped_column(BigInteger)  # MACs pass 2**31 on BERT-base
    latency_ms: Mapped[float] = mapped_column(Float)
    elapsed_s: Mapped[float] = mapped_column(Float)
    # expected MACs and mean tokens per layer over the real validation inputs; None for a static sub-network
    dynamics: Mapped[dict[str, Any] | None]

    search: Mapped[Search] = relationship(back_populates="trials")


class FrontPoint(Base):
    """One point of a search's Pareto front, as in search.job.write_front's "points" (position = its index
    there)."""

    __tablename__ = "front_points"
    __table_args__ = (UniqueConstraint("search_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    position: Mapped[int]
    trial_index: Mapped[int | None]  # the trial this point is (None if it is not among the stored trials)
    config: Mapped[dict[str, Any]]
    objectives: Mapped[dict[str, Any]]
    validation: Mapped[dict[str, Any]]
    test: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    macs: Mapped[int] = mapped_column(BigInteger)  # MACs pass 2**31 on BERT-base
    latency_ms: Mapped[float] = mapped_column(Float)
    dynamics: Mapped[dict[str, Any] | None]  # as on trials
    # the "refined" entry (validation, test, train_s, kept, settings, folder) of a point fine-tuned after the
    # search (SearchJob.refine, or a refinement); None if it was not refined. Its model is
    # <search folder>/refined/<position>/ (an artifact: this column is the record).
    refined: Mapped[dict[str, Any] | None]

    search: Mapped[Search] = relationship(back_populates="front_points")


class FrontRow(Base):
    """Everything of a search's front but its points (which are rows of front_points): the task, objectives, the
    full model's figures ("reference"), hypervolume and its history, normalisation, evaluation counts. Written
    with the points in one transaction (service/store.py)."""

    __tablename__ = "fronts"

    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    search: Mapped[Search] = relationship(back_populates="front")


class Export(JobColumns, Base):
    """An export job of a front point (format, refined or sliced) and, once it succeeded, the archive it built,
    which the download route serves. One row per (point, format, kind): ten concurrent first downloads queue
    one job."""

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("search_id", "position", "format", "refined"),
                      Index("ix_exports_status_created_at", "status", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    position: Mapped[int]
    format: Mapped[str] = mapped_column(String(16))
    refined: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # else the slice
    status: Mapped[ExportStatus] = mapped_column(EXPORT_STATUS_TYPE, default=ExportStatus.QUEUED)
    path: Mapped[str | None] = mapped_column(Text)  # the built archive (set when the job succeeds)

    search: Mapped[Search] = relationship(back_populates="exports")

    def __repr__(self) -> str:
        kind = "refined" if self.refined else "sliced"
        return (f"Export(id={self.id!r}, search={self.search_id!r}, point={self.position}, {self.format}, {kind}, "
                f"status={self.status!s})")


# the partial index's condition on REFINEMENT_ACTIVE: "status IN ('queued', 'running')"
ACTIVE_REFINEMENT = f"status IN ({', '.join(repr(s.value) for s in REFINEMENT_ACTIVE)})"


class Refinement(JobColumns, Base):
    """A refine of one front point asked for after the search (POST .../pareto/{point}/refine), queued for a worker.

    At most one refinement of a search runs at a time: the partial unique index below makes the database refuse a
    second, which is what keeps two workers from writing one point's refined/<position>/ folder at once on
    PostgreSQL too (SQLite's single writer already serialises the claims). A point has at most one active
    (queued or running) refinement: two identical requests at the same instant queue one, not two.
    """

    __tablename__ = "refinements"
    __table_args__ = (
        Index("ix_refinements_status_created_at", "status", "created_at"),
        Index("uq_refinements_running_search_id", "search_id", unique=True,
              sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
        Index("uq_refinements_active_point", "search_id", "position", unique=True,
              sqlite_where=text(ACTIVE_REFINEMENT), postgresql_where=text(ACTIVE_REFINEMENT)),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    settings: Mapped[dict[str, Any]]  # RefineConfig fields: {"epochs", "learning_rate"}
    status: Mapped[RefinementStatus] = mapped_column(REFINEMENT_STATUS_TYPE, default=RefinementStatus.QUEUED)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_tokens.id"), index=True)

    search: Mapped[Search] = relationship(back_populates="refinements")

    def __repr__(self) -> str:
        return f"Refinement(id={self.id!r}, search={self.search_id!r}, point={self.position}, status={self.status!s})"


# the partial index's condition on COMPRESSION_KEPT
KEPT_COMPRESSION = f"status IN ({', '.join(repr(s.value) for s in COMPRESSION_KEPT)})"


class Compression(JobColumns, Base):
    """A compression of one front point asked for after the search (POST .../pareto/{point}/compress): its settings
    (supernet.settings.CompressConfig), progress, and once it succeeded the compressed model's figures (`result`:
    params, MACs, validation and test metrics) and archive (`path`).

    Idempotent per point and settings: the partial unique index keeps at most one queued, running or succeeded
    compression of each (point, settings_key), settings_key being the digest that also names its folder,
    compressed/<position>/<settings_key>/ (search.records.compression_key), so two requests at the same instant
    queue one job; a failed or cancelled one may be asked for again. Compressions of other settings may run side
    by side: each writes its own folder.
    """

    __tablename__ = "compressions"
    __table_args__ = (
        Index("ix_compressions_status_created_at", "status", "created_at"),
        Index("uq_compressions_kept_settings", "search_id", "position", "settings_key", unique=True,
              sqlite_where=text(KEPT_COMPRESSION), postgresql_where=text(KEPT_COMPRESSION)),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    settings: Mapped[dict[str, Any]]  # CompressConfig.to_dict()
    settings_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[CompressionStatus] = mapped_column(COMPRESSION_STATUS_TYPE, default=CompressionStatus.QUEUED)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    # Progress of the recovery, written by the worker as it goes.
    step: Mapped[int | None]
    total_steps: Mapped[int | None]
    # The compressed model's record (search.compression.compress_into) without server paths; set when it succeeds.
    result: Mapped[dict[str, Any] | None]
    path: Mapped[str | None] = mapped_column(Text)  # the archive served (set when the job succeeds)

    search: Mapped[Search] = relationship(back_populates="compressions")

    def __repr__(self) -> str:
        return (f"Compression(id={self.id!r}, search={self.search_id!r}, point={self.position}, "
                f"status={self.status!s})")


# the partial index's condition on SHARE_KEPT
KEPT_SHARE = f"status IN ({', '.join(repr(s.value) for s in SHARE_KEPT)})"


class Share(JobColumns, Base):
    """A parameter-shared model made from an unshared one (POST /shares, `nasprune share`; issue 34): what was
    asked (`request`: supernet.settings.ShareSpec and where it runs), progress (`stage`, `step` / `total_steps`),
    and once it succeeded the model's record (`result`: unique params, MACs, metrics at every step count, the
    tying) and archive (`path`). A search names the model as "share:<id>".

    Idempotent per caller and settings: settings_key is the digest of the request and the owner, which also names
    the folder the job works in (<data root>/shares/<settings_key>), and the partial unique index keeps one queued,
    running or succeeded share per key, so a repeated request gets the same job and a failed or cancelled one asked
    again resumes from what it left (the unshared model's fine-tuning checkpoint, the tying, the recovery's).
    """

    __tablename__ = "shares"
    __table_args__ = (
        Index("ix_shares_status_created_at", "status", "created_at"),
        Index("uq_shares_kept_settings", "settings_key", unique=True,
              sqlite_where=text(KEPT_SHARE), postgresql_where=text(KEPT_SHARE)),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request: Mapped[dict[str, Any]]  # {"run": ShareSpec.to_dict(), "compute": Compute.to_dict()} (as a search's)
    settings_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[ShareStatus] = mapped_column(SHARE_STATUS_TYPE, default=ShareStatus.QUEUED)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    # Progress, written by the worker as it goes: the stage (supernet.share.STAGES) and its training steps.
    stage: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[int | None]
    total_steps: Mapped[int | None]
    # The shared model's record (model/subnetwork.json) without server paths; set when it succeeds.
    result: Mapped[dict[str, Any] | None]
    path: Mapped[str | None] = mapped_column(Text)  # the archive served (set when the job succeeds)

    def __repr__(self) -> str:
        return f"Share(id={self.id!r}, status={self.status!s})"


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored: tokens are 256-bit random strings, so a fast hash is enough
    (no password stretching needed), and a stolen database gives no usable token."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Dataset(Base):
    """A custom dataset uploaded through the API, referenced by id in a search's task."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))  # the client's file name (display only, never a path)
    format: Mapped[str] = mapped_column(String(16))  # csv, tsv or jsonl
    path: Mapped[str] = mapped_column(Text)  # where the server stored it, under <data_root>/datasets
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    num_rows: Mapped[int]
    columns: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # What the upload was checked as (NULL: no label column was known, or a row older than these columns).
    label_column: Mapped[str | None] = mapped_column(String(200))
    task_type: Mapped[str | None] = mapped_column(String(16))  # classification or regression
    label_counts: Mapped[dict[str, int] | None] = mapped_column(JSON)  # label -> rows (classification)
    # column -> supernet.readers.ColumnProfile.to_json(): what POST /searches checks text and label columns by
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
