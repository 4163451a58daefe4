"""The routes: thin wrappers over service.repository / service.queue / service.refinements; validation in
.validation. Errors are HTTPExceptions (or repository errors mapped in create_app) with a `detail` message.

Everything here reads the database only (a search's front, trials and refined entries are rows; service/store.py)
and never imports torch: a download queues an export job that a worker builds (service/exports.py) and waits for
it without holding a thread or a session.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from search.records import compression_key, serves_refined
from search.report import relative_figures

from .. import compressions, legacy, refinements
from .. import repository as repo
from ..config import LOG_FILE, Settings
from ..db import current_revision
from ..exports import FORMATS, archive_name, refined_source, servable, servable_compressed
from ..models import (
    EXPORT_ENDED,
    Compression,
    CompressionStatus,
    Export,
    ExportStatus,
    FrontPoint,
    Refinement,
    Search,
    SearchStatus,
    TrialRow,
)
from ..redact import Redactor
from .auth import PUBLIC, OwnerDep
from .deps import FactoryDep, SessionDep, SettingsDep
from .schemas import (
    CompressCreate,
    CompressedRead,
    CompressionRead,
    ExportRead,
    Health,
    Links,
    ParetoRead,
    PointRead,
    Progress,
    RefineCreate,
    RefinedRead,
    RefinementBrief,
    RefinementRead,
    SearchPage,
    SearchRead,
    SearchRequest,
    ShareRequest,
    TrialPage,
    TrialRead,
)
from .validation import InvalidSearch, build_request

log = logging.getLogger(__name__)

router = APIRouter()
STATIC = Path(__file__).resolve().parent / "static"
# Error statuses in the OpenAPI document (create_app gives every error response the ErrorRead body).
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no search with this id"}}
NOT_ENDED: dict[int | str, dict[str, Any]] = {
    409: {"description": "the search has not succeeded: its front is not written yet"}}
# SQLite's largest integer: a larger offset or position cannot even be bound to a query (it was a 500).
MAX_INT = 2**63 - 1


def links(search_id: str) -> Links:
    base = f"/searches/{search_id}"
    return Links(self=base, trials=f"{base}/trials", pareto=f"{base}/pareto", logs=f"{base}/logs",
                 cancel=f"{base}/cancel", refinements=f"{base}/refinements",
                 compressions=f"{base}/compressions")


def search_read(search: Search, redactor: Redactor) -> SearchRead:
    """The search as its user sees it: the stored request and error name paths as the user gave them (an upload by
    its dataset id), never where the server keeps them (service/redact.py)."""
    elapsed = None
    if search.started_at is not None:
        end = search.finished_at or datetime.now(UTC)
        elapsed = max((end - search.started_at).total_seconds(), 0.0)
    progress = Progress(stage=search.stage, epoch=search.epoch, step=search.step, total_steps=search.total_steps,
                        evaluations_done=search.evaluations_done, evaluations_total=search.evaluations_total,
                        hypervolume=search.hypervolume, elapsed_s=elapsed,
                        eta_s=None if search.status.is_terminal else search.eta_s)
    return SearchRead(id=search.id, status=search.status.value, cancel_requested=search.cancel_requested,
                      attempts=search.attempts, worker_id=search.worker_id, device=search.device,
                      error=redactor.error(search.error),
                      created_at=search.created_at, started_at=search.started_at, finished_at=search.finished_at,
                      heartbeat_at=search.heartbeat_at, progress=progress,
                      request=redactor.request(search.request),
                      links=links(search.id))


def trial_read(row: TrialRow) -> TrialRead:
    return TrialRead(index=row.index, config=row.config, objectives=row.objectives, validation=row.validation,
                     params=row.params, macs=row.macs, latency_ms=row.latency_ms, elapsed_s=row.elapsed_s,
                     dynamics=row.dynamics)


def folder_of(search: Search, settings: Any) -> Path:
    return Path(search.folder) if search.folder else settings.search_folder(search.id)


# ------------------------------------------------------------------------------------------------ routes


@router.get("/", include_in_schema=False, openapi_extra=PUBLIC)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def plot_library() -> Path | None:
    """plotly.js as the `plotly` Python package ships it (pip install 'nasprune[web]'), found without importing
    plotly: the page's interactive plot, served by the app itself (the machines may be offline, so no CDN)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@router.get("/static/plotly.min.js", include_in_schema=False, openapi_extra=PUBLIC)
def plotly_js() -> FileResponse:
    path = plot_library()
    if path is None:
        raise HTTPException(404, "plotly is not installed on the server (pip install 'nasprune[web]'); the page "
                                 "draws its plain plot instead")
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/favicon.svg", include_in_schema=False, openapi_extra=PUBLIC)
def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/healthz", response_model=Health, tags=["meta"], openapi_extra=PUBLIC)
def healthz(session: SessionDep) -> Health:
    session.execute(text("SELECT 1"))
    return Health(status="ok", database="ok", schema_revision=current_revision(session.get_bind()))


@router.get("/options", tags=["meta"])
def options() -> dict[str, Any]:
    """The JSON schemas of the request bodies (every field's default, bounds, choices and description): the web
    page builds its form from them, so it cannot drift from what the API accepts."""
    return {"search": SearchRequest.model_json_schema(), "refine": RefineCreate.model_json_schema(),
            "compress": CompressCreate.model_json_schema(), "share": ShareRequest.model_json_schema(),
            "plot_library": "/static/plotly.min.js" if plot_library() is not None else None}


@router.post("/searches", response_model=SearchRead, status_code=status.HTTP_201_CREATED, tags=["searches"],
             responses={200: {"description": "the search already created with this idempotency key"},
                        409: {"description": "the idempotency key was used for another request"},
                        422: {"description": "the request cannot run (the detail says why)"}})
def create_search(body: SearchRequest, response: Response, settings: SettingsDep, session: SessionDep,
                  owner: OwnerDep, idempotency_key: Annotated[str | None, Header(max_length=200)] = None
                  ) -> SearchRead:
    key = body.idempotency_key or idempotency_key
    if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
        raise HTTPException(422, "the Idempotency-Key header and the idempotency_key field differ")
    digest = repo.body_digest(body.model_dump(mode="json", exclude_unset=True, exclude={"idempotency_key"}))
    # a retry of the same body is answered from the stored search, even if that body would no longer resolve (its
    # data file moved, a model root changed): the search exists and the client must learn its id
    retried = repo.search_by_key(session, key, owner=owner)
    if retried is not None and retried.request_digest == digest:
        response.status_code = status.HTTP_200_OK
        return search_read(retried, Redactor.for_settings(settings))
    try:
        spec, job = build_request(body, settings, session=session, owner_id=owner)
    except InvalidSearch as exc:
        raise HTTPException(422, str(exc)) from None
    request = repo.request_dict(spec, job, body.compute)
    search, created = repo.create_search(session, request=request, idempotency_key=key,
                                         folder_root=settings.searches_root, owner=owner, request_digest=digest)
    if not created and not repo.is_same_request(search, request, digest):
        raise HTTPException(409, f"idempotency key {key!r} was already used for a different request "
                                 f"(search {search.id})")
    session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    else:
        log.info("queued search %s", search.id)
    return search_read(search, Redactor.for_settings(settings))


@router.get("/searches", response_model=SearchPage, tags=["searches"])
def list_searches(session: SessionDep, settings: SettingsDep, owner: OwnerDep,
                  offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                  limit: Annotated[int, Query(ge=1, le=repo.MAX_PAGE)] = 50,
                  status_filter: Annotated[list[SearchStatus] | None, Query(alias="status")] = None) -> SearchPage:
    rows, total = repo.list_searches(session, status=status_filter, offset=offset, limit=limit, owner=owner)
    redactor = Redactor.for_settings(settings)
    return SearchPage(items=[search_read(s, redactor) for s in rows], total=total, offset=offset, limit=limit)


@router.get("/searches/{search_id}", response_model=SearchRead, tags=["searches"], responses=NOT_FOUND)
def get_search(search_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> SearchRead:
    return search_read(repo.get_search(session, search_id, owner=owner), Redactor.for_settings(settings))


@router.get("/searches/{search_id}/trials", response_model=TrialPage, tags=["searches"], responses=NOT_FOUND)
def list_trials(search_id: str, session: SessionDep, owner: OwnerDep,
                offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                limit: Annotated[int | None, Query(ge=1, le=100_000)] = None) -> TrialPage:
    rows = repo.list_trials(session, search_id, offset=offset, limit=limit, owner=owner)
    return TrialPage(items=[trial_read(r) for r in rows], total=repo.count_trials(session, search_id),
                     offset=offset)


def _stored_front(session: Session, search: Search, settings: Any) -> dict[str, Any]:
    """The front of a succeeded search (a search of an older release gets its front.json extras imported once,
    service.legacy); 409 if there is none yet."""
    front = None
    if search.status == SearchStatus.SUCCEEDED:
        front = legacy.import_front(session, search.id, folder_of(search, settings))
    if front is None:
        raise HTTPException(409, f"search {search.id} is {search.status.value}: its Pareto front is written when it "
                                 "succeeds (GET .../trials shows the trials so far)")
    return front


@router.get("/searches/{search_id}/pareto", response_model=ParetoRead, tags=["searches"],
            responses=NOT_FOUND | NOT_ENDED)
def pareto(search_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> dict[str, Any]:
    search = repo.get_search(session, search_id, owner=owner)
    front = _stored_front(session, search, settings)
    session.commit()  # a legacy import, if there was one
    latest = refinements.latest_by_position(session, search_id)
    redactor = Redactor.for_settings(settings)
    compressed: dict[int, list[CompressionRead]] = {}
    for row in compressions.list_for_search(session, search_id, owner=owner):
        compressed.setdefault(row.position, []).append(compression_read(row, redactor))
    points = []
    params_kind = (search.request.get("job") or {}).get("params_kind", "encoder")
    stored = front.get("points") or []  # with the extras the rows do not hold (knobs), in position order
    for row in repo.list_front(session, search_id, owner=owner):
        downloads = {f: f"/searches/{search_id}/pareto/{row.position}/download?format={f}" for f in FORMATS}
        asked = latest.get(row.position)
        extra = stored[row.position] if row.position < len(stored) else {}
        figures = {"params": row.params, "macs": row.macs, "latency_ms": row.latency_ms, "dynamics": row.dynamics,
                   "validation": row.validation, "test": row.test,
                   "measured_latency_ms": extra.get("measured_latency_ms")}
        points.append(PointRead(position=row.position, trial_index=row.trial_index, config=row.config,
                                objectives=row.objectives, validation=row.validation, test=row.test,
                                params=row.params, macs=row.macs, latency_ms=row.latency_ms,
                                dynamics=row.dynamics, relative=relative_figures(figures, front, params_kind),
                                knobs=extra.get("knobs"), measured_latency_ms=extra.get("measured_latency_ms"),
                                refined=refined_read(row.refined), downloads=downloads,
                                compressions=compressed.get(row.position, []),
                                refinement=None if asked is None else RefinementBrief(
                                    id=asked.id, status=asked.status.value, error=redactor.error(asked.error))))
    return front | {"points": points}


@router.get("/searches/{search_id}/pareto/{point}/knobs", tags=["searches"], responses=NOT_FOUND | NOT_ENDED)
def knobs(search_id: str, point: Annotated[int, PathParam(le=MAX_INT)], session: SessionDep, settings: SettingsDep,
          owner: OwnerDep) -> dict[str, Any]:
    """What front point k would score and cost with its runtime knobs turned (search.knobs: each exit threshold of
    the search's grid, token keep schedules scaled, each ODE step count), measured by the search: the web page's
    sliders read it. `knobs` is {} for a point without one."""
    search = repo.get_search(session, search_id, owner=owner)
    front = _stored_front(session, search, settings)
    row = _front_point(session, search_id, point, owner)
    stored = front.get("points") or []
    table = stored[row.position].get("knobs") if row.position < len(stored) else None
    return {"position": row.position, "config": row.config, "knobs": table or {}}


def refined_read(refined: dict[str, Any] | None) -> RefinedRead | None:
    """The stored "refined" entry as the API shows it: its figures and settings, not its folder (no server paths
    in responses)."""
    if refined is None:
        return None
    return RefinedRead(validation=refined["validation"], test=refined["test"], train_s=refined["train_s"],
                       kept=refined.get("kept", True), settings=refined["settings"])


def _front_point(session: Session, search_id: str, point: int, owner: str | None) -> FrontPoint:
    row = repo.get_front_point(session, search_id, point)
    if row is None:
        count = len(repo.list_front(session, search_id, owner=owner))
        raise HTTPException(404, f"search {search_id} has no front point {point} (it has {count}: 0..{count - 1})")
    return row


# ------------------------------------------------------------------------------------------------ downloads

POLL_FIRST_S, POLL_MAX_S = 0.05, 1.0  # how often a waiting download reads its job's row: soon, then each second
RETRY_AFTER_S = 10


@dataclass(frozen=True)
class _Ticket:
    """What a waiting download knows of its export job (read in a short session, none held while it waits)."""

    export: ExportRead
    path: str | None
    folder: Path
    redactor: Redactor


def _ticket(export: Export, folder: Path, redactor: Redactor) -> _Ticket:
    read = ExportRead(id=export.id, search_id=export.search_id, position=export.position, format=export.format,
                      refined=export.refined, status=export.status.value, error=redactor.error(export.error),
                      device=export.device,
                      created_at=export.created_at, started_at=export.started_at, finished_at=export.finished_at)
    return _Ticket(export=read, path=export.path, folder=folder, redactor=redactor)


def _queue_export(factory: Any, settings: Settings, search_id: str, point: int, owner: str | None, format: str,
                  sliced: bool) -> _Ticket:
    """The export job this download needs, queued if there is none, queued again if it failed, was cancelled or
    its archive is gone (a new request retries it)."""
    with factory() as session:
        search = repo.get_search(session, search_id, owner=owner)
        _stored_front(session, search, settings)
        row = _front_point(session, search_id, point, owner)
        folder = folder_of(search, settings)
        data = {"config": row.config, "refined": row.refined}
        if format == "onnx" and row.config.get("token_keep") is not None:  # supernet.extract.export_onnx says why
            raise HTTPException(409, f"front point {point} drops tokens, which an ONNX graph cannot express: "
                                     "download it with format=hf (the folder runs it with transformers)")
        if format == "onnx" and row.config.get("exit_threshold") is not None:
            raise HTTPException(409, f"front point {point} exits early (per example, the batch shrinking), which an "
                                     "ONNX graph cannot express: download it with format=hf (the folder runs it with "
                                     "transformers)")
        refined = not sliced and serves_refined(data)
        if refined and refined_source(folder, point, data) is None:  # never the slice for the refined model
            raise HTTPException(409, f"front point {point} of search {search_id} was refined, but its refined model "
                                     "is missing or unusable on the server (the server log says why); add "
                                     "?sliced=true to download the sub-network sliced from the supernet instead")
        export = repo.request_export(session, search_id=search_id, position=point, format=format, refined=refined)
        if export.status in (ExportStatus.FAILED, ExportStatus.CANCELLED) or (
                export.status == ExportStatus.SUCCEEDED and not (export.path and servable(export.path, folder))):
            export = repo.requeue_export(session, export, was=export.status)
        session.commit()
        return _ticket(export, folder, Redactor.for_settings(settings))


def _read_export(factory: Any, ticket: _Ticket) -> _Ticket | None:
    with factory() as session:
        export = session.get(Export, ticket.export.id)
        return None if export is None else _ticket(export, ticket.folder, ticket.redactor)


@router.get("/searches/{search_id}/pareto/{point}/download", tags=["searches"], response_class=FileResponse,
            responses={200: {"content": {"application/gzip": {}}},
                       202: {"model": ExportRead, "description": "the archive is still being built: ask again after "
                                                                 "Retry-After seconds"},
                       404: {"description": "no search or no front point with this id"},
                       409: {"description": "the search has not succeeded, or the point cannot be had in this "
                                            "format or kind (the detail says why)"},
                       500: {"model": ExportRead, "description": "the export failed (its error says why); asking "
                                                                 "again retries it"}})
async def download(search_id: str, point: Annotated[int, PathParam(le=MAX_INT)], factory: FactoryDep,
                   settings: SettingsDep, owner: OwnerDep,
                   format: Literal["hf", "onnx"] = "hf", sliced: bool = False) -> Response:
    """The front point as a .tar.gz of a Hugging Face folder (`hf`) or of that folder plus model.onnx (`onnx`):
    the refined model if the point was refined and kept (the file name then ends in -refined), else, or with
    `sliced=true`, the sub-network sliced from the supernet. The first request queues an export job (one per
    point, format and kind, however many ask at once) that a worker builds (seconds to minutes) and waits for it
    up to the server's export_wait_s; past that it answers 202 with Retry-After. Then it is served from the
    cache."""
    ticket = await run_in_threadpool(_queue_export, factory, settings, search_id, point, owner, format, sliced)
    deadline, delay = time.monotonic() + settings.export_wait_s, POLL_FIRST_S
    while ticket.export.status not in EXPORT_ENDED and (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX_S)
        # None: the job was dropped meanwhile (the point refined again, its archive stale): queue it again
        ticket = (await run_in_threadpool(_read_export, factory, ticket)
                  or await run_in_threadpool(_queue_export, factory, settings, search_id, point, owner, format,
                                             sliced))
    export = ticket.export
    if export.status == ExportStatus.SUCCEEDED and ticket.path and servable(ticket.path, ticket.folder):
        return FileResponse(ticket.path, media_type="application/gzip",
                            filename=f"{archive_name(search_id, point, format, refined=export.refined)}.tar.gz")
    if export.status == ExportStatus.SUCCEEDED:  # built, then removed (a new refine): the next request rebuilds
        export = export.model_copy(update={"status": ExportStatus.QUEUED.value})
    failed = export.status in (ExportStatus.FAILED, ExportStatus.CANCELLED)
    return JSONResponse(export.model_dump(mode="json"), status_code=500 if failed else 202,
                        headers=None if failed else {"Retry-After": str(RETRY_AFTER_S)})


# ------------------------------------------------------------------------------------------------ refinements


def refinement_read(row: Refinement, redactor: Redactor) -> RefinementRead:
    return RefinementRead(id=row.id, search_id=row.search_id, position=row.position, settings=row.settings,
                          status=row.status.value, error=redactor.error(row.error), device=row.device,
                          created_at=row.created_at,
                          started_at=row.started_at, finished_at=row.finished_at)


def _refined_with(refined: dict[str, Any] | None, settings: dict[str, float]) -> bool:
    """Whether the point's refined model was made with these epochs and learning rate."""
    stored = (refined or {}).get("settings") or {}
    try:
        return all(float(stored[k]) == v for k, v in settings.items())
    except (KeyError, TypeError, ValueError):
        return False


@router.post("/searches/{search_id}/pareto/{point}/refine", response_model=RefinementRead,
             status_code=status.HTTP_202_ACCEPTED, tags=["refinements"],
             responses={200: {"description": "the same refinement, already queued or running"},
                        404: {"description": "no search or no front point with this id"},
                        409: {"description": "the search has not succeeded, the point is already refined with "
                                             "these settings, or another refinement of it is queued or running"}})
def refine(search_id: str, point: Annotated[int, PathParam(le=MAX_INT)], response: Response,
           session: SessionDep, settings: SettingsDep, owner: OwnerDep, body: RefineCreate | None = None
           ) -> RefinementRead:
    """Queue a refine of one front point of a succeeded search (fine-tuning at its own size, on the labels); a
    worker runs it, after which the point's downloads serve the refined model (if it is kept: at least as good
    as the slice on validation). Costs about `epochs` epochs of training at the point's size."""
    body = body or RefineCreate()
    search = repo.get_search(session, search_id, owner=owner)
    if search.status != SearchStatus.SUCCEEDED:
        raise HTTPException(409, f"search {search_id} is {search.status.value}: its front points can be refined "
                                 "once it has succeeded")
    _stored_front(session, search, settings)
    row = _front_point(session, search_id, point, owner)
    wanted = body.model_dump()
    existing = refinements.find_active(session, search_id, point)
    if existing is None:
        if _refined_with(row.refined, wanted):
            raise HTTPException(409, f"front point {point} of search {search_id} is already refined with these "
                                     f"settings ({_settings_text(wanted)}); download it, or ask for other settings")
        created = refinements.create(session, search_id=search_id, position=point, settings=wanted, owner=owner)
        if created is not None:
            session.commit()
            log.info("queued refinement %s of front point %d of search %s", created.id, point, search_id)
            return refinement_read(created, Redactor.for_settings(settings))
        existing = refinements.find_active(session, search_id, point)  # queued by a request just before this one
        if existing is None:  # and already ended: rare enough that the client may simply ask again
            raise HTTPException(409, f"front point {point} of search {search_id} was being refined by another "
                                     "request that has just ended; ask again")
    if existing.settings != wanted:
        raise HTTPException(409, f"front point {point} of search {search_id} has refinement {existing.id} "
                                 f"{existing.status.value} with other settings ({_settings_text(existing.settings)});"
                                 " wait for it to end or cancel it, then ask again")
    response.status_code = status.HTTP_200_OK
    return refinement_read(existing, Redactor.for_settings(settings))


def _settings_text(settings: dict[str, float]) -> str:
    """Refine settings as the 409s quote them: "epochs 1, learning_rate 0.0001"."""
    return ", ".join(f"{key} {value:g}" for key, value in settings.items())


@router.get("/searches/{search_id}/refinements", response_model=list[RefinementRead], tags=["refinements"],
            responses=NOT_FOUND)
def list_refinements(search_id: str, session: SessionDep, settings: SettingsDep,
                     owner: OwnerDep) -> list[RefinementRead]:
    """The search's refinements, newest first."""
    redactor = Redactor.for_settings(settings)
    return [refinement_read(r, redactor) for r in refinements.list_for_search(session, search_id, owner=owner)]


@router.post("/searches/{search_id}/refinements/{refinement_id}/cancel", response_model=RefinementRead,
             tags=["refinements"], responses={404: {"description": "no search or no refinement with this id"}})
def cancel_refinement(search_id: str, refinement_id: Annotated[str, PathParam(max_length=64)], session: SessionDep,
                      settings: SettingsDep, owner: OwnerDep) -> RefinementRead:
    """A queued refinement is cancelled at once; a running one stops at its worker's next heartbeat (the point
    keeps the refined model it had, if any); an ended one is left as it is."""
    row = refinements.request_cancel(session, search_id, refinement_id, owner=owner)
    session.commit()
    return refinement_read(row, Redactor.for_settings(settings))


# ------------------------------------------------------------------------------------------------ compressions


def compression_read(row: Compression, redactor: Redactor) -> CompressionRead:
    result = None
    if row.result is not None:
        r = row.result
        result = CompressedRead(params=r["params"], point_params=r["point_params"], macs=r["macs"],
                                seq_len=r["seq_len"], expected_macs=r.get("expected_macs"),
                                validation=r["metrics"]["validation"], test=r["metrics"].get("test"),
                                point_validation=(r.get("point_metrics") or {}).get("validation"),
                                train_s=r["train_s"], source=r["source"])
    download = (f"/searches/{row.search_id}/compressions/{row.id}/download"
                if row.status == CompressionStatus.SUCCEEDED else None)
    return CompressionRead(id=row.id, search_id=row.search_id, position=row.position, settings=row.settings,
                           status=row.status.value, error=redactor.error(row.error), step=row.step,
                           total_steps=row.total_steps, device=row.device, result=result, download=download,
                           created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at)


def _check_fits(folder: Path, point: FrontPoint, config: CompressCreate) -> None:
    """A 422 naming the setting when the ranks do not fit the point (checked here, before a worker loads anything:
    supernet.counting needs only the supernet's config file and the point's structure)."""
    from fastapi.exceptions import RequestValidationError

    from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
    from supernet.counting import count_params
    from supernet.factors import Compression as Factorisation
    from supernet.factors import CompressionError

    try:
        supernet = SupernetConfig.from_dict(json.loads((folder / "supernet" / "supernet_config.json").read_text()))
    except (OSError, ValueError):
        return  # nothing to check against here: the worker checks (and fails the job with the reason)
    try:
        sub = SubNetworkConfig.from_dict(point.config).validate(supernet)
    except ConfigError:
        return  # a front that does not match its supernet: the worker fails the job with the reason
    try:
        count_params(supernet, sub, Factorisation.from_dict(config.compression()))
    except CompressionError as exc:
        message = str(exc)
        field = next((name for name in ("embedding_rank", "rank", "bank", "protocol") if message.startswith(name)),
                     None)
        raise RequestValidationError([{"loc": ("body", field) if field else ("body",), "msg": message,
                                       "type": "value_error"}]) from None


@router.post("/searches/{search_id}/pareto/{point}/compress", response_model=CompressionRead,
             status_code=status.HTTP_202_ACCEPTED, tags=["compressions"],
             responses={200: {"description": "the same compression (same point and settings), already queued, "
                                             "running or done"},
                        404: {"description": "no search or no front point with this id"},
                        409: {"description": "the search has not succeeded"},
                        422: {"description": "a setting out of range, or ranks that do not fit the point (the "
                                             "field is named)"}})
def compress(search_id: str, point: Annotated[int, PathParam(le=MAX_INT)], response: Response,
             session: SessionDep, settings: SettingsDep, owner: OwnerDep, body: CompressCreate | None = None
             ) -> CompressionRead:
    """Queue a compression of one front point of a succeeded search (Ren et al., ICLR 2022: its weight matrices
    decomposed, then recovered by distillation from the point itself); a worker runs it, measures the compressed
    model on the task's validation and test splits, and builds its download. The same point and settings again
    return the same compression. Costs about `epochs` epochs of training."""
    body = body or CompressCreate()
    search = repo.get_search(session, search_id, owner=owner)
    if search.status != SearchStatus.SUCCEEDED:
        raise HTTPException(409, f"search {search_id} is {search.status.value}: its front points can be compressed "
                                 "once it has succeeded")
    _stored_front(session, search, settings)
    row = _front_point(session, search_id, point, owner)
    _check_fits(folder_of(search, settings), row, body)
    wanted = body.to_dict()
    seed = repo.parse_request(search.request)[0].training.seed
    job, created = compressions.request(session, search_id=search_id, position=point, settings=wanted,
                                        settings_key=compression_key(wanted, seed), owner=owner)
    session.commit()
    if created:
        log.info("queued compression %s of front point %d of search %s", job.id, point, search_id)
    else:
        response.status_code = status.HTTP_200_OK
    return compression_read(job, Redactor.for_settings(settings))


@router.get("/searches/{search_id}/compressions", response_model=list[CompressionRead], tags=["compressions"],
            responses=NOT_FOUND)
def list_compressions(search_id: str, session: SessionDep, settings: SettingsDep,
                      owner: OwnerDep) -> list[CompressionRead]:
    """The search's compressions, newest first."""
    redactor = Redactor.for_settings(settings)
    return [compression_read(c, redactor) for c in compressions.list_for_search(session, search_id, owner=owner)]


@router.get("/searches/{search_id}/compressions/{compression_id}", response_model=CompressionRead,
            tags=["compressions"], responses={404: {"description": "no search or no compression with this id"}})
def get_compression(search_id: str, compression_id: Annotated[str, PathParam(max_length=64)], session: SessionDep,
                    settings: SettingsDep, owner: OwnerDep) -> CompressionRead:
    return compression_read(compressions.get(session, search_id, compression_id, owner=owner),
                            Redactor.for_settings(settings))


@router.post("/searches/{search_id}/compressions/{compression_id}/cancel", response_model=CompressionRead,
             tags=["compressions"], responses={404: {"description": "no search or no compression with this id"}})
def cancel_compression(search_id: str, compression_id: Annotated[str, PathParam(max_length=64)],
                       session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> CompressionRead:
    """A queued compression is cancelled at once; a running one stops at its worker's next heartbeat, keeping its
    recovery checkpoint (asking for it again resumes it); an ended one is left as it is."""
    row = compressions.request_cancel(session, search_id, compression_id, owner=owner)
    session.commit()
    return compression_read(row, Redactor.for_settings(settings))


@router.get("/searches/{search_id}/compressions/{compression_id}/download", tags=["compressions"],
            response_class=FileResponse,
            responses={200: {"content": {"application/gzip": {}}},
                       404: {"description": "no search or no compression with this id"},
                       202: {"model": CompressionRead, "description": "its archive was gone: the compression is "
                                                                    "queued to build it again; ask again after "
                                                                    "Retry-After seconds"},
                       409: {"description": "the compression has not succeeded"}})
def download_compression(search_id: str, compression_id: Annotated[str, PathParam(max_length=64)],
                         session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> Response:
    """The compressed model as a .tar.gz of a Hugging Face folder (it loads with trust_remote_code=True, or with
    nasprune's loader without remote code), built by the compression's worker job."""
    row = compressions.get(session, search_id, compression_id, owner=owner)
    if row.status != CompressionStatus.SUCCEEDED:
        raise HTTPException(409, f"compression {compression_id} is {row.status.value}: it can be downloaded once it "
                                 "has succeeded")
    folder = folder_of(row.search, settings)
    if not (row.path and servable_compressed(row.path, folder)):  # removed: its worker builds it again
        row = compressions.requeue(session, row)
        session.commit()
        return JSONResponse(compression_read(row, Redactor.for_settings(settings)).model_dump(mode="json"),
                            status_code=202, headers={"Retry-After": str(RETRY_AFTER_S)})
    return FileResponse(row.path, media_type="application/gzip",
                        filename=f"{compressions.archive_name(row)}.tar.gz")


# ------------------------------------------------------------------------------------------------ the rest


@router.post("/searches/{search_id}/cancel", response_model=SearchRead, tags=["searches"], responses=NOT_FOUND)
def cancel(search_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> SearchRead:
    """A queued search is cancelled at once; a running one stops at its worker's next heartbeat, keeping the
    trials done; an ended one is left as it is."""
    search = repo.request_cancel(session, search_id, owner=owner)
    session.commit()
    return search_read(search, Redactor.for_settings(settings))


@router.delete("/searches/{search_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["searches"],
               responses={**NOT_FOUND, 409: {"description": "the search, or a refinement of one of its points, is "
                                                          "running: cancel it first"}})
def delete(search_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> Response:
    search = repo.get_search(session, search_id, owner=owner)
    folder = folder_of(search, settings)
    repo.delete_search(session, search_id, owner=owner)
    session.commit()
    # Only ever remove a folder inside the searches root (the folder column comes from the database).
    if folder.is_dir() and folder.resolve().is_relative_to(settings.searches_root.resolve()):
        shutil.rmtree(folder, ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/searches/{search_id}/logs", response_class=PlainTextResponse, tags=["searches"], responses=NOT_FOUND)
def logs(search_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep,
         tail: Annotated[int | None, Query(ge=1, le=100_000, description="only the last N lines")] = None) -> str:
    """What the search's jobs logged, in its user's terms: no tracebacks (those stay in the server log), paths as
    the user gave them. The worker writes it so; a log written by an older release is read through the same
    filter."""
    search = repo.get_search(session, search_id, owner=owner)
    return Redactor.for_settings(settings).user_log(folder_of(search, settings) / LOG_FILE, tail)

