"""Uploaded datasets: what makes a file a dataset a search can read, and the `datasets` rows.

    <data_root>/datasets/<id>/data.<csv|tsv|jsonl>    the uploaded file, under a name the server chose

The client's file name is kept for display only; it never becomes a path. Every row function takes the caller's
`owner_id` and only sees that owner's rows, so another owner's dataset is "not found" (HTTP 404), never 403: the
id of someone else's upload is not something to confirm. Like service.repository, these functions flush and
never commit.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from supernet import readers
from supernet.tasks import DataError

from .models import RUNNING_STATUSES, Dataset, Search, SearchStatus
from .repository import MAX_PAGE, InvalidArgument, RepositoryError

FORMATS = readers.FORMATS
SUFFIXES = readers.SUFFIXES  # the suffixes the readers know, and the format each means
MAX_COLUMNS = 1000
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


def inspect(path: Path, fmt: str, name: str) -> tuple[int, list[str]]:
    """(data rows, columns) of an uploaded file, checked by supernet.readers.check_file: the very function the
    worker's loader reads custom files with, so an upload this accepts is one a search can read. `name` (the
    client's file name, made safe) names the file in messages. On top: at most MAX_COLUMNS columns."""
    try:
        checked = readers.check_file(path, fmt, source=name)
    except DataError as exc:
        raise DatasetError(str(exc)) from None
    if len(checked.columns) > MAX_COLUMNS:
        raise DatasetError(f"{name}: {len(checked.columns)} columns; at most {MAX_COLUMNS} are accepted")
    return checked.rows, checked.columns


def read_columns(path: Path, source: str | None = None) -> list[str]:
    """The columns of a CSV/TSV/JSONL file from its header alone (cheap: for paths given in a request), by the
    readers' header rules."""
    try:
        return readers.read_columns(path, source=source or path.name)
    except DataError as exc:
        raise DatasetError(str(exc)) from None


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
