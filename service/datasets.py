"""Uploaded datasets: what makes a file a dataset a search can read, and the `datasets` rows.

    <data_root>/datasets/<id>/data.<csv|tsv|jsonl>    the uploaded file, under a name the server chose

The client's file name is kept for display only; it never becomes a path. Every row function takes the caller's
`owner_id` and only sees that owner's rows, so another owner's dataset is "not found" (HTTP 404), never 403: the
id of someone else's upload is not something to confirm. Like service.repository, these functions flush and
never commit.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class Inspected:
    """What an upload's check found: what the `datasets` row stores of the file."""

    rows: int
    columns: list[str]
    label_column: str | None  # the label column its classes were checked in (None: none known)
    task_type: str | None  # what the label column was checked as
    label_counts: dict[str, int] | None  # rows per class, in class order (classification)
    profile: dict[str, Any]  # column -> readers.ColumnProfile.to_json()


def inspect(path: Path, fmt: str, name: str, *, label_column: str | None = None,
            task_type: str | None = None) -> Inspected:
    """Check an uploaded file with supernet.readers.check_file, the very function the worker's loader reads custom
    files with, so an upload this accepts is one a search can read. `name` (the client's file name, made safe)
    names the file in messages. On top: at most MAX_COLUMNS columns.

    The label column (`label_column`, else a column named `label` if there is one) is checked as `task_type`
    (default classification) the way a search would read it: two to MAX_CLASSES classes, no fractions read as
    classes, no empty label. Without a label column nothing is known of the classes yet; the stored profile of
    every column lets POST /searches check the columns it names."""
    try:
        columns = readers.read_columns(path, fmt, source=name)
        if len(columns) > MAX_COLUMNS:
            raise DatasetError(f"{name}: {len(columns)} columns; at most {MAX_COLUMNS} are accepted")
        if label_column is not None and label_column not in columns:
            raise DatasetError(f"label_column {label_column!r}: {name} has no such column; its columns are {columns}")
        label = label_column if label_column is not None else ("label" if "label" in columns else None)
        if label is None and task_type is not None:
            raise DatasetError(f"task_type {task_type!r} needs a label column: {name} has no column `label`; name "
                               "the label column with the form field label_column")
        kind = task_type or "classification"
        checked = readers.check_file(path, fmt, label_column=label, regression=kind == "regression", source=name)
        counts = None
        if label is not None and kind == "classification":
            counts = {c: checked.labels[c] for c in readers.sorted_labels(name, checked.labels)}
    except DataError as exc:
        raise DatasetError(str(exc)) from None
    return Inspected(rows=checked.rows, columns=checked.columns, label_column=label,
                     task_type=kind if label is not None else None, label_counts=counts,
                     profile={c: p.to_json() for c, p in checked.profiles.items()})


def check_use(dataset: Dataset, what: str, *, text_columns: Sequence[str], label_column: str, task_type: str) -> None:
    """Refuse (DatasetError, naming the field, the dataset, the line and the column) a search that names
    `dataset`'s columns as text and label columns it could not run on, judged from the profile stored at upload
    by the reader's own rules (readers.check_column). A row stored before profiles existed is left to the
    worker's reader. Columns the file lacks are the caller's to report."""
    if not dataset.profile:
        return
    uses = [("text_columns", column, "text") for column in text_columns]
    uses.append(("label_column", label_column, task_type))
    for field, column, role in uses:
        if column not in dataset.profile:
            continue
        try:
            readers.check_column(what, column, readers.ColumnProfile.from_json(dataset.profile[column]), role)
        except DataError as exc:
            raise DatasetError(f"custom.{field}: {exc}") from None


def read_columns(path: Path, source: str | None = None) -> list[str]:
    """The columns of a CSV/TSV/JSONL file from its header alone (cheap: for paths given in a request), by the
    readers' header rules."""
    try:
        return readers.read_columns(path, source=source or path.name)
    except DataError as exc:
        raise DatasetError(str(exc)) from None


# ------------------------------------------------------------------------------------------------ rows


def create_dataset(session: Session, *, dataset_id: str, owner_id: str | None, name: str, filename: str,
                   format: str, path: str | Path, size_bytes: int, found: Inspected) -> Dataset:
    dataset = Dataset(id=dataset_id, owner_id=owner_id, name=name, filename=filename, format=format,
                      path=str(path), size_bytes=size_bytes, num_rows=found.rows, columns=list(found.columns),
                      label_column=found.label_column, task_type=found.task_type, label_counts=found.label_counts,
                      profile=found.profile)
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, dataset_id: str, *, owner_id: str | None) -> Dataset:
    """The owner's dataset `dataset_id`; another owner's is DatasetNotFound like a missing one."""
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id))
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    return dataset


def check_labels(session: Session, train_id: str, test_id: str, *, owner_id: str | None, label_column: str,
                 task_type: str) -> None:
    """Refuse (DatasetError) a classification search whose test dataset has labels its train dataset lacks: the
    loader indexes classes by the train file's labels and would fail the job on the first unknown one. Judged
    from the label counts stored at upload, so only when both uploads were checked in this label column."""
    if task_type != "classification":
        return
    train, test = (get_dataset(session, i, owner_id=owner_id) for i in (train_id, test_id))
    if train.label_column != label_column or test.label_column != label_column:
        return
    if train.label_counts is None or test.label_counts is None:
        return
    unknown = [label for label in test.label_counts if label not in train.label_counts]
    if unknown:
        raise DatasetError(f"custom.label_column: test_dataset {test_id!r} has label(s) {unknown} in column "
                           f"{label_column!r} that train_dataset {train_id!r} does not (its labels: "
                           f"{list(train.label_counts)})")


def stored_bytes(session: Session, *, owner_id: str | None) -> int:
    """The bytes of the owner's stored datasets: what NASPRUNE_MAX_DATASET_BYTES_PER_OWNER bounds."""
    total = session.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.owner_id == owner_id))
    return int(total or 0)


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
