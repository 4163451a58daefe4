"""Parameter-shared models made on demand (POST /shares; issue 34): the `shares` rows (for the routes) and their queue
(for workers).

    queued ──claim_next──▶ running ──finish──▶ succeeded | failed | cancelled
       ▲                      │  (heartbeat every Settings.heartbeat_s; stage, step / total_steps as it goes)
       └──recover_stale───────┘  silent for stale_after_s: back to queued (attempts + 1; the next worker resumes
                                 from the run's folder), failed once attempts reaches max_attempts

`nasprune share` as a job: an unshared model fine-tuned on a task (unless it is already), its layers tied into
shared blocks and recovered by distillation (supernet/share.py). It belongs to no search; a search names its model
as "share:<id>" (`model_folder`), and the worker reads the model from the share's folder.

A request is idempotent per caller and settings: settings_key digests the request with its owner and names the
job's folder (<data root>/shares/<settings_key>), and the partial unique index keeps one queued, running or
succeeded share per key. A repeated POST returns that one; a failed or cancelled one may be asked for again (a new
row, whose worker resumes from what the last run left in the folder).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import JOB_ENDED, SHARE_KEPT, Share, ShareStatus, new_id, utcnow
from .queue import JobTable, SessionFactory
from .repository import RepositoryError, body_digest, insert_ignoring_conflicts

log = logging.getLogger(__name__)

SHARES = JobTable("share", Share, queued=ShareStatus.QUEUED, claimed=ShareStatus.RUNNING,
                  running=frozenset({ShareStatus.RUNNING}), ended=JOB_ENDED)
MODEL_PREFIX = "share:"  # a search's model "share:<id>" is that share's model
MODEL_DIR = "model"  # supernet.share.MODEL_DIR, named here without importing torch (the API does not load it)


class ShareNotFound(RepositoryError, LookupError):
    def __init__(self, share_id: str) -> None:
        super().__init__(f"no share with id {share_id!r}")


class ShareNotReady(RepositoryError, ValueError):
    """A search named a share that has not succeeded."""


def settings_key(request: dict[str, Any], owner: str | None) -> str:
    """The digest of what is asked and by whom: the job's identity and its folder's name."""
    return body_digest({"request": request, "owner": owner})[:32]


def folder(shares_root: Path, key: str) -> Path:
    """The folder a share works in (teacher/, work/, model/ and the archive): <data root>/shares/<key>."""
    return shares_root / key


# ------------------------------------------------------------------------------------------------ rows (routes)


def find_kept(session: Session, key: str) -> Share | None:
    return session.scalar(select(Share).where(Share.settings_key == key, Share.status.in_(SHARE_KEPT)))


def request(session: Session, *, request: dict[str, Any], owner: str | None = None) -> tuple[Share, bool]:
    """The share of these settings for this caller: (the one already queued, running or succeeded, False), else a
    new queued one (True). The caller commits."""
    key = settings_key(request, owner)
    values = {"id": new_id(), "request": request, "settings_key": key, "owner_id": owner,
              "status": ShareStatus.QUEUED, "cancel_requested": False, "attempts": 0, "created_at": utcnow()}
    for _ in range(3):  # the row in the way may end (fail, be cancelled) between the insert and the read
        if insert_ignoring_conflicts(session, Share.__table__, values):
            return session.get_one(Share, values["id"]), True
        existing = find_kept(session, key)
        if existing is not None:
            return existing, False
    raise RepositoryError("a share with these settings is being asked for by another request that keeps changing "
                          "state; ask again")


def list_for_owner(session: Session, *, owner: str | None = None) -> list[Share]:
    """The caller's shares (everyone's without tokens), newest first."""
    where = [] if owner is None else [Share.owner_id == owner]
    return list(session.scalars(select(Share).where(*where).order_by(Share.created_at.desc(), Share.id.desc())))


def get(session: Session, share_id: str, *, owner: str | None = None) -> Share:
    """ShareNotFound unless it exists and, given an owner, is theirs."""
    row = session.get(Share, share_id)
    if row is None or (owner is not None and row.owner_id != owner):
        raise ShareNotFound(share_id)
    return row


def request_cancel(session: Session, share_id: str, *, owner: str | None = None) -> Share:
    """A queued share is cancelled at once; a running one stops at its worker's next heartbeat (its checkpoints
    stay, so asking again resumes it); an ended one is left as it is."""
    row = get(session, share_id, owner=owner)
    SHARES.request_cancel(session, row.id)
    session.refresh(row)
    return row


def requeue(session: Session, row: Share) -> Share:
    """A succeeded share whose archive is gone, queued again (its worker finds the model and only builds the
    archive, or runs again from what is left)."""
    session.execute(update(Share).where(Share.id == row.id, Share.status == ShareStatus.SUCCEEDED)
                    .values(status=ShareStatus.QUEUED, path=None, worker_id=None, heartbeat_at=None,
                            finished_at=None).execution_options(synchronize_session=False))
    session.refresh(row)
    return row


def archive_name(row: Share) -> str:
    """The name of a shared model's archive's top folder and of the downloaded file (without .tar.gz)."""
    groups = (row.request.get("run") or {}).get("share", {}).get("groups", "g")
    return f"nasprune-share-{row.id[:8]}-{groups}blocks"


def model_folder(session: Session, name: str, shares_root: Path, *, owner: str | None = None) -> Path:
    """The model folder of the share a search names ("share:<id>"): ShareNotFound if it is not the caller's,
    ShareNotReady unless it has succeeded."""
    share_id = name.removeprefix(MODEL_PREFIX)
    row = get(session, share_id, owner=owner)
    if row.status != ShareStatus.SUCCEEDED:
        raise ShareNotReady(f"model {name!r}: share {share_id} is {row.status.value}; a search can use it once it "
                            "has succeeded")
    return folder(shares_root, row.settings_key) / MODEL_DIR


# ------------------------------------------------------------------------------------------------ queue (workers)


def claim_next(factory: SessionFactory, worker_id: str) -> Share | None:
    """Take the oldest queued share (status -> running); None if there is none."""
    row = SHARES.claim(factory, worker_id, SHARES.oldest())
    if row is not None:
        log.info("worker %s claimed share %s (attempt %d)", worker_id, row.id, row.attempts + 1)
    return row


def report_progress(factory: SessionFactory, share_id: str, worker_id: str, **values: Any) -> None:
    """The stage, or the training's step (only while `worker_id` owns the share)."""
    with factory.begin() as session:
        session.execute(update(Share).where(SHARES.owned(share_id, worker_id)).values(**values)
                        .execution_options(synchronize_session=False))
