"""Keyword-only data functions over a SQLAlchemy Session: searches, trials, the front, export jobs.

The caller owns the transaction (these functions flush, never commit), so an API route or a worker step can
group several calls into one unit of work. Every read-then-write that could race another process is a single
statement (INSERT ... ON CONFLICT DO NOTHING, conditional UPDATE), which is what keeps them correct with several
workers on one SQLite file; see service/db.py for why SQLite transactions alone would not.

Searches are returned as ORM objects (`models.Search`); trials convert to and from `search.runner.Trial`, the
type the search loop hands to its `on_trial` callback and takes back to resume.

Ownership: with API tokens on, each search belongs to the token that created it. The functions an API route
calls first take `owner` (the caller's token id): a search of another owner is SearchNotFound, exactly like an
unknown id, so a caller cannot even learn that it exists. `owner=None` (no tokens; the worker) sees every search.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from supernet.config import ConfigError, SubNetworkConfig

from .models import (
    RUNNING_STATUSES,
    Compression,
    CompressionStatus,
    Export,
    ExportStatus,
    FrontPoint,
    FrontRow,
    Refinement,
    RefinementStatus,
    Search,
    SearchStatus,
    TrialRow,
    new_id,
    utcnow,
)

if TYPE_CHECKING:  # search.runner imports torch and transformers: seconds the API and the queue need not pay
    from search.runner import Trial
    from search.settings import SearchJob
    from supernet.settings import Compute, RunSpec

log = logging.getLogger(__name__)

MAX_PAGE = 1000
# What a worker may write with update_progress (status moves go through service.queue, which checks ownership).
PROGRESS_FIELDS = frozenset({"stage", "epoch", "step", "total_steps", "evaluations_done", "evaluations_total",
                             "hypervolume", "eta_s", "folder"})


class RepositoryError(Exception):
    """Base of the errors below, so a caller can map them all (e.g. to HTTP responses) in one place."""


class SearchNotFound(RepositoryError, LookupError):
    def __init__(self, search_id: str) -> None:
        super().__init__(f"no search with id {search_id!r}")
        self.search_id = search_id


class InvalidArgument(RepositoryError, ValueError):
    """An argument the caller can fix: an unknown field or status, a negative offset, a malformed request."""


class TrialConflict(RepositoryError):
    """A trial index that already holds another sub-network, or a sub-network already stored under another
    index: the search and the database disagree about what was evaluated, which resuming must not paper over."""


class SearchActive(RepositoryError):
    """The search (or a refinement of one of its points) is running; cancel it and wait for it to stop before
    deleting it."""


# ------------------------------------------------------------------------------------------------ helpers


def _canonical_json(data: Any) -> str:
    """One JSON text per value (sorted keys, no spaces): what trial keys and request digests compare."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def config_key(config: SubNetworkConfig | Mapping[str, Any]) -> str:
    """Canonical JSON of a sub-network: equal SubNetworkConfigs give equal keys (the UNIQUE trial key)."""
    try:
        sub = config if isinstance(config, SubNetworkConfig) else SubNetworkConfig.from_dict(config)
    except ConfigError as exc:
        raise InvalidArgument(f"not a sub-network config: {exc}") from None
    return _canonical_json(sub.to_dict())


def request_dict(spec: RunSpec, job: SearchJob, compute: Compute | None = None) -> dict[str, Any]:
    """The stored form of a search request: {"run": RunSpec dict, "job": SearchJob dict, "compute": Compute dict}
    (a request stored before compute existed has none: the defaults)."""
    return {"run": spec.to_dict(), "job": job.to_dict()} | ({} if compute is None else {"compute": compute.to_dict()})


def body_digest(body: Mapping[str, Any]) -> str:
    """sha256 of a request body as the client sent it (canonical JSON): what makes a retried POST the same request
    whatever defaults the server fills in."""
    return hashlib.sha256(_canonical_json(body).encode("utf-8")).hexdigest()


def is_same_request(search: Search, request: Mapping[str, Any], digest: str | None) -> bool:
    """Whether a POST that reused `search`'s idempotency key asks for the same search: the same body as sent, or,
    for a search stored without a digest (before migration 0006) or a body sent differently, the same request once
    the defaults are filled in."""
    return (digest is not None and search.request_digest == digest) or search.request == request


def parse_compute(request: Mapping[str, Any]) -> Compute:
    """Where a stored search request asked to run (the defaults for one stored before it could say)."""
    from supernet.settings import Compute

    try:
        return Compute.model_validate(request.get("compute") or {})
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"malformed search request: compute: {exc}") from None


def parse_request(request: Mapping[str, Any]) -> tuple[RunSpec, SearchJob]:
    """RunSpec and SearchJob back from a stored request (what the worker runs)."""
    from search.settings import SearchJob
    from supernet.settings import RunSpec

    try:
        return RunSpec.from_dict(request["run"]), SearchJob.from_dict(request["job"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"malformed search request ({type(exc).__name__}: {exc}); expected "
                              '{"run": RunSpec fields, "job": SearchJob fields}') from None


def _statuses(status: SearchStatus | str | Iterable[SearchStatus | str] | None) -> list[SearchStatus] | None:
    if status is None:
        return None
    values = [status] if isinstance(status, str) else list(status)
    try:
        return [SearchStatus(v) for v in values]
    except ValueError:
        raise InvalidArgument(f"unknown status in {values!r}; known: {', '.join(s.value for s in SearchStatus)}"
                              ) from None


def insert_ignoring_conflicts(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """INSERT that does nothing when a unique constraint already holds the row; True if a row was added.

    One statement on SQLite and PostgreSQL (atomic against other writers, no savepoint needed); elsewhere a
    savepoint around a plain INSERT.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        # RETURNING, not rowcount: psycopg reports rowcount -1 for an INSERT with RETURNING, which SQLAlchemy
        # adds on PostgreSQL for server-generated keys; a returned row is the portable "it was inserted".
        statement = insert(table).values(**values).on_conflict_do_nothing()
        return session.execute(statement.returning(*table.primary_key.columns)).first() is not None
    try:
        with session.begin_nested():
            session.execute(table.insert().values(**values))
    except IntegrityError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ searches


def scoped_key(idempotency_key: str | None, owner: str | None) -> str | None:
    """The stored form of a client's idempotency key: the key itself without an owner; with one,
    "<owner>:<sha256 of the key>", so equal keys of two tokens are two searches (the UNIQUE constraint stays
    global) and the value fits the 200-character column whatever the key's length."""
    if idempotency_key is None or owner is None:
        return idempotency_key
    return f"{owner}:{hashlib.sha256(idempotency_key.encode('utf-8')).hexdigest()}"


def _owned(owner: str | None) -> list[Any]:
    """The WHERE clause limiting searches to `owner`'s (none without an owner)."""
    return [] if owner is None else [Search.owner_id == owner]


def search_by_key(session: Session, idempotency_key: str | None, *, owner: str | None = None) -> Search | None:
    """The search `owner` created with `idempotency_key`, or None (also for no key)."""
    key = scoped_key(idempotency_key, owner)
    if key is None:
        return None
    return session.scalar(select(Search).where(Search.idempotency_key == key, *_owned(owner)))


def create_search(session: Session, *, request: dict[str, Any], idempotency_key: str | None = None,
                  folder_root: str | Path | None = None, owner: str | None = None,
                  request_digest: str | None = None) -> tuple[Search, bool]:
    """Queue a new search owned by `owner`; (search, created). A known idempotency key (of the same owner)
    returns its search with created=False, so a client retrying a POST after a timeout gets the same search
    instead of a second one.

    `folder_root`, if given, sets the run folder to <folder_root>/<id>; `request_digest` is `body_digest` of the
    body as sent (see `is_same_request`).
    """
    key = scoped_key(idempotency_key, owner)
    existing = search_by_key(session, idempotency_key, owner=owner)
    if existing is not None:
        return existing, False
    search_id = new_id()  # chosen here, so the folder can name it
    values: dict[str, Any] = {
        "id": search_id, "status": SearchStatus.QUEUED, "request": request, "request_digest": request_digest,
        "idempotency_key": key,
        "created_at": utcnow(), "cancel_requested": False, "attempts": 0, "evaluations_done": 0,
        "folder": str(Path(folder_root) / search_id) if folder_root is not None else None, "owner_id": owner,
    }
    if key is None:
        search = Search(**values)
        session.add(search)
        session.flush()
        return search, True
    # Two clients racing with one key: exactly one INSERT lands; the other reads the winner's row.
    if insert_ignoring_conflicts(session, Search.__table__, values):
        return session.get_one(Search, search_id), True
    winner = search_by_key(session, idempotency_key, owner=owner)
    if winner is None:  # the conflict was not on the key (a uuid4 collision): not a real possibility
        raise RepositoryError(f"could not store the search with idempotency key {idempotency_key!r}")
    return winner, False


def get_search(session: Session, search_id: str, *, owner: str | None = None) -> Search:
    """The search `search_id`; SearchNotFound if there is none or, given an owner, if it is someone else's."""
    search = session.get(Search, search_id)
    if search is None or (owner is not None and search.owner_id != owner):
        raise SearchNotFound(search_id)
    return search


def list_searches(session: Session, *, status: SearchStatus | str | Iterable[SearchStatus | str] | None = None,
                  offset: int = 0, limit: int = 50, owner: str | None = None) -> tuple[list[Search], int]:
    """A page of searches (of `owner`, if given), newest first, and the total count matching the filter."""
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"need offset >= 0 and 1 <= limit <= {MAX_PAGE}, got offset={offset}, limit={limit}")
    statuses = _statuses(status)
    where = ([Search.status.in_(statuses)] if statuses is not None else []) + _owned(owner)
    total = session.scalar(select(func.count()).select_from(Search).where(*where)) or 0
    rows = session.scalars(select(Search).where(*where).order_by(Search.created_at.desc(), Search.id.desc())
                           .offset(offset).limit(limit)).all()
    return list(rows), total


def update_progress(session: Session, search_id: str, **fields: Any) -> Search:
    """Set progress fields (stage, epoch, step, total_steps, evaluations_done, evaluations_total, hypervolume,
    eta_s, folder); an unknown field is an error rather than silently dropped."""
    unknown = set(fields) - PROGRESS_FIELDS
    if unknown:
        raise InvalidArgument(f"not progress fields: {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(PROGRESS_FIELDS))}")
    search = get_search(session, search_id)
    for name, value in fields.items():
        setattr(search, name, value)
    session.flush()
    return search


def request_cancel(session: Session, search_id: str, *, owner: str | None = None) -> Search:
    """Ask a search to stop. A queued one is cancelled at once (no worker holds it); a running one is flagged
    and its worker stops at its next heartbeat; a finished one is left as it is."""
    search = get_search(session, search_id, owner=owner)
    # Conditional UPDATEs, not a read then a write: a worker may claim the queued search at the same moment.
    session.execute(update(Search).where(Search.id == search_id, Search.status == SearchStatus.QUEUED)
                    .values(status=SearchStatus.CANCELLED, cancel_requested=True, finished_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.execute(update(Search).where(Search.id == search_id, Search.status.in_(RUNNING_STATUSES))
                    .values(cancel_requested=True).execution_options(synchronize_session=False))
    session.refresh(search)
    return search


def delete_search(session: Session, search_id: str, *, force: bool = False, owner: str | None = None) -> None:
    """Delete a search and (by ON DELETE CASCADE) its trials, front and export records. Its files are the
    caller's to remove. A running search is refused unless `force`: its worker would keep writing."""
    search = get_search(session, search_id, owner=owner)
    if search.status in RUNNING_STATUSES and not force:
        raise SearchActive(f"search {search_id} is {search.status}; cancel it (POST /searches/{search_id}/cancel), "
                           "wait until its status is cancelled, then delete it")
    refining = session.scalar(select(Refinement).where(Refinement.search_id == search_id,
                                                       Refinement.status == RefinementStatus.RUNNING))
    if refining is not None and not force:
        raise SearchActive(f"front point {refining.position} of search {search_id} is being refined (refinement "
                           f"{refining.id}); cancel it (POST /searches/{search_id}/refinements/{refining.id}/cancel) "
                           "and wait until it stops, then delete the search")
    compressing = session.scalar(select(Compression).where(Compression.search_id == search_id,
                                                           Compression.status == CompressionStatus.RUNNING))
    if compressing is not None and not force:
        raise SearchActive(f"front point {compressing.position} of search {search_id} is being compressed "
                           f"(compression {compressing.id}); cancel it (POST /searches/{search_id}/compressions/"
                           f"{compressing.id}/cancel) and wait until it stops, then delete the search")
    session.delete(search)  # rows of children already loaded go through the ORM; the rest through the cascade
    session.flush()


# ------------------------------------------------------------------------------------------------ trials


def trial_values(trial: Trial) -> dict[str, Any]:
    data = trial.to_dict()
    return data | {"config_key": config_key(trial.config), "dynamics": trial.dynamics}


def to_trial(row: TrialRow) -> Trial:
    from search.runner import Trial

    return Trial.from_dict({"index": row.index, "config": row.config, "objectives": row.objectives,
                            "validation": row.validation, "params": row.params, "macs": row.macs,
                            "latency_ms": row.latency_ms, "elapsed_s": row.elapsed_s, "dynamics": row.dynamics})


def add_trial(session: Session, search_id: str, trial: Trial) -> bool:
    """Store a finished trial; True if it is new. The same trial again (a resumed search replaying its
    callback) is ignored; another sub-network under a stored index, or a stored one under a new index, raises
    TrialConflict."""
    get_search(session, search_id)
    values = trial_values(trial) | {"search_id": search_id}
    if insert_ignoring_conflicts(session, TrialRow.__table__, values):
        return True
    stored = session.scalars(select(TrialRow).where(
        TrialRow.search_id == search_id,
        (TrialRow.index == trial.index) | (TrialRow.config_key == values["config_key"]))).all()
    if any(row.index != trial.index or row.config_key != values["config_key"] for row in stored):
        raise TrialConflict(f"search {search_id}: trial {trial.index} {values['config_key']} clashes with stored "
                            + ", ".join(f"trial {row.index} {row.config_key}" for row in stored))
    log.debug("search %s: trial %d already stored", search_id, trial.index)
    return False


def list_trials(session: Session, search_id: str, *, offset: int = 0, limit: int | None = None,
                owner: str | None = None) -> list[TrialRow]:
    """Trials in evaluation order."""
    get_search(session, search_id, owner=owner)
    query = select(TrialRow).where(TrialRow.search_id == search_id).order_by(TrialRow.index).offset(offset)
    return list(session.scalars(query.limit(limit) if limit is not None else query).all())


def count_trials(session: Session, search_id: str) -> int:
    return session.scalar(select(func.count()).select_from(TrialRow).where(TrialRow.search_id == search_id)) or 0


def load_trials(session: Session, search_id: str) -> list[Trial]:
    """All trials of a search as `search.runner.Trial`, ready to resume the search loop with."""
    return [to_trial(row) for row in list_trials(session, search_id)]


# ------------------------------------------------------------------------------------------------ front


def replace_front(session: Session, search_id: str, points: Sequence[Mapping[str, Any]]) -> list[FrontPoint]:
    """Make `points` (write_front's "points": config, objectives, validation, test, params, macs, latency_ms, and
    "refined" for a point refined after the search) the search's front points, in order; each is linked to the stored
    trial of the same sub-network when there is one."""
    get_search(session, search_id)
    indices = {key: index for key, index in session.execute(
        select(TrialRow.config_key, TrialRow.index).where(TrialRow.search_id == search_id))}
    rows = []
    for position, point in enumerate(points):
        try:
            key = config_key(point["config"])
            refined = point.get("refined")
            if refined is not None and not isinstance(refined, Mapping):
                raise TypeError(f"refined is a {type(refined).__name__}, not an object")
            rows.append(FrontPoint(search_id=search_id, position=position, trial_index=indices.get(key),
                                   config=json.loads(key), objectives=dict(point["objectives"]),
                                   validation=dict(point["validation"]), test=dict(point.get("test") or {}),
                                   params=dict(point["params"]), macs=int(point["macs"]),
                                   latency_ms=float(point["latency_ms"]), dynamics=point.get("dynamics"),
                                   refined=dict(refined) if refined is not None else None))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"front point {position} is malformed ({type(exc).__name__}: {exc})") from None
    # "fetch": the old points leave the session too, so new rows reusing their ids do not collide with them
    session.execute(delete(FrontPoint).where(FrontPoint.search_id == search_id)
                    .execution_options(synchronize_session="fetch"))
    session.add_all(rows)
    session.flush()
    return rows


# The point fields front_points has columns for; any other field of a point (e.g. "search_validation") is kept in
# the fronts row's "point_extras", so a front loads back as it was saved.
POINT_COLUMNS = ("config", "objectives", "validation", "test", "params", "macs", "latency_ms", "refined",
                 "dynamics")


def save_front(session: Session, search_id: str, front: Mapping[str, Any]) -> None:
    """Make `front` (search.job.write_front's dict) the search's front: its points as front_points rows
    (`replace_front`), everything else in its fronts row. The caller's transaction makes the two one write."""
    try:
        points = list(front["points"])
    except (KeyError, TypeError):
        raise InvalidArgument(f"search {search_id}: a front needs a list of points") from None
    replace_front(session, search_id, points)
    extras = [{k: v for k, v in p.items() if k not in POINT_COLUMNS} for p in points]
    data = {k: v for k, v in front.items() if k != "points"} | {"point_extras": extras}
    row = session.get(FrontRow, search_id)
    if row is None:
        session.add(FrontRow(search_id=search_id, data=data))
    else:
        row.data, row.created_at = data, utcnow()
    session.flush()


def point_dict(row: FrontPoint) -> dict[str, Any]:
    """A front_points row as a point of write_front's dict ("refined" only where the point was refined)."""
    point = {"config": row.config, "objectives": row.objectives, "validation": row.validation, "params": row.params,
             "macs": row.macs, "latency_ms": row.latency_ms, "test": row.test}
    return (point | ({"refined": row.refined} if row.refined is not None else {})
            | ({"dynamics": row.dynamics} if row.dynamics is not None else {}))


def load_front(session: Session, search_id: str) -> dict[str, Any] | None:
    """The search's front as `save_front` stored it, with each point's current "refined" entry; None if no front
    row is stored (not written yet, or a search of an older release: service.legacy imports those)."""
    row = session.get(FrontRow, search_id)
    if row is None:
        return None
    data = dict(row.data)
    extras = data.pop("point_extras", [])
    points = [point_dict(p) for p in list_front(session, search_id)]
    for point, extra in zip(points, extras, strict=False):
        point.update({k: v for k, v in extra.items() if k not in point})
    return data | {"points": points}


def set_refined(session: Session, search_id: str, position: int, point: Mapping[str, Any]) -> FrontPoint:
    """Store point `position`'s "refined" entry on its row alone (an on-demand refine of one point; the
    other points, refined meanwhile perhaps, are left as they are). InvalidArgument if the stored point is
    another sub-network: the front was rewritten since."""
    row = get_front_point(session, search_id, position)
    refined = point.get("refined")
    if row is None or config_key(row.config) != config_key(point["config"]):
        raise InvalidArgument(f"search {search_id}: front point {position} is not the sub-network that was refined "
                              "(the front was rewritten meanwhile)")
    if not isinstance(refined, Mapping):
        raise InvalidArgument(f"search {search_id}: front point {position} has no refined entry")
    row.refined = dict(refined)
    session.flush()
    return row


def list_front(session: Session, search_id: str, *, owner: str | None = None) -> list[FrontPoint]:
    get_search(session, search_id, owner=owner)
    return list(session.scalars(select(FrontPoint).where(FrontPoint.search_id == search_id)
                                .order_by(FrontPoint.position)).all())


def get_front_point(session: Session, search_id: str, position: int) -> FrontPoint | None:
    return session.scalar(select(FrontPoint).where(FrontPoint.search_id == search_id,
                                                   FrontPoint.position == position))


# ------------------------------------------------------------------------------------------------ exports


def request_export(session: Session, *, search_id: str, position: int, format: str, refined: bool) -> Export:
    """The export job of this point, format and kind, queued if there is none (INSERT ... ON CONFLICT: of ten
    requests at once, one queues it). A failed one is returned as it is: the caller retries it with
    `requeue_export`."""
    values = {"search_id": search_id, "position": position, "format": format, "refined": refined,
              "status": ExportStatus.QUEUED, "created_at": utcnow(), "cancel_requested": False, "attempts": 0}
    insert_ignoring_conflicts(session, Export.__table__, values)
    export = get_export(session, search_id=search_id, position=position, format=format, refined=refined)
    if export is None:  # deleted between the two statements (its search deleted, or made stale): queue it again
        insert_ignoring_conflicts(session, Export.__table__, values)
        export = get_export(session, search_id=search_id, position=position, format=format, refined=refined)
    if export is None:
        raise RepositoryError(f"could not queue the export of point {position} of search {search_id}")
    return export


def requeue_export(session: Session, export: Export, *, was: ExportStatus) -> Export:
    """Queue an export job again if it is still `was` (a failed or cancelled job, or a succeeded one whose archive
    is gone): a conditional UPDATE, so of several requests at once one requeues it and a worker claims it once."""
    session.execute(update(Export).where(Export.id == export.id, Export.status == was)
                    .values(status=ExportStatus.QUEUED, error=None, path=None, attempts=0, worker_id=None,
                            heartbeat_at=None, cancel_requested=False, created_at=utcnow(), finished_at=None)
                    .execution_options(synchronize_session=False))
    session.refresh(export)
    return export


def forget_exports(session: Session, *, search_id: str, position: int, refined: bool) -> int:
    """Drop the export jobs of point `position` of this kind (their archives are now stale: the point was refined
    again); how many were dropped."""
    result = session.execute(delete(Export).where(Export.search_id == search_id, Export.position == position,
                                                  Export.refined.is_(refined))
                             .execution_options(synchronize_session="fetch"))
    session.flush()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def get_export(session: Session, *, search_id: str, position: int, format: str, refined: bool) -> Export | None:
    return session.scalar(select(Export).where(Export.search_id == search_id, Export.position == position,
                                               Export.format == format, Export.refined.is_(refined)))
