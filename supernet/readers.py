"""File formats: the classic GLUE TSV files, the Hugging Face hub's GLUE, and custom CSV / TSV / JSONL files.

`check_file` is the one definition of a readable custom file: the worker's loader reads every custom file through
it, and the service checks an upload with it, so a file the upload accepts is a file the worker can read and the
error a user sees at upload is the error the worker would have raised (file, line, column).

Torch-free; `datasets` is imported lazily by the hub loader so that offline use never pays for it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import confine
from .tasks import HUB_DATASET, DataError, Example, GlueTask

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "MAX_CLASSES",
    "CheckedFile",
    "ColumnProfile",
    "check_column",
    "check_file",
    "file_format",
    "read_columns",
    "json_object",
    "read_glue_tsv",
    "load_glue_hub",
    "sorted_labels",
    "float_label",
    "index_label",
]

FORMATS = ("csv", "tsv", "jsonl")
# the suffixes a custom file may have, and the format each means
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json-lines": "jsonl", ".ndjson": "jsonl"}

# (line, texts, raw label) of one row of a custom file
Record = tuple[int, list[str], str]

# The most distinct labels a classification column may have. GLUE tasks have two or three classes and typical
# fine-tuning sets a few dozen at most; a column with more distinct values than this is, in practice, free text,
# an id or a measured quantity read as classes by mistake, and a head over that many classes trained on a
# fine-tuning-sized file sees too few examples of each to learn them. A number to predict is a regression task.
MAX_CLASSES = 100
# how much of a value a message quotes
QUOTE_CHARS = 60
# rows read before their columns are profiled together (ColumnProfile.add)
PROFILE_ROWS = 2048


def open_text(path: Path) -> TextIO:
    """Open for csv reading; utf-8-sig drops a leading BOM (MRPC's header starts with one). Under a worker's
    policy the file opened must lie inside the allowed data roots (supernet.confine)."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "missing file"
        raise DataError(f"{path}: {what}")
    return confine.open_text(path)


# ------------------------------------------------------------------------------------------------ GLUE TSV


def read_glue_tsv(glue: GlueTask, path: Path) -> list[Example]:
    """Parse one classic GLUE TSV. QUOTE_NONE: GLUE fields may start with '"' and must not be unquoted."""
    with open_text(path) as f:
        try:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot parse as TSV: {exc}") from None
    first_line = 1
    if glue.has_header:
        if not rows:
            raise DataError(f"{path}: empty file (no header)")
        header = [h.strip() for h in rows[0]]
        rows = rows[1:]
        first_line = 2
    else:
        header = []

    def position(ref: str | int) -> int:
        if isinstance(ref, int):
            return ref
        if ref not in header:
            raise DataError(f"{path}: missing column {ref!r} (header: {header})")
        return header.index(ref)

    refs = [position(glue.text_a)] + ([position(glue.text_b)] if glue.text_b is not None else [])
    label_pos = position(glue.label)
    needed = max([*refs, label_pos]) + 1
    label_map = dict(glue.label_map)
    examples: list[Example] = []
    skipped = odd_width = 0
    for offset, row in enumerate(rows):
        line = first_line + offset
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) < needed:
            if glue.skip_malformed:
                skipped += 1
                continue
            raise DataError(f"{path}: line {line} has {len(row)} fields, needs at least {needed}")
        if header and len(row) != len(header):
            odd_width += 1
        raw = row[label_pos].strip()
        if glue.spec.is_regression:
            label: int | float = float_label(path, line, raw)
        elif raw in label_map:
            label = label_map[raw]
        else:
            raise DataError(f"{path}: line {line}: unknown label {raw!r} (expected one of {list(label_map)})")
        texts = [row[i] for i in refs]
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if skipped:
        logger.warning("%s: skipped %d malformed rows with fewer than %d fields", path, skipped, needed)
    if odd_width:
        logger.warning(
            "%s: %d rows have a field count other than the header's %d", path, odd_width, len(header)
        )
    if not examples:
        raise DataError(f"{path}: no examples (empty file)")
    return examples


def load_glue_hub(glue: GlueTask) -> tuple[list[Example], dict[str, list[Example]]]:
    """Load from the Hugging Face hub; labels there already use the same indices as GLUE_TASKS."""
    source = f"hub dataset {HUB_DATASET}/{glue.hub_subset}"
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{source}: the `datasets` package is needed without a data_dir ({exc})") from None
    try:
        dataset = datasets.load_dataset(HUB_DATASET, glue.hub_subset)
    except Exception as exc:  # network, auth, cache: all mean "cannot get this data"
        raise DataError(
            f"{source}: cannot load ({type(exc).__name__}: {exc}); pass data_dir or set GLUE_DIR"
        ) from exc
    col_a, col_b = glue.hub_text

    def convert(split: str) -> list[Example]:
        if split not in dataset:
            raise DataError(f"{source}: missing split {split!r}")
        rows = dataset[split]
        wanted = [c for c in (col_a, col_b, "label") if c is not None]
        missing = [c for c in wanted if c not in rows.column_names]
        if missing:
            raise DataError(f"{source}/{split}: missing column(s) {missing}")
        table = rows.select_columns(wanted).to_dict()  # columnar: row-by-row access is slow for MNLI/QQP
        out = []
        for i, (text_a, raw) in enumerate(zip(table[col_a], table["label"], strict=True)):
            if glue.spec.is_regression:
                label: int | float = float(raw)
            else:
                label = int(raw)
                if not 0 <= label < glue.spec.num_labels:
                    raise DataError(f"{source}/{split}: row {i}: label {raw!r} out of range")
            text_b = str(table[col_b][i]) if col_b is not None else None
            out.append(Example(str(text_a), text_b, label))
        if not out:
            raise DataError(f"{source}/{split}: empty split")
        return out

    train = convert("train")
    tests = {ours: convert(theirs) for ours, theirs in glue.hub_test_splits}
    return train, tests


# ------------------------------------------------------------------------------------------- custom files


@dataclass
class ColumnProfile:
    """What the rules for a text or a label column need to know of one column, gathered in the one pass that reads
    the file (`add`, a run of rows at a time). An upload stores its columns' profiles, so a search naming any of
    them as text or label is checked by `check_column` at once, without reading the file again."""

    blank_line: int | None = None  # the first data row whose value is empty (or only spaces)
    distinct: int = 0  # distinct values, counted up to MAX_CLASSES + 1
    many_line: int | None = None  # the row that brought the (MAX_CLASSES + 1)-th distinct value
    not_number: tuple[int, str] | None = None  # the first row whose value is not a finite number, and the value
    fraction: tuple[int, str] | None = None  # the first row whose value is a number with a fractional part
    _seen: set[str] = field(default_factory=set, repr=False, compare=False)  # until there are too many

    def add(self, lines: Sequence[int], values: Sequence[str]) -> bool:
        """Count a run of values (canonical, see label_key) read from rows `lines`; True when it brought a fact a rule
        may refuse (a blank, one class too many, a non-number, a fraction). A run at a time: the checks are then
        set and map operations over many rows rather than Python steps per field, so that profiling every column
        of an upload costs little more than parsing it."""
        before = (self.blank_line, self.many_line, self.not_number, self.fraction)
        if "" in values:
            if self.blank_line is None:
                self.blank_line = lines[values.index("")]
            kept = [i for i, value in enumerate(values) if value]
            lines, values = [lines[i] for i in kept], [values[i] for i in kept]
        if self.many_line is None:
            self._count(lines, values)
        if self.not_number is None:
            self._numbers(lines, values)
        return before != (self.blank_line, self.many_line, self.not_number, self.fraction)

    def _count(self, lines: Sequence[int], values: Sequence[str]) -> None:
        new = set(values) - self._seen
        if len(self._seen) + len(new) <= MAX_CLASSES:
            self._seen |= new
            self.distinct = len(self._seen)
            return
        for line, value in zip(lines, values, strict=True):  # the row whose value was one too many
            if value not in self._seen:
                self._seen.add(value)
                if len(self._seen) > MAX_CLASSES:
                    self.many_line, self.distinct, self._seen = line, MAX_CLASSES + 1, set()  # values: no more use
                    return

    def _numbers(self, lines: Sequence[int], values: Sequence[str]) -> None:
        try:
            numbers: list[float] | None = list(map(float, values))
        except ValueError:
            numbers = None
        if numbers is not None and all(map(math.isfinite, numbers)):
            if self.fraction is None and not all(map(float.is_integer, numbers)):
                at = next(i for i, number in enumerate(numbers) if not number.is_integer())
                self.fraction = (lines[at], _quote(values[at]))
            return
        for line, value in zip(lines, values, strict=True):  # the first non-number, and any fraction before it
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                self.not_number = (line, _quote(value))
                return
            if self.fraction is None and not number.is_integer():
                self.fraction = (line, _quote(value))

    def to_json(self) -> dict[str, Any]:
        return {"blank_line": self.blank_line, "distinct": self.distinct, "many_line": self.many_line,
                "not_number": list(self.not_number) if self.not_number else None,
                "fraction": list(self.fraction) if self.fraction else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnProfile:
        return cls(blank_line=data.get("blank_line"), distinct=int(data.get("distinct", 0)),
                   many_line=data.get("many_line"), not_number=_pair(data.get("not_number")),
                   fraction=_pair(data.get("fraction")))


def _pair(value: Any) -> tuple[int, str] | None:
    return (int(value[0]), str(value[1])) if value else None


def _quote(value: str) -> str:
    return value if len(value) <= QUOTE_CHARS else value[:QUOTE_CHARS] + "..."


def check_column(source: str, column: str, profile: ColumnProfile, role: str, *, whole: bool = True) -> None:
    """Raise DataError if a search cannot use `column` as `role` ("text", "classification" or "regression").

    The one statement of what a usable column is, for the reader (after each run of rows, then `whole` at the
    end) and for the service (from an upload's stored profile): text and labels are never empty; a regression label is a
    finite number; a classification column has two to MAX_CLASSES distinct labels and is not a column of numbers
    with fractions in it (a quantity to predict, i.e. regression). `whole=False` checks only what a prefix of
    the file can already show, so a reader stops near the row at fault and names it."""
    if profile.blank_line is not None:
        what = f"column {column!r} is empty" if role == "text" else f"empty label in column {column!r}"
        raise DataError(f"{source}: line {profile.blank_line}: {what}")
    if role == "text":
        return
    if role == "regression":
        if profile.not_number is not None:
            float_label(source, *profile.not_number)  # raises: the reader's message for a bad regression label
        return
    if profile.many_line is not None:
        raise DataError(f"{source}: line {profile.many_line}: column {column!r} has more than {MAX_CLASSES} distinct "
                        "labels, too many classes for classification; if it is a number to predict, declare "
                        "task_type regression")
    if not whole:
        return
    if profile.not_number is None and profile.fraction is not None:
        line, value = profile.fraction
        raise DataError(f"{source}: line {line}: label {value!r} in column {column!r} is a fraction and every label "
                        "is a number: a quantity, not a class; declare task_type regression")
    if profile.distinct < 2:
        raise DataError(f"{source}: column {column!r} has {profile.distinct} distinct label(s); classification "
                        "needs at least two distinct labels")


@dataclass
class CheckedFile:
    """What `check_file` found: the file's format and columns, its data rows and the raw labels they carry."""

    format: str
    columns: list[str]  # the CSV/TSV header, or the keys of the first JSON object
    rows: int
    labels: Counter[str] = field(default_factory=Counter)  # raw label -> rows; only with a classification label
    records: list[Record] = field(default_factory=list)  # only with keep_records=True
    profiles: dict[str, ColumnProfile] = field(default_factory=dict)  # of every column read


def file_format(path: str | Path, fmt: str | None = None) -> str:
    """The format a custom file is read as: `fmt` (csv, tsv, jsonl) if given, else its suffix's."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix
    found = SUFFIXES.get(suffix.lower())
    if found is None:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    return found


def check_file(
    path: str | Path,
    fmt: str | None = None,
    *,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    regression: bool = False,
    keep_records: bool = False,
    source: str | None = None,
) -> CheckedFile:
    """Read a custom CSV/TSV/JSONL file the way a task loads it, row by row; raise DataError at the first problem.

    The rules: UTF-8 text (a BOM is dropped) without NUL characters; CSV/TSV have a header of distinct names and
    rows of as many fields (usual quoting rules, blank lines skipped); JSONL has one JSON object per non-blank
    line, whose values are text, numbers or booleans (an object or a list is refused: a search would only read
    its Python text). Every row must have the columns read (`text_columns` and `label_column`; without
    `text_columns`, every column of the header or first object, since the caller does not know yet which ones a
    task will read), none of them null. The text and label columns named must be usable as such
    (`check_column`: no empty text or label, a finite number with `regression`, else two to MAX_CLASSES classes
    that are not fractions). At least one data row.

    `source` names the file in messages (default: the path), e.g. the name a client uploaded it under.
    """
    path = Path(path)
    source = source or str(path)
    fmt = file_format(path, fmt)
    wanted = None if text_columns is None else [*text_columns, *([label_column] if label_column else [])]
    roles = dict.fromkeys(text_columns or (), "text")
    if label_column is not None:
        roles[label_column] = "regression" if regression else "classification"
    result = CheckedFile(format=fmt, columns=[], rows=0)
    columns: list[tuple[str, ColumnProfile, str | None]] = []  # (name, profile, role) of each value read
    label_at = -1
    lines: list[int] = []
    pending: list[list[Any]] = []  # the rows not yet profiled, `lines` their line numbers

    def profile() -> None:
        """Profile the pending rows, column by column; refuse at once what a part of the file already shows."""
        if not pending:
            return
        at, rows = lines.copy(), pending.copy()
        lines.clear()
        pending.clear()
        for (name, column_profile, role), column in zip(columns, zip(*rows, strict=True), strict=True):
            values = _canonical(column, fmt)
            if column_profile.add(at, values) and role is not None:
                check_column(source, name, column_profile, role, whole=False)
            if name == label_column and not regression:
                result.labels.update(values)

    with open_text(path) as f:
        try:
            for line, values in _values(_records(f, fmt, source, result.columns), wanted, result.columns, source):
                if not columns:  # the first row: the columns read are known (and the same for every row)
                    names = result.columns if wanted is None else wanted
                    if label_column is not None and label_column not in names:
                        raise DataError(f"{source}: no column {label_column!r}; its columns are {names}")
                    label_at = names.index(label_column) if label_column is not None else -1
                    columns = [(n, result.profiles.setdefault(n, ColumnProfile()), roles.get(n)) for n in names]
                lines.append(line)
                pending.append(values)
                if keep_records:  # the text columns come first in `wanted`
                    label = label_key(values[label_at]) if label_column is not None else ""
                    result.records.append((line, [str(v) for v in values[:len(text_columns or ())]], label))
                result.rows += 1
                if len(pending) >= PROFILE_ROWS:
                    profile()
        except UnicodeDecodeError as exc:
            profile()  # a problem in the rows before this one is the first problem
            raise DataError(f"{source}: not UTF-8 text ({exc})") from None
        except DataError:
            profile()
            raise
    profile()
    if not result.rows:
        raise DataError(f"{source}: no examples (no data rows)")
    for name, role in roles.items():
        check_column(source, name, result.profiles[name], role)
    return result


def read_columns(path: str | Path, fmt: str | None = None, *, source: str | None = None) -> list[str]:
    """The columns of a custom file from its header (or first object) alone: cheap, for a path named in a
    request; the same header rules as check_file."""
    path = Path(path)
    source = source or str(path)
    fmt = file_format(path, fmt)
    columns: list[str] = []
    with open_text(path) as f:
        try:
            next(_records(f, fmt, source, columns), None)
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not UTF-8 text ({exc})") from None
    if not columns:
        raise DataError(f"{source}: empty file (no header)")
    return columns


def _values(records: Iterable[tuple[int, Any]], wanted: Sequence[str] | None, columns: list[str],
            source: str) -> Iterator[tuple[int, list[Any]]]:
    """(line, values of the wanted columns, in that order) of each record; every column of the file when `wanted`
    is None. CSV/TSV rows are lists (the header gives the positions, once); JSONL rows are objects."""
    positions: list[int] | None = None
    for line, record in records:
        names = columns if wanted is None else wanted
        if isinstance(record, dict):
            missing = [c for c in names if c not in record]
            if missing:
                raise DataError(f"{source}: line {line}: missing column(s) {missing}")
            values = [record[c] for c in names]
            if None in values:
                raise DataError(f"{source}: line {line}: column {names[values.index(None)]!r} is empty")
            _scalars(record if wanted is None else dict(zip(names, values, strict=True)), line, source)
            yield line, values
            continue
        if positions is None:
            missing = [c for c in names if c not in columns]
            if missing:
                raise DataError(f"{source}: line {line}: missing column(s) {missing}")
            positions = [columns.index(c) for c in names]
        yield line, [record[i] for i in positions]


def _scalars(record: dict[str, Any], line: int, source: str) -> None:
    """Refuse a JSON object or list as a field: a search reads a field as text or a number, and would train on the
    Python text of a nested value."""
    for name, value in record.items():
        if isinstance(value, (dict, list)):
            kind = "an object" if isinstance(value, dict) else "a list"
            raise DataError(f"{source}: line {line}: column {name!r} holds {kind}; a field must be text, a number, "
                            "true or false")


def _records(f: TextIO, fmt: str, source: str, columns: list[str]) -> Iterator[tuple[int, Any]]:
    """(line, record) of each data row: a list of fields (CSV/TSV) or an object (JSONL); fills `columns` (the
    header) before the first row is yielded."""
    lines = _text_lines(f, source)
    if fmt == "jsonl":
        yield from _jsonl_rows(lines, source, columns)
        return
    reader = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",")
    try:
        header = next(reader, None)
        if not header or all(not h.strip() for h in header):
            raise DataError(f"{source}: empty file (no header)")
        columns.extend(_header(source, [h.strip() for h in header], fmt))
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(columns):
                raise DataError(
                    f"{source}: line {reader.line_num} has {len(row)} fields, the header has {len(columns)}"
                )
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{source}: line {reader.line_num}: cannot parse as {fmt.upper()}: {exc}") from None


def _header(source: str, columns: list[str], fmt: str) -> list[str]:
    """Refuse headers no task can name its columns in: a repeated name (one would shadow the other), or a CSV
    header that is one name with tabs in it (a TSV file read as CSV)."""
    repeated = sorted(name for name, count in Counter(columns).items() if count > 1)
    if repeated:
        raise DataError(f"{source}: column name(s) {repeated} appear more than once in the header")
    if fmt == "csv" and len(columns) == 1 and "\t" in columns[0]:
        raise DataError(f"{source}: the header {columns[0]!r} is one column with tabs in it: is this TSV?")
    return columns


def _text_lines(f: Iterable[str], source: str) -> Iterator[str]:
    """The lines of `f`, refusing NUL characters: valid UTF-8, but the mark of a binary file, not text."""
    for line_no, line in enumerate(f, start=1):
        if "\x00" in line:
            raise DataError(f"{source}: line {line_no} contains NUL bytes: a binary file, not text")
        yield line


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as the readers accept it: a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _jsonl_rows(lines: Iterable[str], source: str, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSONL file; the first one's keys are the file's columns (later ones may have more)."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = json_object(line, f"{source}: line {line_no}")
        if not columns:
            if not record:
                raise DataError(f"{source}: line {line_no}: an empty JSON object names no columns")
            columns.extend(record)
        yield line_no, record


def _canonical(column: Sequence[Any], fmt: str) -> list[str]:
    """label_key of each value of a column: CSV/TSV fields are text already, JSON values may be numbers."""
    return list(map(str.strip, column)) if fmt != "jsonl" else [label_key(v) for v in column]


def label_key(value: Any) -> str:
    """Canonical string of a raw label, so JSON 1, 1.0 and "1" name the same class."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


_INT_RE = re.compile(r"^[+-]?\d+$")


def sorted_labels(source: str | Path, raw_labels: Iterable[str]) -> tuple[str, ...]:
    """The class names of a train file: sorted numerically if all look like integers, else as strings."""
    distinct = set(raw_labels)
    if all(_INT_RE.match(x) for x in distinct):
        names = tuple(sorted(distinct, key=int))
        if len({int(x) for x in names}) != len(names):
            raise DataError(f"{source}: labels {sorted(distinct)} name the same integer more than once")
    else:
        names = tuple(sorted(distinct))
    if len(names) < 2:
        raise DataError(f"{source}: classification needs at least two distinct labels, found {list(names)}")
    return names


def float_label(source: str | Path, line: int, raw: str) -> float:
    """A regression label: a finite float."""
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{source}: line {line}: label {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{source}: line {line}: label {raw!r} is not finite")
    return value


def index_label(index: dict[str, int]) -> Callable[[str | Path, int, str], int]:
    """Raw label -> class index, refusing a label the train file does not have."""

    def to_label(source: str | Path, line: int, raw: str) -> int:
        if raw not in index:
            raise DataError(
                f"{source}: line {line}: label {raw!r} does not occur in the train file (labels: {list(index)})"
            )
        return index[raw]

    return to_label
