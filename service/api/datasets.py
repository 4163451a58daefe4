"""The /datasets routes: upload a CSV/TSV/JSONL file, list, read and delete the caller's datasets.

The upload is parsed as a stream (python-multipart): the file part goes straight to a temporary file in the
dataset's own folder, counted as it comes, and is refused with 413 the moment it passes
`Settings.max_upload_bytes`. Then the whole file is parsed the way a search will read it, and only a file that
passes is renamed into place and recorded. Any failure removes the folder, so no partial upload stays behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from .. import datasets as ds
from ..config import Settings
from ..models import Dataset, new_id
from ..repository import MAX_PAGE
from .auth import OwnerDep
from .deps import FactoryDep, SessionDep, SettingsDep
from .schemas import DatasetPage, DatasetRead

log = logging.getLogger(__name__)

router = APIRouter(prefix="/datasets", tags=["datasets"])

UPLOAD_ROUTE = ("POST", "/datasets")
FIELDS = ("name", "format")  # the text fields of an upload, besides the `file` part
MAX_FIELD_BYTES = 1024
MAX_NAME = 200
PART_FILE = ".upload.part"

_FORM_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "name"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "CSV or TSV with a header, or JSON lines"},
        "name": {"type": "string", "maxLength": MAX_NAME, "description": "a name to show"},
        "format": {"type": "string", "enum": list(ds.FORMATS), "description": "default: from the file name"},
    }}}}}}


def dataset_read(dataset: Dataset) -> DatasetRead:
    return DatasetRead(id=dataset.id, name=dataset.name, filename=dataset.filename, format=dataset.format,
                       size_bytes=dataset.size_bytes, num_rows=dataset.num_rows, columns=list(dataset.columns),
                       created_at=dataset.created_at)


class _UploadParser:
    """Callbacks of python-multipart's streaming parser: the `file` part's bytes are queued for `target` (and
    counted against `limit`), the small text fields are kept; anything else is refused."""

    def __init__(self, target: BinaryIO, limit: int) -> None:
        self.target = target
        self.limit = limit
        self.size = 0
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.pending: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: str | None = None  # the text field being read; None while in the file part
        self._value = bytearray()
        self.ended = False  # the closing boundary was read: nothing was cut off

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value_part, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _part_begin(self) -> None:
        self._disposition, self._field, self._value = b"", None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            if self.filename is not None:
                raise HTTPException(422, "one file per upload: the form has more than one `file` part")
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        elif name in FIELDS:
            if name in self.fields:
                raise HTTPException(422, f"the form field {name!r} is given twice")
            self._field = name
        else:
            raise HTTPException(422, f"unexpected form field {name!r}; an upload has `file`, `name` and optionally "
                                     "`format`")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._field is not None:
            if len(self._value) + len(chunk) > MAX_FIELD_BYTES:
                raise HTTPException(422, f"the form field {self._field!r} is longer than {MAX_FIELD_BYTES} bytes")
            self._value += chunk
            return
        self.size += len(chunk)
        if self.size > self.limit:
            raise HTTPException(413, f"the file is larger than {self.limit} bytes (the server's "
                                     "NASPRUNE_MAX_UPLOAD_BYTES)")
        self.pending.append(chunk)

    def _part_end(self) -> None:
        if self._field is not None:
            self.fields[self._field] = self._value.decode("utf-8", "replace")

    def _end(self) -> None:
        self.ended = True

    def flush(self) -> None:
        """Write the queued file bytes (called in a worker thread, between chunks of the request)."""
        if self.pending:
            self.target.write(b"".join(self.pending))
            self.pending.clear()


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(415, "send the dataset as multipart/form-data with a `file` part and a `name` field, "
                                 "e.g. curl -F file=@train.csv -F name=train .../datasets")
    return options[b"boundary"]


def _store(settings: Settings, factory: Any, owner: str | None, dataset_id: str, part: Path, upload: _UploadParser,
           name: str, fmt: str) -> DatasetRead:
    """Parse the uploaded file whole, move it into place and record it (blocking: run in a thread)."""
    try:
        rows, columns = ds.inspect(part, fmt)
    except ds.DatasetError as exc:
        raise HTTPException(422, f"{ds.display_name(upload.filename or '')}: {exc}") from None
    path = part.with_name(f"{ds.DATA_STEM}.{fmt}")
    os.replace(part, path)
    with factory() as session:
        dataset = ds.create_dataset(session, dataset_id=dataset_id, owner_id=owner, name=name,
                                    filename=ds.display_name(upload.filename or ""), format=fmt, path=path,
                                    size_bytes=upload.size, num_rows=rows, columns=columns)
        session.commit()
        return dataset_read(dataset)


# a larger offset cannot be bound to a SQLite query
MAX_INT = 2**63 - 1
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no dataset with this id (of yours)"}}


@router.post("", response_model=DatasetRead, status_code=status.HTTP_201_CREATED, openapi_extra=_FORM_SCHEMA,
             responses={413: {"description": "the file is larger than NASPRUNE_MAX_UPLOAD_BYTES"},
                        415: {"description": "not a multipart/form-data body"},
                        422: {"description": "not a dataset a search can read (the detail says why)"}})
async def upload(request: Request, settings: SettingsDep, factory: FactoryDep, owner: OwnerDep) -> DatasetRead:
    """Upload a CSV/TSV (with a header) or JSONL (objects with the same keys) file: form fields `file`, `name`,
    optional `format` (csv, tsv, jsonl; else from the file name). Name it in a search's custom task as
    `train_dataset` / `test_dataset`."""
    boundary = _boundary(request)
    dataset_id = new_id()
    folder = settings.dataset_folder(dataset_id)
    folder.mkdir(parents=True)
    part = folder / PART_FILE
    try:
        with part.open("xb") as target:
            upload = _UploadParser(target, settings.max_upload_bytes)
            try:
                parser = MultipartParser(boundary, upload.callbacks())
                async for chunk in request.stream():
                    parser.write(chunk)
                    await run_in_threadpool(upload.flush)
                parser.finalize()
            except FormParserError as exc:
                raise HTTPException(422, f"malformed multipart body: {exc}") from None
            await run_in_threadpool(upload.flush)
        if not upload.ended:
            raise HTTPException(422, "incomplete multipart body: it stops before the closing boundary")
        if upload.filename is None:
            raise HTTPException(422, "no `file` part: send the dataset as the form field `file`")
        name = upload.fields.get("name", "").strip()
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise HTTPException(422, f"the form field `name` is required: 1 to {MAX_NAME} printable characters")
        try:
            fmt = ds.format_for(ds.display_name(upload.filename), upload.fields.get("format") or None)
        except ds.DatasetError as exc:
            raise HTTPException(422, str(exc)) from None
        dataset = await run_in_threadpool(_store, settings, factory, owner, dataset_id, part, upload, name, fmt)
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
