"""Uploaded datasets: what makes a file a dataset a search can read, and the `datasets` rows.

    <data_root>/datasets/<id>/data.<csv|tsv|jsonl>    the uploaded file, under a name the server chose

The client's file name is kept for display only; it never becomes a path. Every row function takes the caller's
`owner_id` and only sees that owner's rows, so another owner's dataset is "not found" (HTTP 404), never 403: the
id of someone else's upload is not something to confirm. Like service.repository, these functions flush and
never commit.
"""

from __future__ import annotations

import csv
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from supernet.readers import json_object
from supernet.tasks import DataError

from .models import RUNNING_STATUSES, Dataset, Search, SearchStatus
from .repository import MAX_PAGE, InvalidArgument, RepositoryError

FORMATS = ("csv", "tsv", "jsonl")
# The suffixes supernet.data reads, and the format each means.
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json-lines": "jsonl", ".ndjson": "jsonl"}
MAX_COLUMNS = 1000
HEADER_BYTES = 1024 * 1024  # the most read_columns reads to find a header line
DATA_STEM = "data"


class DatasetError(ValueError):
    """A file that is not a dataset a search can read; the message says what is wrong and where."""


class DatasetNotFound(RepositoryError, LookupError):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"no dataset with id {dataset_id!r}")
        self.dataset_id = dataset_id


class DatasetInUse(RepositoryError):
    """A queued or running search reads the dataset: deleting it would make that search fail."""


# ------------------------------------------------------------------------------------------------ files


def display_name(filename: str) -> str:
    """The client's file name made safe to show: its last path component, printable characters, <= 255."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and unicodedata.category(ch) != "Cf").strip()
    return name[:255] or "upload"


def format_for(filename: str, given: str | None) -> str:
    """The format of an upload: `given` (csv, tsv, jsonl) or the file name's suffix; they must agree if both."""
    suffix = Path(filename).suffix.lower()
    inferred = SUFFIXES.get(suffix)
    if given is not None:
        fmt = given.strip().lower()
        if fmt not in FORMATS:
            raise DatasetError(f"format {given!r} is not one of {', '.join(FORMATS)}")
        if inferred is not None and inferred != fmt:
            raise DatasetError(f"format {fmt!r} contradicts the file name {filename!r} ({inferred})")
        return fmt
    if inferred is None:
        raise DatasetError(f"cannot tell the format of {filename!r}: name the file *.csv, *.tsv or *.jsonl, "
                           "or pass the form field format=csv|tsv|jsonl")
    return inferred


def inspect(path: Path, fmt: str) -> tuple[int, list[str]]:
    """(data rows, columns) of a dataset file, read the way supernet.data reads it; raises DatasetError.

    UTF-8 text; CSV/TSV: a header of unique names, then rows of as many fields; JSONL: one object per line, all
    with the same keys. At least one data row, at most MAX_COLUMNS columns.
    """
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            lines = _text_lines(f)
            rows, columns = _inspect_jsonl(lines) if fmt == "jsonl" else _inspect_csv(lines, fmt)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"cannot parse as {fmt.upper()}: {exc}") from None
    if rows == 0:
        raise DatasetError("no data rows (a dataset needs at least one example)")
    return rows, columns


def _text_lines(f: Any) -> Iterator[str]:
    """The lines of `f`, refusing NUL characters: valid UTF-8, but the mark of a binary file, not text."""
    for line_no, line in enumerate(f, start=1):
        if "\x00" in line:
            raise DatasetError(f"line {line_no} contains NUL bytes: a binary file, not text")
        yield line


def _check_columns(columns: list[str]) -> list[str]:
    if len(columns) > MAX_COLUMNS:
        raise DatasetError(f"{len(columns)} columns; at most {MAX_COLUMNS} are accepted")
    repeated = sorted(name for name, count in Counter(columns).items() if count > 1)
    if repeated:
        raise DatasetError(f"column name(s) {repeated} appear more than once in the header")
    return columns


def _inspect_csv(f: Any, fmt: str) -> tuple[int, list[str]]:
    reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, None)
    if not header or all(not h.strip() for h in header):
        raise DatasetError("empty file: expected a header line naming the columns")
    columns = _check_columns([h.strip() for h in header])
    if fmt == "csv" and len(columns) == 1 and "\t" in columns[0]:
        raise DatasetError(f"the header {columns[0]!r} is one column with tabs in it: is this TSV? (format=tsv)")
    rows = 0
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank lines, as supernet.data skips them
        if len(row) != len(columns):
            raise DatasetError(f"line {reader.line_num} has {len(row)} fields, the header has {len(columns)}")
        rows += 1
    return rows, columns


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        return json_object(line, where)
    except DataError as exc:
        raise DatasetError(str(exc)) from None


def _inspect_jsonl(f: Any) -> tuple[int, list[str]]:
    rows, columns = 0, None
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        record = _json_object(line, f"line {line_no}")
        if columns is None:
            columns = _check_columns(list(record))
        elif set(record) != set(columns):
            raise DatasetError(f"line {line_no} has keys {sorted(record)}, the first object has {sorted(columns)}")
        rows += 1
    return rows, columns or []


def read_columns(path: Path) -> list[str]:
    """The columns of a CSV/TSV/JSONL file from its first line alone (cheap: for paths given in a request)."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            line = ""
            while not line.strip():
                line = f.readline(HEADER_BYTES)
                if not line:
                    raise DatasetError("empty file")
    except UnicodeDecodeError:
        raise DatasetError("not UTF-8 text") from None
    if fmt == "jsonl":
        return list(_json_object(line, "first line"))
    try:
        header = next(csv.reader([line], delimiter="\t" if fmt == "tsv" else ","), [])
    except csv.Error as exc:
        raise DatasetError(f"cannot parse the header as {fmt.upper()}: {exc}") from None
    return [h.strip() for h in header]


# ------------------------------------------------------------------------------------------------ rows


def create_dataset(session: Session, *, dataset_id: str, owner_id: str | None, name: str, filename: str,
                   format: str, path: str | Path, size_bytes: int, num_rows: int, columns: list[str]) -> Dataset:
    dataset = Dataset(id=dataset_id, owner_id=owner_id, name=name, filename=filename, format=format,
                      path=str(path), size_bytes=size_bytes, num_rows=num_rows, columns=list(columns))
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, dataset_id: str, *, owner_id: str | None) -> Dataset:
    """The owner's dataset `dataset_id`; another owner's is DatasetNotFound like a missing one."""
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id))
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    return dataset


def list_datasets(session: Session, *, owner_id: str | None, offset: int = 0,
                  limit: int = 50) -> tuple[list[Dataset], int]:
    """A page of the owner's datasets, newest first, and how many the owner has."""
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"need offset >= 0 and 1 <= limit <= {MAX_PAGE}, got offset={offset}, limit={limit}")
    where = Dataset.owner_id == owner_id
    total = session.scalar(select(func.count()).select_from(Dataset).where(where)) or 0
    rows = session.scalars(select(Dataset).where(where).order_by(Dataset.created_at.desc(), Dataset.id.desc())
                           .offset(offset).limit(limit)).all()
    return list(rows), total


def searches_reading(session: Session, folder: Path) -> list[str]:
    """Ids of the queued or running searches whose custom task reads a file inside `folder`."""
    folder = folder.resolve()
    active = [SearchStatus.QUEUED, *RUNNING_STATUSES]
    ids = []
    for search_id, request in session.execute(select(Search.id, Search.request).where(Search.status.in_(active))):
        custom = ((request or {}).get("run") or {}).get("custom") or {}
        files = [custom.get("train_file"), custom.get("test_file")]
        if any(f and Path(f).resolve().is_relative_to(folder) for f in files):
            ids.append(search_id)
    return ids


def delete_dataset(session: Session, dataset_id: str, *, owner_id: str | None) -> Dataset:
    """Delete the owner's dataset row (its folder is the caller's to remove); refused while a queued or running
    search reads it."""
    dataset = get_dataset(session, dataset_id, owner_id=owner_id)
    users = searches_reading(session, Path(dataset.path).parent)
    if users:
        raise DatasetInUse(f"dataset {dataset_id} is read by queued or running search(es) {', '.join(users)}; "
                           "cancel them (or wait for them to end) first")
    session.delete(dataset)
    session.flush()
    return dataset
