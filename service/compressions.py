"""Compressing single front points on demand: the `compressions` rows (for the routes) and their queue (for workers).

    queued ──claim_next──▶ running ──finish──▶ succeeded | failed | cancelled
       ▲                      │  (heartbeat every Settings.heartbeat_s; step / total_steps as the recovery goes)
       └──recover_stale───────┘  silent for stale_after_s: back to queued (attempts + 1; the next worker resumes
                                 the recovery from its checkpoint), failed once attempts reaches max_attempts

A third small job queue beside the searches' and the refinements', run by the same `queue.JobTable` rules. A
compression is claimable once its search has succeeded and while no refinement of that search runs: a compression
starts from the point's refined model where the front serves one, and a running refinement may be replacing it.
Compressions of one point with other settings may run at once on several workers: each writes its own folder,
compressed/<position>/<settings_key>/ (search.records.compressed_folder), and ends by building its archive there.

A request is idempotent per point and settings: the partial unique index keeps one queued, running or succeeded
compression per (search, point, settings_key), so a repeated POST returns that one; a failed or cancelled one may
be asked for again (a new row, whose worker resumes from what the last run left).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from .models import (
    COMPRESSION_KEPT,
    JOB_ENDED,
    Compression,
    CompressionStatus,
    Refinement,
    RefinementStatus,
    Search,
    SearchStatus,
    new_id,
    utcnow,
)
from .queue import JobTable, SessionFactory
from .repository import RepositoryError, get_search, insert_ignoring_conflicts

log = logging.getLogger(__name__)

COMPRESSIONS = JobTable("compression", Compression, queued=CompressionStatus.QUEUED,
                        claimed=CompressionStatus.RUNNING, running=frozenset({CompressionStatus.RUNNING}),
                        ended=JOB_ENDED)


class CompressionNotFound(RepositoryError, LookupError):
    def __init__(self, search_id: str, compression_id: str) -> None:
        super().__init__(f"search {search_id!r} has no compression with id {compression_id!r}")


# ------------------------------------------------------------------------------------------------ rows (routes)


def find_kept(session: Session, search_id: str, position: int, settings_key: str) -> Compression | None:
    """The point's queued, running or succeeded compression with these settings (at most one)."""
    return session.scalar(select(Compression).where(
        Compression.search_id == search_id, Compression.position == position,
        Compression.settings_key == settings_key, Compression.status.in_(COMPRESSION_KEPT)))


def request(session: Session, *, search_id: str, position: int, settings: Mapping[str, Any], settings_key: str,
            owner: str | None = None) -> tuple[Compression, bool]:
    """The compression of front point `position` with these settings: (the one already queued, running or
    succeeded, False), else a new queued one (True). The partial unique index decides between two requests at the
    same instant; the caller checked that the point exists and commits."""
    values = {"id": new_id(), "search_id": search_id, "position": position, "settings": dict(settings),
              "settings_key": settings_key, "owner_id": owner, "status": CompressionStatus.QUEUED,
              "cancel_requested": False, "attempts": 0, "created_at": utcnow()}
    for _ in range(3):  # the row in the way may end (fail, be cancelled) between the insert and the read
        if insert_ignoring_conflicts(session, Compression.__table__, values):
            return session.get_one(Compression, values["id"]), True
        existing = find_kept(session, search_id, position, settings_key)
        if existing is not None:
            return existing, False
    raise RepositoryError(f"front point {position} of search {search_id} is being compressed with these settings by "
                          "another request that keeps changing state; ask again")


def list_for_search(session: Session, search_id: str, *, owner: str | None = None) -> list[Compression]:
    """The search's compressions, newest first."""
    get_search(session, search_id, owner=owner)
    return list(session.scalars(select(Compression).where(Compression.search_id == search_id)
                                .order_by(Compression.created_at.desc(), Compression.id.desc())))


def get(session: Session, search_id: str, compression_id: str, *, owner: str | None = None) -> Compression:
    """CompressionNotFound unless it is a compression of `search_id` (itself hidden from other owners)."""
    get_search(session, search_id, owner=owner)
    row = session.get(Compression, compression_id)
    if row is None or row.search_id != search_id:
        raise CompressionNotFound(search_id, compression_id)
    return row


def request_cancel(session: Session, search_id: str, compression_id: str, *, owner: str | None = None
                   ) -> Compression:
    """A queued compression is cancelled at once; a running one stops at its worker's next heartbeat (its
    recovery checkpoint stays, so asking again resumes it); an ended one is left as it is."""
    row = get(session, search_id, compression_id, owner=owner)
    COMPRESSIONS.request_cancel(session, row.id)
    session.refresh(row)
    return row


def requeue(session: Session, row: Compression) -> Compression:
    """A succeeded compression whose archive is gone, queued again (its worker finds the compressed model and
    only builds the archive, or compresses again if that is gone too)."""
    session.execute(update(Compression).where(Compression.id == row.id,
                                              Compression.status == CompressionStatus.SUCCEEDED)
                    .values(status=CompressionStatus.QUEUED, path=None, worker_id=None, heartbeat_at=None,
                            finished_at=None).execution_options(synchronize_session=False))
    session.refresh(row)
    return row


def archive_name(row: Compression) -> str:
    """The name of a compressed model's archive's top folder and of the downloaded file (without .tar.gz)."""
    protocol = str(row.settings.get("protocol", "compressed"))
    return f"nasprune-{row.search_id[:8]}-point{row.position}-{protocol}-{row.settings_key[:8]}"


# ------------------------------------------------------------------------------------------------ queue (workers)


def claim_next(factory: SessionFactory, worker_id: str) -> Compression | None:
    """Take the oldest queued compression of a succeeded search with no refinement running (status -> running);
    None if there is none."""
    finished_search = exists().where(Search.id == Compression.search_id, Search.status == SearchStatus.SUCCEEDED)
    refining = exists().where(Refinement.search_id == Compression.search_id,
                              Refinement.status == RefinementStatus.RUNNING)
    row = COMPRESSIONS.claim(factory, worker_id, COMPRESSIONS.oldest(finished_search, ~refining))
    if row is not None:
        log.info("worker %s claimed compression %s (search %s, point %d, attempt %d)", worker_id, row.id,
                 row.search_id, row.position, row.attempts + 1)
    return row


def report_progress(factory: SessionFactory, compression_id: str, worker_id: str, step: int, total: int) -> None:
    """The recovery's step (only while `worker_id` owns the compression)."""
    with factory.begin() as session:
        session.execute(update(Compression).where(COMPRESSIONS.owned(compression_id, worker_id))
                        .values(step=step, total_steps=total).execution_options(synchronize_session=False))
