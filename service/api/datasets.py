"""The /datasets routes: upload a CSV/TSV/JSONL file, list, read and delete the caller's datasets.

The upload is parsed by Starlette's multipart parser as the body streams in: the file part is spooled to a
temporary file (memory, then disk) in a worker thread, so the event loop never waits on the parse. Size: the
BodySizeLimit middleware cuts the body off just past `Settings.max_upload_bytes` plus room for the form's own
fields while it streams, so no larger file is ever written whole; the file part's exact size is then checked
against the limit (413). The spooled file is copied beside its final name, checked by the worker's own reader
(supernet.readers.check_file, through service.datasets.inspect) and only a file that passes is renamed into place
(supernet.files.atomic_path) and recorded. Any failure removes the dataset's folder, and the spooled file is
closed (so deleted) whatever happens.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from python_multipart.multipart import parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from supernet.files import atomic_path
from supernet.readers import MAX_CLASSES

from .. import datasets as ds
from ..config import MIB, Settings
from ..models import Dataset, new_id
from ..repository import MAX_PAGE
from ..startup import free_mb
from .auth import OwnerDep
from .deps import FactoryDep, SessionDep, SettingsDep
from .schemas import DatasetPage, DatasetRead

log = logging.getLogger(__name__)

router = APIRouter(prefix="/datasets", tags=["datasets"])

UPLOAD_ROUTE = ("POST", "/datasets")
FIELDS = ("name", "format", "label_column", "task_type")  # the text fields of an upload, besides the `file` part
TASK_TYPES = ("classification", "regression")
MAX_FIELD_BYTES = 1024
# What Starlette's parser itself accepts: a bound on memory. Within it, the fields are checked here, so that a
# message can name the field at fault.
PARSER_FIELDS = 16
PARSER_PART_BYTES = 64 * 1024
MAX_NAME = 200
COPY_CHUNK = 1024 * 1024

_FORM_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "name"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "CSV or TSV with a header, or JSON lines"},
        "name": {"type": "string", "maxLength": MAX_NAME, "description": "a name to show"},
        "format": {"type": "string", "enum": list(ds.FORMATS), "description": "default: from the file name"},
        "label_column": {"type": "string", "maxLength": MAX_NAME,
                         "description": "the column of labels, checked as task_type (default: `label` if the "
                                        "file has one)"},
        "task_type": {"type": "string", "enum": list(TASK_TYPES), "default": "classification",
                      "description": "what the label column is checked as: classification (2 to "
                                     f"{MAX_CLASSES} classes, no fractions) or regression (finite numbers)"},
    }}}}}}


def dataset_read(dataset: Dataset) -> DatasetRead:
    return DatasetRead(id=dataset.id, name=dataset.name, filename=dataset.filename, format=dataset.format,
                       size_bytes=dataset.size_bytes, num_rows=dataset.num_rows, columns=list(dataset.columns),
                       created_at=dataset.created_at, label_column=dataset.label_column, task_type=dataset.task_type,
                       label_counts=dataset.label_counts)


def _check_multipart(request: Request) -> None:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(415, "send the dataset as multipart/form-data with a `file` part and a `name` field, "
                                 "e.g. curl -F file=@train.csv -F name=train .../datasets")


def _form_fields(form: FormData) -> tuple[UploadFile, dict[str, str]]:
    """The `file` part and the text fields of a parsed upload form; 422 naming the field for anything else."""
    unexpected = sorted({key for key in form.keys() if key != "file" and key not in FIELDS})
    if unexpected:
        raise HTTPException(422, f"unexpected form field {unexpected[0]!r}; an upload has `file`, `name` and "
                                 "optionally `format`, `label_column` and `task_type`")
    file = form.get("file")  # one at most: the parser allows one file part (max_files=1)
    if file is None:
        raise HTTPException(422, "no complete `file` part: send the dataset as the form field `file` (a body cut off "
                                 "inside the file part has none)")
    if not isinstance(file, UploadFile):
        raise HTTPException(422, "the form field `file` is text: send the dataset as a file part (with a filename)")
    fields: dict[str, str] = {}
    for key in FIELDS:
        values = [str(v) for v in form.getlist(key)]  # text: the one file part is `file`
        if len(values) > 1:
            raise HTTPException(422, f"the form field {key!r} is given twice")
        if values and len(values[0].encode()) > MAX_FIELD_BYTES:
            raise HTTPException(422, f"the form field {key!r} is longer than {MAX_FIELD_BYTES} bytes")
        if values:
            fields[key] = values[0]
    return file, fields


def _check_name(fields: dict[str, str]) -> str:
    name = fields.get("name", "").strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise HTTPException(422, f"the form field `name` is required: 1 to {MAX_NAME} printable characters")
    return name


def _check_label(fields: dict[str, str]) -> tuple[str | None, str | None]:
    """The label column and task type the upload is to be checked with (None: not given)."""
    label = fields.get("label_column", "").strip() or None
    task_type = fields.get("task_type", "").strip().lower() or None
    if task_type is not None and task_type not in TASK_TYPES:
        raise HTTPException(422, f"the form field `task_type` is {fields['task_type']!r}; use one of "
                                 f"{', '.join(TASK_TYPES)}")
    return label, task_type


def _check_quota(session: Session, settings: Settings, owner: str | None, size: int) -> None:
    """507 unless storing `size` more bytes keeps the owner within NASPRUNE_MAX_DATASET_BYTES_PER_OWNER. Checked
    before the copy (to refuse early) and again in the session that records the dataset, so uploads racing each
    other overshoot only if they end within the same moment."""
    used = ds.stored_bytes(session, owner_id=owner)
    limit = settings.max_dataset_bytes_per_owner
    if used + size > limit:
        raise HTTPException(507, f"storing this file ({size} bytes) would take your datasets to {used + size} bytes, "
                                 f"over the server's limit of {limit} bytes per token "
                                 "(NASPRUNE_MAX_DATASET_BYTES_PER_OWNER): delete datasets you no longer need "
                                 "(DELETE /datasets/{id}) and try again")


def _check_free(settings: Settings, size: int) -> None:
    """507 unless storing `size` bytes leaves NASPRUNE_MIN_FREE_MB free under the data root: the workers'
    checkpoints and exports need that room."""
    if free_mb(settings.data_root) - size / MIB < settings.min_free_mb:
        raise HTTPException(507, "the server's disk would have less than its reserve of "
                                 f"NASPRUNE_MIN_FREE_MB={settings.min_free_mb} MB free after storing this file: "
                                 "free space on the server (delete datasets or old searches) and try again")


def _copy(source: BinaryIO, target: Path) -> None:
    source.seek(0)
    with target.open("xb") as out:
        shutil.copyfileobj(source, out, COPY_CHUNK)


def _store(settings: Settings, factory: Any, owner: str | None, dataset_id: str, file: UploadFile, name: str,
           filename: str, fmt: str, fields: dict[str, str]) -> DatasetRead:
    """Check there is room, copy the spooled file beside its final name, check it whole the way a search reads
    it, rename it into place and record it (blocking: run in a thread)."""
    label_column, task_type = _check_label(fields)
    size = file.size or 0
    with factory() as session:
        _check_quota(session, settings, owner, size)
    _check_free(settings, size)
    path = settings.dataset_folder(dataset_id) / f"{ds.DATA_STEM}.{fmt}"
    with atomic_path(path) as tmp:
        _copy(file.file, tmp)
        try:
            found = ds.inspect(tmp, fmt, filename, label_column=label_column, task_type=task_type)
        except ds.DatasetError as exc:
            raise HTTPException(422, str(exc)) from None
    with factory() as session:
        _check_quota(session, settings, owner, size)
        dataset = ds.create_dataset(session, dataset_id=dataset_id, owner_id=owner, name=name, filename=filename,
                                    format=fmt, path=path, size_bytes=size, found=found)
        session.commit()
        return dataset_read(dataset)


async def _parse(request: Request) -> FormData:
    """The upload form, parsed by Starlette as the body streams in (file parts spooled to a temporary file)."""
    try:
        return await request.form(max_files=1, max_fields=PARSER_FIELDS, max_part_size=PARSER_PART_BYTES)
    except StarletteHTTPException as exc:
        if exc.status_code != 400:  # 413 from BodySizeLimit: the body passed the upload limit while streaming
            raise
        raise HTTPException(422, f"malformed multipart body: {exc.detail}; an upload has one `file` part, a "
                                 "`name` field and optionally `format`") from None


async def _receive(request: Request, settings: Settings, factory: Any, owner: str | None,
                   dataset_id: str) -> DatasetRead:
    """Parse the form, check its fields and the file's size, and store the file; the spooled file is closed (so
    deleted) whatever the outcome."""
    form = await _parse(request)
    try:
        file, fields = _form_fields(form)
        limit = settings.max_upload_bytes
        if file.size is None or file.size > limit:
            raise HTTPException(413, f"the file is larger than {limit} bytes (the server's NASPRUNE_MAX_UPLOAD_BYTES)")
        name = _check_name(fields)
        filename = ds.display_name(file.filename or "")
        try:
            fmt = ds.format_for(filename, fields.get("format") or None)
        except ds.DatasetError as exc:
            raise HTTPException(422, str(exc)) from None
        return await run_in_threadpool(_store, settings, factory, owner, dataset_id, file, name, filename, fmt,
                                       fields)
    finally:
        await form.close()


# a larger offset cannot be bound to a SQLite query
MAX_INT = 2**63 - 1
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no dataset with this id (of yours)"}}


@router.post("", response_model=DatasetRead, status_code=status.HTTP_201_CREATED, openapi_extra=_FORM_SCHEMA,
             responses={413: {"description": "the file is larger than NASPRUNE_MAX_UPLOAD_BYTES"},
                        415: {"description": "not a multipart/form-data body"},
                        422: {"description": "not a dataset a search can read (the detail says why)"},
                        507: {"description": "no room: past NASPRUNE_MAX_DATASET_BYTES_PER_OWNER, or the disk "
                                             "would keep less than NASPRUNE_MIN_FREE_MB free"}})
async def upload(request: Request, settings: SettingsDep, factory: FactoryDep,
                 owner: OwnerDep) -> DatasetRead | Response:
    """Upload a CSV/TSV (with a header) or JSONL (one object per line) file: form fields `file`, `name`,
    optional `format` (csv, tsv, jsonl; else from the file name), `label_column` (default: `label` if the file
    has one) and `task_type` (classification, the default, or regression) that the label column is checked as.
    Name it in a search's custom task as `train_dataset` / `test_dataset`."""
    _check_multipart(request)
    dataset_id = new_id()
    folder = settings.dataset_folder(dataset_id)
    folder.mkdir(parents=True, mode=0o700)
    try:
        dataset = await _receive(request, settings, factory, owner, dataset_id)
    except ClientDisconnect:
        # The client went away mid-body: nothing to answer and nothing wrong with the server, so one line, not
        # the traceback the ASGI server would log for an exception that escapes the app.
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("upload %s: the client closed the connection before the body ended; nothing was stored",
                    dataset_id)
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("stored dataset %s (%d rows, %d bytes)", dataset.id, dataset.num_rows, dataset.size_bytes)
    return dataset


@router.get("", response_model=DatasetPage)
def list_datasets(session: SessionDep, owner: OwnerDep, offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50) -> DatasetPage:
    rows, total = ds.list_datasets(session, owner_id=owner, offset=offset, limit=limit)
    return DatasetPage(items=[dataset_read(d) for d in rows], total=total, offset=offset, limit=limit)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=NOT_FOUND)
def get_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep) -> DatasetRead:
    return dataset_read(ds.get_dataset(session, dataset_id, owner_id=owner))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={**NOT_FOUND, 409: {"description": "a queued or running search reads it"}})
def delete_dataset(dataset_id: str, session: SessionDep, settings: SettingsDep, owner: OwnerDep) -> Response:
    dataset = ds.delete_dataset(session, dataset_id, owner_id=owner)
    folder = Path(dataset.path).parent
    session.commit()
    # Only ever remove a folder inside the datasets root (the path column comes from the database).
    if folder.is_dir() and folder.resolve().is_relative_to(settings.datasets_root.resolve()) \
            and folder.resolve() != settings.datasets_root.resolve():
        shutil.rmtree(folder, ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
