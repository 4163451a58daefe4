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
`worker_id` argument of `advance`/`finish` keeps such a worker from overwriting the new owner's state.
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

from .models import RUNNING_STATUSES, TERMINAL_STATUSES, Search, SearchStatus, utcnow
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


def claim_next(session_factory: SessionFactory, worker_id: str) -> Search | None:
    """Take the oldest queued search for `worker_id` (status -> training, heartbeat now); None if none is queued.

    One UPDATE whose WHERE picks the oldest queued id: on SQLite the statement holds the write lock from start to
    end, so two processes can never both see the same row as queued; on PostgreSQL SKIP LOCKED lets concurrent
    claims pass each other instead of queueing on one row.
    """
    with session_factory() as session:  # a lock-free read first: idle workers polling take no write lock
        if not session.scalar(select(exists().where(Search.status == SearchStatus.QUEUED))):
            return None
    now = utcnow()
    oldest = (select(Search.id).where(Search.status == SearchStatus.QUEUED)
              .order_by(Search.created_at, Search.id).limit(1)
              .with_for_update(skip_locked=True).scalar_subquery())
    claim = (update(Search).where(Search.id == oldest, Search.status == SearchStatus.QUEUED)
             .values(status=SearchStatus.TRAINING, worker_id=worker_id, heartbeat_at=now, started_at=now,
                     finished_at=None, error=None)
             .returning(Search))
    with session_factory.begin() as session:
        search = session.scalars(claim, execution_options=_BULK).one_or_none()
    if search is not None:
        log.info("worker %s claimed search %s (attempt %d)", worker_id, search.id, search.attempts + 1)
    return search


def _owned(search_id: str, worker_id: str) -> Any:
    return and_(Search.id == search_id, Search.worker_id == worker_id, Search.status.in_(RUNNING_STATUSES))


def heartbeat(session_factory: SessionFactory, search_id: str, worker_id: str) -> bool:
    """Stamp the job as alive. False when the worker no longer owns a running job (recovered, re-claimed,
    finished) or a cancel was requested: the worker should then stop (and `finish(..., "cancelled")` if asked)."""
    stmt = (update(Search).where(_owned(search_id, worker_id), Search.cancel_requested.is_(False))
            .values(heartbeat_at=utcnow()).returning(Search.id))
    with session_factory.begin() as session:
        alive = session.execute(stmt, execution_options=_BULK).first() is not None
    if not alive:
        log.info("worker %s: search %s is no longer ours to run (taken over, finished or cancelled)",
                 worker_id, search_id)
    return alive


def advance(session_factory: SessionFactory, search_id: str, worker_id: str, status: SearchStatus | str) -> bool:
    """Move an owned job to another running stage (training -> searching -> exporting) and stamp the heartbeat;
    False, like `heartbeat`, when the worker should stop."""
    status = SearchStatus(status)
    if status not in RUNNING_STATUSES:
        raise QueueError(f"advance moves between running states ({', '.join(sorted(RUNNING_STATUSES))}), "
                         f"not to {status}; use finish() to end a job")
    stmt = (update(Search).where(_owned(search_id, worker_id), Search.cancel_requested.is_(False))
            .values(status=status, heartbeat_at=utcnow()).returning(Search.id))
    with session_factory.begin() as session:
        return session.execute(stmt, execution_options=_BULK).first() is not None


def finish(session_factory: SessionFactory, search_id: str, status: SearchStatus | str, error: str | None = None,
           *, worker_id: str | None = None) -> bool:
    """End a job as succeeded, failed or cancelled; True if this call ended it.

    A job already ended is left alone (False). With `worker_id`, only the job's current owner can end it, so a
    worker that lost its job to recovery cannot mark the new owner's run as failed.
    """
    status = SearchStatus(status)
    if status not in TERMINAL_STATUSES:
        raise QueueError(f"finish takes {', '.join(sorted(TERMINAL_STATUSES))}, not {status}")
    where = [Search.id == search_id, Search.status.not_in(TERMINAL_STATUSES)]
    if worker_id is not None:
        where.append(Search.worker_id == worker_id)
    stmt = (update(Search).where(*where)
            .values(status=status, error=error, finished_at=utcnow(), eta_s=None).returning(Search.id))
    with session_factory.begin() as session:
        ended = session.execute(stmt, execution_options=_BULK).first() is not None
    if ended:
        log.info("search %s %s%s", search_id, status, f": {error}" if error else "")
    else:
        log.warning("search %s: not marked %s (already ended, or no longer owned by %s)", search_id, status,
                    worker_id)
    return ended


def recover_stale(session_factory: SessionFactory, stale_after_s: float, max_attempts: int) -> Recovery:
    """Take back running jobs whose worker went silent for `stale_after_s` (a crash, a kill -9, a lost machine).

    Each goes back to the queue with attempts + 1 (the next worker resumes it from its run folder), or fails once
    attempts reaches `max_attempts` (a job that kills its worker every time should not do so forever), or is
    cancelled if a cancel was requested. Safe to run from every worker at once: each row moves once.
    """
    if max_attempts < 1:
        raise QueueError(f"max_attempts must be >= 1, got {max_attempts}")
    now = utcnow()
    stale = and_(Search.status.in_(RUNNING_STATUSES),
                 or_(Search.heartbeat_at.is_(None), Search.heartbeat_at < now - timedelta(seconds=stale_after_s)))
    lost = f"its worker stopped sending heartbeats (none for {stale_after_s:g} s)"
    recovery = Recovery()
    with session_factory.begin() as session:
        recovery.cancelled = list(session.scalars(
            update(Search).where(stale, Search.cancel_requested.is_(True))
            .values(status=SearchStatus.CANCELLED, finished_at=now, eta_s=None)
            .returning(Search.id), execution_options=_BULK))
        recovery.failed = list(session.scalars(
            update(Search).where(stale, Search.cancel_requested.is_(False), Search.attempts + 1 >= max_attempts)
            .values(status=SearchStatus.FAILED, attempts=Search.attempts + 1, finished_at=now, eta_s=None,
                    error=f"{lost} in each of {max_attempts} attempt(s); giving up")
            .returning(Search.id), execution_options=_BULK))
        recovery.requeued = list(session.scalars(
            update(Search).where(stale, Search.cancel_requested.is_(False), Search.attempts + 1 < max_attempts)
            .values(status=SearchStatus.QUEUED, attempts=Search.attempts + 1, worker_id=None, heartbeat_at=None,
                    eta_s=None, error=f"requeued: {lost}")
            .returning(Search.id), execution_options=_BULK))
    for name in ("requeued", "failed", "cancelled"):
        if ids := getattr(recovery, name):
            log.warning("stale jobs %s: %s", name, ", ".join(ids))
    return recovery
