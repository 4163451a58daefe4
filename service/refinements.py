"""Refining single front points on demand: the `refinements` rows (for the routes) and their queue (for workers).

    queued ──claim_next──▶ running ──finish──▶ succeeded | failed | cancelled
       ▲                      │  (heartbeat every Settings.heartbeat_s)
       └──recover_stale───────┘  silent for stale_after_s: back to queued (attempts + 1), failed once attempts
                                 reaches max_attempts, or cancelled if a cancel was requested

A second, small job queue next to the searches' (service/queue.py), with the same rules and the same reasons:
every state change is one conditional UPDATE ... RETURNING, so the database decides who wins a race. A
refinement is claimable once its search has succeeded (its front is written) and while no other refinement of
that search runs: one point at a time per search keeps two workers off one point's refined/<position>/ folder
(the partial unique index on refinements makes the database refuse a second running one, even where two
PostgreSQL transactions pass each other) and spreads workers over searches.

The search's own row is never changed here: its status and progress describe the search job only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from .models import (
    REFINEMENT_ACTIVE,
    REFINEMENT_ENDED,
    Refinement,
    RefinementStatus,
    Search,
    SearchStatus,
    new_id,
    utcnow,
)
from .queue import QueueError, Recovery, SessionFactory
from .repository import RepositoryError, get_search, insert_ignoring_conflicts

log = logging.getLogger(__name__)

_BULK = {"synchronize_session": False}


class RefinementNotFound(RepositoryError, LookupError):
    def __init__(self, search_id: str, refinement_id: str) -> None:
        super().__init__(f"search {search_id!r} has no refinement with id {refinement_id!r}")


# ------------------------------------------------------------------------------------------------ rows (routes)


def create(session: Session, *, search_id: str, position: int, settings: Mapping[str, Any],
           owner: str | None = None) -> Refinement | None:
    """Queue a refinement of front point `position` (the caller checked that the point exists); None if the point
    already has a queued or running one (the partial unique index decides, so of two requests at the same instant
    only one is queued: the caller then reads the other with `find_active`)."""
    refinement_id = new_id()
    values = {"id": refinement_id, "search_id": search_id, "position": position, "settings": dict(settings),
              "owner_id": owner, "status": RefinementStatus.QUEUED, "cancel_requested": False, "attempts": 0,
              "created_at": utcnow()}
    if not insert_ignoring_conflicts(session, Refinement.__table__, values):
        return None
    return session.get_one(Refinement, refinement_id)


def find_active(session: Session, search_id: str, position: int) -> Refinement | None:
    """The point's queued or running refinement (at most one): a repeated POST returns it instead of refining the
    point twice over, and one with other settings waits for it to end."""
    return session.scalar(select(Refinement).where(
        Refinement.search_id == search_id, Refinement.position == position, Refinement.status.in_(REFINEMENT_ACTIVE)))


def list_for_search(session: Session, search_id: str, *, owner: str | None = None) -> list[Refinement]:
    """The search's refinements, newest first."""
    get_search(session, search_id, owner=owner)
    return list(session.scalars(select(Refinement).where(Refinement.search_id == search_id)
                                .order_by(Refinement.created_at.desc(), Refinement.id.desc())))


def latest_by_position(session: Session, search_id: str) -> dict[int, Refinement]:
    """The newest refinement of each front point that has one."""
    latest: dict[int, Refinement] = {}
    for row in list_for_search(session, search_id):
        latest.setdefault(row.position, row)
    return latest


def get(session: Session, search_id: str, refinement_id: str, *, owner: str | None = None) -> Refinement:
    """RefinementNotFound unless it is a refinement of `search_id` (itself hidden from other owners)."""
    get_search(session, search_id, owner=owner)
    row = session.get(Refinement, refinement_id)
    if row is None or row.search_id != search_id:
        raise RefinementNotFound(search_id, refinement_id)
    return row


def request_cancel(session: Session, search_id: str, refinement_id: str, *, owner: str | None = None) -> Refinement:
    """A queued refinement is cancelled at once; a running one is flagged and stops at its worker's next
    heartbeat; an ended one is left as it is. Conditional UPDATEs: a worker may claim it at the same moment."""
    row = get(session, search_id, refinement_id, owner=owner)
    session.execute(update(Refinement).where(Refinement.id == row.id, Refinement.status == RefinementStatus.QUEUED)
                    .values(status=RefinementStatus.CANCELLED, cancel_requested=True, finished_at=utcnow())
                    .execution_options(**_BULK))
    session.execute(update(Refinement).where(Refinement.id == row.id, Refinement.status == RefinementStatus.RUNNING)
                    .values(cancel_requested=True).execution_options(**_BULK))
    session.refresh(row)
    return row


# ------------------------------------------------------------------------------------------------ queue (workers)


def claim_next(factory: SessionFactory, worker_id: str) -> Refinement | None:
    """Take the oldest queued refinement of a succeeded search with no refinement running; None if there is none.

    One UPDATE whose WHERE picks the id, as `queue.claim_next` does: exactly-once across processes. A claim that
    loses the one-running-per-search race to another (only possible on PostgreSQL) ends in the unique index's
    IntegrityError and returns None; the worker polls again.
    """
    with factory() as session:  # a lock-free read first: idle workers polling take no write lock
        if not session.scalar(select(exists().where(Refinement.status == RefinementStatus.QUEUED))):
            return None
    candidate, other = aliased(Refinement), aliased(Refinement)
    finished_search = exists().where(Search.id == candidate.search_id, Search.status == SearchStatus.SUCCEEDED)
    busy = exists().where(other.search_id == candidate.search_id, other.status == RefinementStatus.RUNNING)
    oldest = (select(candidate.id).where(candidate.status == RefinementStatus.QUEUED, finished_search, ~busy)
              .order_by(candidate.created_at, candidate.id).limit(1)
              .with_for_update(skip_locked=True, of=candidate).scalar_subquery())
    now = utcnow()
    claim = (update(Refinement).where(Refinement.id == oldest, Refinement.status == RefinementStatus.QUEUED)
             .values(status=RefinementStatus.RUNNING, worker_id=worker_id, heartbeat_at=now, started_at=now,
                     finished_at=None, error=None)
             .returning(Refinement))
    try:
        with factory.begin() as session:
            row = session.scalars(claim, execution_options=_BULK).one_or_none()
    except IntegrityError:
        log.info("worker %s: another worker started a refinement of the same search first", worker_id)
        return None
    if row is not None:
        log.info("worker %s claimed refinement %s (search %s, point %d, attempt %d)", worker_id, row.id,
                 row.search_id, row.position, row.attempts + 1)
    return row


def _owned(refinement_id: str, worker_id: str) -> Any:
    return and_(Refinement.id == refinement_id, Refinement.worker_id == worker_id,
                Refinement.status == RefinementStatus.RUNNING)


def heartbeat(factory: SessionFactory, refinement_id: str, worker_id: str) -> bool:
    """Stamp the refinement as alive. False when the worker must stop: a cancel was requested, the refinement
    was taken over or ended, or it is gone (its search was deleted)."""
    stmt = (update(Refinement).where(_owned(refinement_id, worker_id), Refinement.cancel_requested.is_(False))
            .values(heartbeat_at=utcnow()).returning(Refinement.id))
    with factory.begin() as session:
        alive = session.execute(stmt, execution_options=_BULK).first() is not None
    if not alive:
        log.info("worker %s: refinement %s is no longer ours to run (cancelled, taken over, ended or deleted)",
                 worker_id, refinement_id)
    return alive


def finish(factory: SessionFactory, refinement_id: str, status: RefinementStatus | str, error: str | None = None,
           *, worker_id: str | None = None) -> bool:
    """End a refinement; True if this call ended it (with `worker_id`: only while that worker owns it)."""
    status = RefinementStatus(status)
    if status not in REFINEMENT_ENDED:
        raise QueueError(f"finish takes {', '.join(sorted(REFINEMENT_ENDED))}, not {status}")
    where = [Refinement.id == refinement_id, Refinement.status.not_in(REFINEMENT_ENDED)]
    if worker_id is not None:
        where.append(Refinement.worker_id == worker_id)
    stmt = (update(Refinement).where(*where).values(status=status, error=error, finished_at=utcnow())
            .returning(Refinement.id))
    with factory.begin() as session:
        ended = session.execute(stmt, execution_options=_BULK).first() is not None
    if ended:
        log.info("refinement %s %s%s", refinement_id, status, f": {error}" if error else "")
    else:
        log.warning("refinement %s: not marked %s (already ended, deleted, or no longer owned by %s)",
                    refinement_id, status, worker_id)
    return ended


def release(factory: SessionFactory, refinement_id: str, worker_id: str) -> bool:
    """Give an owned running refinement back to the queue without counting an attempt (a worker shutting down)."""
    stmt = (update(Refinement).where(_owned(refinement_id, worker_id), Refinement.cancel_requested.is_(False))
            .values(status=RefinementStatus.QUEUED, worker_id=None, heartbeat_at=None).returning(Refinement.id))
    with factory.begin() as session:
        return session.execute(stmt, execution_options=_BULK).first() is not None


def recover_stale(factory: SessionFactory, stale_after_s: float, max_attempts: int) -> Recovery:
    """`queue.recover_stale`'s rules for refinements whose worker went silent: requeued with attempts + 1,
    failed once attempts reaches `max_attempts`, or cancelled if a cancel was requested."""
    if max_attempts < 1:
        raise QueueError(f"max_attempts must be >= 1, got {max_attempts}")
    now = utcnow()
    stale = and_(Refinement.status == RefinementStatus.RUNNING,
                 or_(Refinement.heartbeat_at.is_(None),
                     Refinement.heartbeat_at < now - timedelta(seconds=stale_after_s)))
    lost = f"its worker stopped sending heartbeats (none for {stale_after_s:g} s)"
    give_up = Refinement.attempts + 1 >= max_attempts
    recovery = Recovery()
    with factory.begin() as session:
        def move(where: Any, **values: Any) -> list[str]:
            stmt = update(Refinement).where(stale, *where).values(**values).returning(Refinement.id)
            return list(session.scalars(stmt, execution_options=_BULK))

        recovery.cancelled = move([Refinement.cancel_requested.is_(True)],
                                  status=RefinementStatus.CANCELLED, finished_at=now)
        recovery.failed = move([Refinement.cancel_requested.is_(False), give_up],
                               status=RefinementStatus.FAILED, attempts=Refinement.attempts + 1, finished_at=now,
                               error=f"{lost} in each of {max_attempts} attempt(s); giving up")
        recovery.requeued = move([Refinement.cancel_requested.is_(False), ~give_up],
                                 status=RefinementStatus.QUEUED, attempts=Refinement.attempts + 1, worker_id=None,
                                 heartbeat_at=None, error=f"requeued: {lost}")
    for name in ("requeued", "failed", "cancelled"):
        if ids := getattr(recovery, name):
            log.warning("stale refinements %s: %s", name, ", ".join(ids))
    return recovery
