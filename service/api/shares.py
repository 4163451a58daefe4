"""The /shares routes: make a parameter-shared model from an unshared one (`nasprune share` as a worker job; issue
34), follow it, cancel it, read its log, download the model; a search then names it as its model, "share:<id>".

The request is checked like a search's inputs (the model inside the allowed roots, the task's files, the device)
and its groups against the model's layers before anything is queued, so a bad request is a 422 naming the field,
never a job that fails later. The API never imports torch: a worker runs the job (service/worker.py, ShareRunner).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from .. import shares as jobs
from ..config import LOG_FILE
from ..exports import servable_share
from ..models import Share, ShareStatus
from ..redact import Redactor
from .auth import OwnerDep
from .deps import SessionDep, SettingsDep
from .schemas import SharedRead, ShareRead, ShareRequest
from .validation import InvalidSearch, build_share

log = logging.getLogger(__name__)

router = APIRouter(tags=["shares"])
ShareId = Annotated[str, PathParam(max_length=64)]
NOT_FOUND: dict[int | str, dict[str, str]] = {404: {"description": "no share with this id"}}
RETRY_AFTER_S = 10


def share_read(row: Share, redactor: Redactor) -> ShareRead:
    succeeded = row.status == ShareStatus.SUCCEEDED
    result = None if row.result is None else SharedRead.model_validate(row.result)
    return ShareRead(id=row.id, status=row.status.value, cancel_requested=row.cancel_requested,
                     attempts=row.attempts, request=redactor.request(row.request), error=redactor.error(row.error),
                     stage=row.stage, step=row.step, total_steps=row.total_steps, device=row.device, result=result,
                     model=f"{jobs.MODEL_PREFIX}{row.id}" if succeeded else None,
                     download=f"/shares/{row.id}/download" if succeeded else None,
                     created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at)


@router.post("/shares", response_model=ShareRead, status_code=status.HTTP_202_ACCEPTED,
             responses={200: {"description": "the same share (same settings), already queued, running or done"},
                        422: {"description": "the request cannot run (the detail names the field)"}})
def create_share(body: ShareRequest, response: Response, session: SessionDep, settings: SettingsDep,
                 owner: OwnerDep) -> ShareRead:
    """Queue a share: the unshared model fine-tuned on the task (`share.teacher_epochs`, unless 0), its layers tied
    into `share.groups` shared blocks, recovered by distillation with step-count augmentation (Chen et al.,
    Findings of EMNLP 2023, read as an ODE). A repeated request with the same settings returns the same share;
    once it succeeds, a search takes it as `"model": "share:<id>"`."""
    try:
        spec = build_share(body, settings, session=session, owner_id=owner)
    except InvalidSearch as exc:
        raise HTTPException(422, str(exc)) from None
    request = {"run": spec.to_dict(), "compute": body.compute.to_dict()}
    row, created = jobs.request(session, request=request, owner=owner)
    session.commit()
    if created:
        log.info("queued share %s", row.id)
    else:
        response.status_code = status.HTTP_200_OK
    return share_read(row, Redactor.for_settings(settings))


@router.get("/shares", response_model=list[ShareRead])
def list_shares(session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> list[ShareRead]:
    """The caller's shares, newest first."""
    redactor = Redactor.for_settings(settings)
    return [share_read(row, redactor) for row in jobs.list_for_owner(session, owner=owner)]


@router.get("/shares/{share_id}", response_model=ShareRead, responses=NOT_FOUND)
def get_share(share_id: ShareId, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> ShareRead:
    return share_read(jobs.get(session, share_id, owner=owner), Redactor.for_settings(settings))


@router.post("/shares/{share_id}/cancel", response_model=ShareRead, responses=NOT_FOUND)
def cancel_share(share_id: ShareId, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> ShareRead:
    """A queued share is cancelled at once; a running one stops at its worker's next heartbeat, keeping its
    checkpoints (asking for it again resumes it); an ended one is left as it is."""
    row = jobs.request_cancel(session, share_id, owner=owner)
    session.commit()
    return share_read(row, Redactor.for_settings(settings))


@router.get("/shares/{share_id}/logs", response_class=PlainTextResponse, responses=NOT_FOUND)
def share_logs(share_id: ShareId, session: SessionDep, settings: SettingsDep, owner: OwnerDep,
               tail: Annotated[int | None, Query(ge=1, le=100_000, description="only the last N lines")] = None
               ) -> str:
    """What the share's job logged, in its user's terms (no tracebacks, paths as the user gave them)."""
    row = jobs.get(session, share_id, owner=owner)
    return Redactor.for_settings(settings).user_log(jobs.folder(settings.shares_root, row.settings_key) / LOG_FILE,
                                                    tail)


@router.get("/shares/{share_id}/download", response_class=FileResponse,
            responses={200: {"content": {"application/gzip": {}}}, **NOT_FOUND,
                       202: {"model": ShareRead, "description": "its archive was gone: the share is queued to build "
                                                                "it again; ask again after Retry-After seconds"},
                       409: {"description": "the share has not succeeded"}})
def download_share(share_id: ShareId, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> Response:
    """The shared model as a .tar.gz of a Hugging Face folder (it loads with trust_remote_code=True, or with
    nasprune's loader without remote code; its subnetwork.json records the unique params and the metrics)."""
    row = jobs.get(session, share_id, owner=owner)
    if row.status != ShareStatus.SUCCEEDED:
        raise HTTPException(409, f"share {share_id} is {row.status.value}: it can be downloaded once it has "
                                 "succeeded")
    if not (row.path and servable_share(row.path, settings.shares_root)):  # removed: its worker builds it again
        row = jobs.requeue(session, row)
        session.commit()
        return JSONResponse(share_read(row, Redactor.for_settings(settings)).model_dump(mode="json"),
                            status_code=202, headers={"Retry-After": str(RETRY_AFTER_S)})
    return FileResponse(row.path, media_type="application/gzip", filename=f"{jobs.archive_name(row)}.tar.gz")

