"""Refining single front points on demand: the `refinements` rows (for the routes) and their queue (for workers).

    queued ──claim_next──▶ running ──finish──▶ succeeded | failed | cancelled
       ▲                      │  (heartbeat every Settings.heartbeat_s)
       └──recover_stale───────┘  silent for stale_after_s: back to queued (attempts + 1), failed once attempts
                                 reaches max_attempts, or cancelled if a cancel was requested

A second, small job queue next to the searches' (service/queue.py), run by the same `queue.JobTable` rules: every
state change is one conditional UPDATE ... RETURNING, so the database decides who wins a race. A
refinement is claimable once its search has succeeded (its front is written) and while no other refinement of
that search runs: one point at a time per search keeps two workers off one point's refined/<position>/ folder
(the partial unique index on refinements makes the database refuse a second running one, even where two
PostgreSQL transactions pass each other) and spreads workers over searches.

The search's own row is never changed here: its status and progress describe the search job only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, select
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
from .queue import JobTable, Recovery, SessionFactory
from .repository import RepositoryError, get_search, insert_ignoring_conflicts

log = logging.getLogger(__name__)

REFINEMENTS = JobTable("refinement", Refinement, queued=RefinementStatus.QUEUED, claimed=RefinementStatus.RUNNING,
                       running=frozenset({RefinementStatus.RUNNING}), ended=REFINEMENT_ENDED)


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
    REFINEMENTS.request_cancel(session, row.id)
    session.refresh(row)
    return row


# ------------------------------------------------------------------------------------------------ queue (workers)


def claim_next(factory: SessionFactory, worker_id: str) -> Refinement | None:
    """Take the oldest queued refinement of a succeeded search with no refinement running; None if there is none.

    `JobTable.claim`, as for searches: exactly-once across processes. A claim that loses the one-running-per-search
    race to another (only possible on PostgreSQL) ends in the unique index's IntegrityError and returns None; the
    worker polls again.
    """
    candidate, other = aliased(Refinement), aliased(Refinement)
    finished_search = exists().where(Search.id == candidate.search_id, Search.status == SearchStatus.SUCCEEDED)
    busy = exists().where(other.search_id == candidate.search_id, other.status == RefinementStatus.RUNNING)
    oldest = (select(candidate.id).where(candidate.status == RefinementStatus.QUEUED, finished_search, ~busy)
              .order_by(candidate.created_at, candidate.id).limit(1)
              .with_for_update(skip_locked=True, of=candidate).scalar_subquery())
    try:
        row = REFINEMENTS.claim(factory, worker_id, oldest)
    except IntegrityError:
        log.info("worker %s: another worker started a refinement of the same search first", worker_id)
        return None
    if row is not None:
        log.info("worker %s claimed refinement %s (search %s, point %d, attempt %d)", worker_id, row.id,
                 row.search_id, row.position, row.attempts + 1)
    return row


def heartbeat(factory: SessionFactory, refinement_id: str, worker_id: str) -> bool:
    """Stamp the refinement as alive. False when the worker must stop: a cancel was requested, the refinement
    was taken over or ended, or it is gone (its search was deleted)."""
    return REFINEMENTS.heartbeat(factory, refinement_id, worker_id)


def finish(factory: SessionFactory, refinement_id: str, status: RefinementStatus | str, error: str | None = None,
           *, worker_id: str | None = None) -> bool:
    """End a refinement; True if this call ended it (with `worker_id`: only while that worker owns it)."""
    return REFINEMENTS.finish(factory, refinement_id, RefinementStatus(status), error, worker_id=worker_id)


def release(factory: SessionFactory, refinement_id: str, worker_id: str) -> bool:
    """Give an owned running refinement back to the queue without counting an attempt (a worker shutting down)."""
    return REFINEMENTS.release(factory, refinement_id, worker_id)


def recover_stale(factory: SessionFactory, stale_after_s: float, max_attempts: int) -> Recovery:
    """`queue.recover_stale`'s rules for refinements whose worker went silent: requeued with attempts + 1,
    failed once attempts reaches `max_attempts`, or cancelled if a cancel was requested."""
    return REFINEMENTS.recover_stale(factory, stale_after_s, max_attempts)
