"""The job queue: rows of `searches` are the jobs; workers are separate processes sharing the database.

    queued ──claim_next──▶ training ──advance──▶ searching ──▶ exporting ──finish──▶ succeeded | failed | cancelled
       ▲                        │  (heartbeat every Settings.heartbeat_s while running)
       └──recover_stale─────────┘  silent for stale_after_s: back to queued (attempts + 1), or failed once
                                   attempts reaches max_attempts, or cancelled if a cancel was requested

Every function takes a session factory, opens one short transaction and commits before returning, so a worker
holds no transaction (and no SQLite lock) while it trains or searches. Each state change is one conditional
UPDATE (`... WHERE status = ... AND worker_id = ... RETURNING`): the database, not the caller, decides who wins a
race, which is what makes a claim exactly-once across processes (the idea behind Optuna's heartbeats and the
usual `FOR UPDATE SKIP LOCKED` queue, whose SKIP LOCKED is added on PostgreSQL).

A worker owns a job while the row carries its worker_id and a running status. Once its job is recovered (and
perhaps re-claimed by another worker) or cancelled, `heartbeat` returns False and the worker must stop; the
`worker_id` argument of `advance`/`finish` keeps such a worker from overwriting the new owner's state. A worker
shutting down cleanly `release`s its job to the queue without counting an attempt.

The rules are written once, in `JobTable`: `SEARCHES` applies them to searches, `EXPORTS` to export jobs (the
archives downloads serve), and service.refinements' `REFINEMENTS` to refinements of single front points. A new
kind of job is a table with `models.JobColumns` and a `JobTable` over it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import (
    EXPORT_ENDED,
    RUNNING_STATUSES,
    TERMINAL_STATUSES,
    Export,
    ExportStatus,
    Search,
    SearchStatus,
    utcnow,
)
from .repository import create_search

log = logging.getLogger(__name__)

SessionFactory = sessionmaker[Session]
# Fresh sessions hold no objects to keep in step with a bulk UPDATE; skip SQLAlchemy's evaluate/fetch pass.
_BULK = {"synchronize_session": False}


class QueueError(ValueError):
    """A queue call that cannot mean anything (e.g. finishing a job with a running status)."""


@dataclass
class Recovery:
    """What one `recover_stale` pass did, by job id (searches here; refinements in service.refinements)."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled)


def default_worker_id() -> str:
    """host:pid:random — unique per worker process, and tells an operator where the worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def enqueue(session_factory: SessionFactory, *, request: dict[str, Any], idempotency_key: str | None = None,
            folder_root: str | Path | None = None) -> tuple[Search, bool]:
    """Queue a search (repository.create_search in its own transaction); (search, created)."""
    with session_factory.begin() as session:
        return create_search(session, request=request, idempotency_key=idempotency_key, folder_root=folder_root)


class JobTable:
    """The queue rules for one table of jobs (searches here, refinements in service.refinements), written once.

    A job table has a queued status, the status a claim sets, its running and ended statuses, and the columns a
    job clears whenever it leaves the running states (a search's `eta_s`); every method is one conditional
    UPDATE ... RETURNING in its own short transaction.
    """

    def __init__(self, noun: str, model: Any, *, queued: Any, claimed: Any, running: frozenset[Any],
                 ended: frozenset[Any], cleared: dict[str, Any] | None = None) -> None:
        self.noun, self.model = noun, model
        self.queued, self.claimed, self.running, self.ended = queued, claimed, running, ended
        self.cleared = cleared or {}

    def owned(self, job_id: str, worker_id: str) -> Any:
        """The WHERE of a job `worker_id` runs; a cancel request does not end ownership (the worker must finish)."""
        m = self.model
        return and_(m.id == job_id, m.worker_id == worker_id, m.status.in_(self.running))

    def claim(self, session_factory: SessionFactory, worker_id: str, oldest: Any) -> Any | None:
        """Run the job `oldest` (a scalar subquery picking one queued id) for `worker_id`; None if none is queued.

        One UPDATE whose WHERE picks the id: on SQLite the statement holds the write lock from start to end, so two
        processes can never both see the same row as queued; on PostgreSQL SKIP LOCKED (in `oldest`) lets
        concurrent claims pass each other instead of queueing on one row.
        """
        m = self.model
        with session_factory() as session:  # a lock-free read first: idle workers polling take no write lock
            if not session.scalar(select(exists().where(m.status == self.queued))):
                return None
        now = utcnow()
        stmt = (update(m).where(m.id == oldest, m.status == self.queued)
                .values(status=self.claimed, worker_id=worker_id, heartbeat_at=now, started_at=now,
                        finished_at=None, error=None)
                .returning(m))
        with session_factory.begin() as session:
            return session.scalars(stmt, execution_options=_BULK).one_or_none()

    def heartbeat(self, session_factory: SessionFactory, job_id: str, worker_id: str,
                  status: Any | None = None) -> bool:
        """Stamp an owned job as alive (moving it to the running `status` if given). False when the worker must
        stop: a cancel was requested, or the job was recovered, re-claimed, ended or deleted."""
        m = self.model
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if status is not None:
            values["status"] = status
        stmt = (update(m).where(self.owned(job_id, worker_id), m.cancel_requested.is_(False))
                .values(**values).returning(m.id))
        with session_factory.begin() as session:
            alive = session.execute(stmt, execution_options=_BULK).first() is not None
        if not alive:
            log.info("worker %s: %s %s is no longer ours to run (cancelled, taken over, ended or deleted)",
                     worker_id, self.noun, job_id)
        return alive

    def finish(self, session_factory: SessionFactory, job_id: Any, status: Any, error: str | None = None,
               *, worker_id: str | None = None, values: dict[str, Any] | None = None) -> bool:
        """End a job with one of the ended statuses (setting `values` too, e.g. what it built); True if this call
        ended it.

        A job already ended is left alone (False). With `worker_id`, only the job's current owner can end it, so
        a worker that lost its job to recovery cannot mark the new owner's run as failed.
        """
        if status not in self.ended:
            raise QueueError(f"finish takes {', '.join(sorted(self.ended))}, not {status}")
        m = self.model
        where = [m.id == job_id, m.status.not_in(self.ended)]
        if worker_id is not None:
            where.append(m.worker_id == worker_id)
        stmt = (update(m).where(*where).values(status=status, error=error, finished_at=utcnow(), **self.cleared,
                                               **(values or {}))
                .returning(m.id))
        with session_factory.begin() as session:
            ended = session.execute(stmt, execution_options=_BULK).first() is not None
        if ended:
            log.info("%s %s %s%s", self.noun, job_id, status, f": {error}" if error else "")
        else:
            log.warning("%s %s: not marked %s (already ended, deleted, or no longer owned by %s)", self.noun,
                        job_id, status, worker_id)
        return ended

    def release(self, session_factory: SessionFactory, job_id: str, worker_id: str) -> bool:
        """Give an owned running job back to the queue at once (a worker shutting down cleanly), without counting
        an attempt: the next worker resumes it. False if the job was not ours any more."""
        m = self.model
        stmt = (update(m).where(self.owned(job_id, worker_id), m.cancel_requested.is_(False))
                .values(status=self.queued, worker_id=None, heartbeat_at=None, **self.cleared).returning(m.id))
        with session_factory.begin() as session:
            return session.execute(stmt, execution_options=_BULK).first() is not None

    def recover_stale(self, session_factory: SessionFactory, stale_after_s: float, max_attempts: int) -> Recovery:
        """Take back running jobs whose worker went silent for `stale_after_s` (a crash, a kill -9, a lost
        machine).

        Each goes back to the queue with attempts + 1 (the next worker resumes it from its folder), or fails once
        attempts reaches `max_attempts` (a job that kills its worker every time should not do so forever), or is
        cancelled if a cancel was requested. Safe to run from every worker at once: each row moves once.
        """
        if max_attempts < 1:
            raise QueueError(f"max_attempts must be >= 1, got {max_attempts}")
        m = self.model
        now = utcnow()
        stale = and_(m.status.in_(self.running),
                     or_(m.heartbeat_at.is_(None), m.heartbeat_at < now - timedelta(seconds=stale_after_s)))
        lost = f"its worker stopped sending heartbeats (none for {stale_after_s:g} s)"
        give_up = m.attempts + 1 >= max_attempts
        recovery = Recovery()
        with session_factory.begin() as session:
            def move(*where: Any, **values: Any) -> list[str]:
                stmt = update(m).where(stale, *where).values(**values, **self.cleared).returning(m.id)
                return list(session.scalars(stmt, execution_options=_BULK))

            recovery.cancelled = move(m.cancel_requested.is_(True), status=self.status("cancelled"),
                                      finished_at=now)
            recovery.failed = move(m.cancel_requested.is_(False), give_up, status=self.status("failed"),
                                   attempts=m.attempts + 1, finished_at=now,
                                   error=f"{lost} in each of {max_attempts} attempt(s); giving up")
            recovery.requeued = move(m.cancel_requested.is_(False), ~give_up, status=self.queued,
                                     attempts=m.attempts + 1, worker_id=None, heartbeat_at=None,
                                     error=f"requeued: {lost}")
        for name in ("requeued", "failed", "cancelled"):
            if ids := getattr(recovery, name):
                log.warning("stale %ss %s: %s", self.noun, name, ", ".join(ids))
        return recovery

    def request_cancel(self, session: Session, job_id: Any) -> None:
        """In the caller's transaction: a queued job is cancelled at once; a running one is flagged and stops at its
        worker's next heartbeat; an ended one is left as it is. Conditional UPDATEs: a worker may claim it at the
        same moment."""
        m = self.model
        session.execute(update(m).where(m.id == job_id, m.status == self.queued)
                        .values(status=self.status("cancelled"), cancel_requested=True, finished_at=utcnow(),
                                **self.cleared).execution_options(**_BULK))
        session.execute(update(m).where(m.id == job_id, m.status.in_(self.running))
                        .values(cancel_requested=True).execution_options(**_BULK))

    def oldest(self, *where: Any) -> Any:
        """The scalar subquery `claim` takes: the id of the oldest queued job matching `where` (SKIP LOCKED on
        PostgreSQL)."""
        m = self.model
        return (select(m.id).where(m.status == self.queued, *where).order_by(m.created_at, m.id).limit(1)
                .with_for_update(skip_locked=True).scalar_subquery())

    def status(self, value: str) -> Any:
        """The table's status named `value` (both status enums name their ends "failed" and "cancelled")."""
        return type(self.queued)(value)


SEARCHES = JobTable("search", Search, queued=SearchStatus.QUEUED, claimed=SearchStatus.TRAINING,
                    running=RUNNING_STATUSES, ended=TERMINAL_STATUSES, cleared={"eta_s": None})
EXPORTS = JobTable("export", Export, queued=ExportStatus.QUEUED, claimed=ExportStatus.RUNNING,
                   running=frozenset({ExportStatus.RUNNING}), ended=EXPORT_ENDED)


def job_key(kind: str, job_id: str) -> Any:
    """A job's primary key from its kind and its id as text (a submission id, `nasprune worker --job`): exports
    are numbered, searches and refinements have string ids."""
    return int(job_id) if kind == "export" else job_id


def claim_export(session_factory: SessionFactory, worker_id: str) -> Export | None:
    """Take the oldest queued export job of a succeeded search (status -> running); None if none is queued."""
    succeeded = exists().where(Search.id == Export.search_id, Search.status == SearchStatus.SUCCEEDED)
    export = EXPORTS.claim(session_factory, worker_id, EXPORTS.oldest(succeeded))
    if export is not None:
        log.info("worker %s claimed %r", worker_id, export)
    return export


def claim_next(session_factory: SessionFactory, worker_id: str) -> Search | None:
    """Take the oldest queued search for `worker_id` (status -> training, heartbeat now); None if none is queued."""
    oldest = (select(Search.id).where(Search.status == SearchStatus.QUEUED)
              .order_by(Search.created_at, Search.id).limit(1)
              .with_for_update(skip_locked=True).scalar_subquery())
    search = SEARCHES.claim(session_factory, worker_id, oldest)
    if search is not None:
        log.info("worker %s claimed search %s (attempts %d)", worker_id, search.id, search.attempts)
    return search


def heartbeat(session_factory: SessionFactory, search_id: str, worker_id: str) -> bool:
    """Stamp the job as alive. False when the worker no longer owns a running job (recovered, re-claimed,
    finished) or a cancel was requested: the worker should then stop (and `finish(..., "cancelled")` if asked)."""
    return SEARCHES.heartbeat(session_factory, search_id, worker_id)


def advance(session_factory: SessionFactory, search_id: str, worker_id: str, status: SearchStatus | str) -> bool:
    """Move an owned job to another running stage (training -> searching -> exporting) and stamp the heartbeat;
    False, like `heartbeat`, when the worker should stop."""
    status = SearchStatus(status)
    if status not in RUNNING_STATUSES:
        raise QueueError(f"advance moves between running states ({', '.join(sorted(RUNNING_STATUSES))}), "
                         f"not to {status}; use finish() to end a job")
    return SEARCHES.heartbeat(session_factory, search_id, worker_id, status)


def finish(session_factory: SessionFactory, search_id: str, status: SearchStatus | str, error: str | None = None,
           *, worker_id: str | None = None) -> bool:
    """End a search as succeeded, failed or cancelled (`JobTable.finish`)."""
    return SEARCHES.finish(session_factory, search_id, SearchStatus(status), error, worker_id=worker_id)


def release(session_factory: SessionFactory, search_id: str, worker_id: str) -> bool:
    """Give an owned running search back to the queue without counting an attempt (`JobTable.release`)."""
    return SEARCHES.release(session_factory, search_id, worker_id)


def recover_stale(session_factory: SessionFactory, stale_after_s: float, max_attempts: int) -> Recovery:
    """Take back running searches whose worker went silent (`JobTable.recover_stale`)."""
    return SEARCHES.recover_stale(session_factory, stale_after_s, max_attempts)
