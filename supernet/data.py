"""Tasks, data loading, the split protocol, batching and metrics.

Split protocol (the same for GLUE and custom tasks): the labelled *train* file is split at random
(seeded, deterministic across machines) into a training part and a validation part. The search tunes and
selects on validation only; the task's dev file(s) serve as the held-out *test* set(s), because GLUE's own
test labels are not public. `train_limit` then caps the training part (a seeded random subset of it); the
validation part never depends on `train_limit`, so runs with different limits are compared on the same
validation examples.

Only stdlib, numpy, scipy and torch are imported at module level; `datasets` is imported lazily by the hub
loader so that offline use never pays for it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import torch
from scipy import stats
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Example",
    "TaskSpec",
    "TaskData",
    "GlueTask",
    "GLUE_TASKS",
    "HUB_DATASET",
    "load_task",
    "load_custom_task",
    "split_train_validation",
    "compute_metrics",
    "error_from_metrics",
    "make_batches",
]

HUB_DATASET = "nyu-mll/glue"
_METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearman")


class DataError(ValueError):
    """Data that cannot be used: a missing file or column, an unknown label, an empty split.

    The message names the file (or hub dataset) and the problem, so a user can fix the input.
    """


@dataclass(frozen=True)
class Example:
    """One labelled example; `text_b` is None for single-sentence tasks."""

    text_a: str
    text_b: str | None
    label: int | float  # class index for classification, float for regression


@dataclass(frozen=True)
class TaskSpec:
    """What a task predicts and how it is scored; shared by training, search and the service."""

    name: str
    is_regression: bool
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.is_regression and self.label_names:
            raise ValueError(f"task {self.name}: a regression task has no label names")
        if not self.is_regression and len(self.label_names) < 2:
            raise ValueError(f"task {self.name}: a classification task needs at least two labels")
        unknown = [m for m in self.metrics if m not in _METRIC_NAMES]
        if unknown:
            raise ValueError(f"task {self.name}: unknown metrics {unknown}; known: {list(_METRIC_NAMES)}")
        if self.main_metric not in self.metrics:
            raise ValueError(
                f"task {self.name}: main metric {self.main_metric!r} not in {list(self.metrics)}"
            )

    @property
    def num_labels(self) -> int:
        """Size of the classifier's output: 1 for regression."""
        return 1 if self.is_regression else len(self.label_names)


@dataclass
class TaskData:
    """A loaded task: train/validation (from the train file) and the test split(s) (from the dev file(s))."""

    spec: TaskSpec
    train: list[Example]
    validation: list[Example]
    test: dict[str, list[Example]]
    majority_baseline: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        tests = ", ".join(f"{k}={len(v)}" for k, v in self.test.items())
        return (
            f"TaskData({self.spec.name}: train={len(self.train)}, validation={len(self.validation)}, {tests})"
        )


# --------------------------------------------------------------------------------------------- GLUE registry


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task lives (classic TSV folder and HF hub) and how its columns are laid out.

    Column references are header names, or integer positions for headerless files (CoLA); -1 means
    the last field (STS-B score, MNLI gold_label, as the reference GLUE processors read them).
    """

    spec: TaskSpec
    directory: str
    train_file: str
    test_files: tuple[tuple[str, str], ...]  # (split name, file name)
    has_header: bool
    text_a: str | int
    text_b: str | int | None
    label: str | int
    label_map: tuple[tuple[str, int], ...]  # raw label -> index; empty for regression
    hub_subset: str
    hub_text: tuple[str, str | None]
    hub_test_splits: tuple[tuple[str, str], ...]  # (our split name, hub split name)
    skip_malformed: bool = False  # QQP: rows broken by stray newlines are skipped, not fatal


def _glue_spec(key: str, labels: tuple[str, ...], metrics: tuple[str, ...], main: str) -> TaskSpec:
    return TaskSpec(
        name=f"glue/{key}", is_regression=not labels, label_names=labels, metrics=metrics, main_metric=main
    )


_BINARY = (("0", 0), ("1", 1))
_NLI2 = (("entailment", 0), ("not_entailment", 1))
_ONE_TEST = (("test", "dev.tsv"),)
_ONE_HUB_TEST = (("test", "validation"),)

GLUE_TASKS: dict[str, GlueTask] = {
    "glue/cola": GlueTask(
        spec=_glue_spec("cola", ("unacceptable", "acceptable"), ("matthews_correlation", "accuracy"),
                        "matthews_correlation"),
        directory="CoLA", train_file="train.tsv", test_files=_ONE_TEST, has_header=False,
        text_a=3, text_b=None, label=1, label_map=_BINARY,
        hub_subset="cola", hub_text=("sentence", None), hub_test_splits=_ONE_HUB_TEST,
    ),
    "glue/sst2": GlueTask(
        spec=_glue_spec("sst2", ("negative", "positive"), ("accuracy",), "accuracy"),
        directory="SST-2", train_file="train.tsv", test_files=_ONE_TEST, has_header=True,
        text_a="sentence", text_b=None, label="label", label_map=_BINARY,
        hub_subset="sst2", hub_text=("sentence", None), hub_test_splits=_ONE_HUB_TEST,
    ),
    "glue/mrpc": GlueTask(
        spec=_glue_spec("mrpc", ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1"),
        directory="MRPC", train_file="train.tsv", test_files=_ONE_TEST, has_header=True,
        text_a="#1 String", text_b="#2 String", label="Quality", label_map=_BINARY,
        hub_subset="mrpc", hub_text=("sentence1", "sentence2"), hub_test_splits=_ONE_HUB_TEST,
    ),
    "glue/stsb": GlueTask(
        spec=_glue_spec("stsb", (), ("pearson", "spearman"), "spearman"),
        directory="STS-B", train_file="train.tsv", test_files=_ONE_TEST, has_header=True,
        text_a="sentence1", text_b="sentence2", label=-1, label_map=(),
        hub_subset="stsb", hub_text=("sentence1", "sentence2"), hub_test_splits=_ONE_HUB_TEST,
    ),
    "glue/qqp": GlueTask(
        spec=_glue_spec("qqp", ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1"),
        directory="QQP", train_file="train.tsv", test_files=_ONE_TEST, has_header=True,
        text_a="question1", text_b="question2", label="is_duplicate", label_map=_BINARY,
        hub_subset="qqp", hub_text=("question1", "question2"), hub_test_splits=_ONE_HUB_TEST,
        skip_malformed=True,
    ),
    "glue/mnli": GlueTask(
        spec=_glue_spec("mnli", ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy"),
        directory="MNLI", train_file="train.tsv",
        test_files=(("test_matched", "dev_matched.tsv"), ("test_mismatched", "dev_mismatched.tsv")),
        has_header=True, text_a="sentence1", text_b="sentence2", label=-1,
        label_map=(("entailment", 0), ("neutral", 1), ("contradiction", 2)),
        hub_subset="mnli", hub_text=("premise", "hypothesis"),
        hub_test_splits=(
            ("test_matched", "validation_matched"), ("test_mismatched", "validation_mismatched")
        ),
    ),
    "glue/qnli": GlueTask(
        spec=_glue_spec("qnli", ("entailment", "not_entailment"), ("accuracy",), "accuracy"),
        directory="QNLI", train_file="train.tsv", test_files=_ONE_TEST, has_header=True,
        text_a="question", text_b="sentence", label="label", label_map=_NLI2,
        hub_subset="qnli", hub_text=("question", "sentence"), hub_test_splits=_ONE_HUB_TEST,
    ),
    "glue/rte": GlueTask(
        spec=_glue_spec("rte", ("entailment", "not_entailment"), ("accuracy",), "accuracy"),
        directory="RTE", train_file="train.tsv", test_files=_ONE_TEST, has_header=True,
        text_a="sentence1", text_b="sentence2", label="label", label_map=_NLI2,
        hub_subset="rte", hub_text=("sentence1", "sentence2"), hub_test_splits=_ONE_HUB_TEST,
    ),
    "glue/wnli": GlueTask(
        spec=_glue_spec("wnli", ("not_entailment", "entailment"), ("accuracy",), "accuracy"),
        directory="WNLI", train_file="train.tsv", test_files=_ONE_TEST, has_header=True,
        text_a="sentence1", text_b="sentence2", label="label", label_map=_BINARY,
        hub_subset="wnli", hub_text=("sentence1", "sentence2"), hub_test_splits=_ONE_HUB_TEST,
    ),
}


def _glue_task(task: str) -> GlueTask:
    key = task.strip().lower()
    if "/" not in key:
        key = f"glue/{key}"
    try:
        return GLUE_TASKS[key]
    except KeyError:
        raise DataError(f"unknown task {task!r}; known: {', '.join(GLUE_TASKS)}") from None


# ------------------------------------------------------------------------------------------------- loading


def load_task(
    task: str,
    data_dir: str | Path | None = None,
    *,
    split_seed: int = 0,
    validation_fraction: float = 0.3,
    train_limit: int | None = None,
) -> TaskData:
    """Load a GLUE task ("glue/rte", ...) and apply the split protocol (see the module docstring).

    `data_dir` is the classic GLUE folder (<data_dir>/<TASKDIR>/train.tsv, dev.tsv; MNLI has
    dev_matched.tsv and dev_mismatched.tsv). Without it, $GLUE_DIR is used; without that, the task is
    loaded from the Hugging Face hub ("nyu-mll/glue"), whose validation split(s) become the test split(s).
    """
    glue = _glue_task(task)
    _check_split_args(validation_fraction, train_limit)
    if data_dir is None and os.environ.get("GLUE_DIR"):
        data_dir = os.environ["GLUE_DIR"]
    if data_dir is None:
        full_train, tests = _load_glue_hub(glue)
        source = f"hub dataset {HUB_DATASET}/{glue.hub_subset}"
    else:
        folder = Path(data_dir).expanduser() / glue.directory
        train_path = folder / glue.train_file
        full_train = _read_glue_tsv(glue, train_path)
        tests = {split: _read_glue_tsv(glue, folder / name) for split, name in glue.test_files}
        source = str(train_path)
    return _assemble(glue.spec, full_train, tests, source, split_seed, validation_fraction, train_limit)


def load_custom_task(
    name: str,
    train_file: str | Path,
    test_file: str | Path,
    *,
    text_columns: Sequence[str],
    label_column: str,
    task_type: Literal["classification", "regression"] = "classification",
    split_seed: int = 0,
    validation_fraction: float = 0.3,
    train_limit: int | None = None,
) -> TaskData:
    """Load a user task from CSV, TSV or JSONL files (format chosen by extension).

    CSV and TSV follow the usual quoting rules (as pandas writes them) and need a header row.
    Classification labels are collected from the train file and sorted (numerically if they all look like
    integers), so index i is the i-th sorted label; a test label not seen in train is an error.
    Regression labels must parse as floats. The train file is split like a GLUE train file; the test file
    is the held-out test set.
    """
    if not name or not name.strip():
        raise ValueError("a custom task needs a non-empty name")
    if isinstance(text_columns, str):
        text_columns = (text_columns,)
    text_columns = tuple(text_columns)
    if len(text_columns) not in (1, 2):
        raise ValueError(f"text_columns needs one or two column names, got {list(text_columns)}")
    if task_type not in ("classification", "regression"):
        raise ValueError(f"task_type must be 'classification' or 'regression', got {task_type!r}")
    _check_split_args(validation_fraction, train_limit)
    train_path, test_path = Path(train_file), Path(test_file)
    columns = (*text_columns, label_column)
    train_rows = _read_records(train_path, columns)
    test_rows = _read_records(test_path, columns)
    is_regression = task_type == "regression"
    if is_regression:
        label_names: tuple[str, ...] = ()
        spec = TaskSpec(f"custom/{name}", True, (), ("pearson", "spearman"), "spearman")
        to_label: Any = _float_label
    else:
        label_names = _sorted_labels(train_path, [raw for _, _, raw in train_rows])
        metrics = ("accuracy", "f1") if len(label_names) == 2 else ("accuracy",)
        spec = TaskSpec(f"custom/{name}", False, label_names, metrics, "accuracy")
        to_label = _index_label({n: i for i, n in enumerate(label_names)})

    def examples(path: Path, rows: list[tuple[int, list[str], str]]) -> list[Example]:
        out = []
        for line, texts, raw in rows:
            label = to_label(path, line, raw)
            out.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
        return out

    full_train = examples(train_path, train_rows)
    tests = {"test": examples(test_path, test_rows)}
    return _assemble(spec, full_train, tests, str(train_path), split_seed, validation_fraction, train_limit)


def split_train_validation(
    n: int, *, split_seed: int = 0, validation_fraction: float = 0.3, train_limit: int | None = None
) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of the split protocol for `n` train-file examples, each in file order.

    A seeded `random.Random` shuffle, so the split is the same on every machine and Python version.
    Validation gets round(n * fraction) examples (at least one); `train_limit` keeps the first
    `train_limit` training indices of the shuffled order, so validation is independent of the limit.
    """
    _check_split_args(validation_fraction, train_limit)
    order = list(range(n))
    random.Random(split_seed).shuffle(order)
    n_val = max(1, round(n * validation_fraction)) if n else 0
    validation, train = order[:n_val], order[n_val:]
    if train_limit is not None:
        train = train[:train_limit]
    return sorted(train), sorted(validation)


def _check_split_args(validation_fraction: float, train_limit: int | None) -> None:
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if train_limit is not None and train_limit < 1:
        raise ValueError(f"train_limit must be >= 1 or None, got {train_limit}")


def _assemble(
    spec: TaskSpec,
    full_train: list[Example],
    tests: dict[str, list[Example]],
    source: str,
    split_seed: int,
    validation_fraction: float,
    train_limit: int | None,
) -> TaskData:
    train_idx, val_idx = split_train_validation(
        len(full_train),
        split_seed=split_seed,
        validation_fraction=validation_fraction,
        train_limit=train_limit,
    )
    train = [full_train[i] for i in train_idx]
    validation = [full_train[i] for i in val_idx]
    if not train or not validation:
        raise DataError(
            f"{source}: {len(full_train)} examples are too few to split into train and validation "
            f"(validation_fraction={validation_fraction})"
        )
    data = TaskData(spec=spec, train=train, validation=validation, test=tests)
    data.majority_baseline = _majority_baseline(spec, train, next(iter(tests.values())))
    logger.info("%s (%s, split_seed=%d): %r", spec.name, source, split_seed, data)
    return data


def _majority_baseline(spec: TaskSpec, train: list[Example], test: list[Example]) -> dict[str, float]:
    """Metrics of a constant predictor: the majority train class (lowest index on ties), or the train mean."""
    labels = np.asarray([e.label for e in test])
    if spec.is_regression:
        constant: float = float(np.mean([e.label for e in train]))
    else:
        counts = Counter(int(e.label) for e in train)
        constant = min(counts, key=lambda c: (-counts[c], c))
    return compute_metrics(spec, np.full(len(labels), constant), labels)


def _open_text(path: Path) -> TextIO:
    """Open for csv reading; utf-8-sig drops a leading BOM (MRPC's header starts with one)."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "missing file"
        raise DataError(f"{path}: {what}")
    return path.open(encoding="utf-8-sig", newline="")


def _read_glue_tsv(glue: GlueTask, path: Path) -> list[Example]:
    """Parse one classic GLUE TSV. QUOTE_NONE: GLUE fields may start with '"' and must not be unquoted."""
    with _open_text(path) as f:
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
            label: int | float = _float_label(path, line, raw)
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


def _load_glue_hub(glue: GlueTask) -> tuple[list[Example], dict[str, list[Example]]]:
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


_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json-lines": "jsonl", ".ndjson": "jsonl"}


def _read_records(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str], str]]:
    """Rows of a custom file as (line, texts, raw label); the last of `columns` is the label."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_FORMATS)}")
    with _open_text(path) as f:
        try:
            records = _jsonl_rows(path, f) if fmt == "jsonl" else _csv_rows(path, f, fmt)
            out = []
            for line, record in records:
                missing = [c for c in columns if c not in record]
                if missing:
                    raise DataError(f"{path}: line {line}: missing column(s) {missing}")
                values = []
                for position, c in enumerate(columns):
                    value = record[c]
                    if value is None:
                        raise DataError(f"{path}: line {line}: column {c!r} is empty")
                    values.append(_label_key(value) if position == len(columns) - 1 else str(value))
                if values[-1] == "":
                    raise DataError(f"{path}: line {line}: empty label in column {columns[-1]!r}")
                out.append((line, values[:-1], values[-1]))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc})") from None
        except csv.Error as exc:
            raise DataError(f"{path}: cannot parse as {fmt.upper()}: {exc}") from None
    if not out:
        raise DataError(f"{path}: no examples (empty file)")
    return out


def _csv_rows(path: Path, f: TextIO, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, None)
    if not header or all(not h.strip() for h in header):
        raise DataError(f"{path}: empty file (no header)")
    header = [h.strip() for h in header]
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
            )
        yield reader.line_num, dict(zip(header, row, strict=True))


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as the readers accept it: a JSON object (the service's upload check uses the same rule)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _jsonl_rows(path: Path, f: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, line in enumerate(f, start=1):
        if line.strip():
            yield line_no, json_object(line, f"{path}: line {line_no}")


def _label_key(value: Any) -> str:
    """Canonical string of a raw label, so JSON 1, 1.0 and "1" name the same class."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


_INT_RE = re.compile(r"^[+-]?\d+$")


def _sorted_labels(path: Path, raw_labels: list[str]) -> tuple[str, ...]:
    distinct = set(raw_labels)
    if all(_INT_RE.match(x) for x in distinct):
        names = tuple(sorted(distinct, key=int))
        if len({int(x) for x in names}) != len(names):
            raise DataError(f"{path}: labels {sorted(distinct)} name the same integer more than once")
    else:
        names = tuple(sorted(distinct))
    if len(names) < 2:
        raise DataError(f"{path}: classification needs at least two distinct labels, found {list(names)}")
    return names


def _float_label(path: Path, line: int, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{path}: line {line}: label {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: line {line}: label {raw!r} is not finite")
    return value


def _index_label(index: dict[str, int]) -> Callable[[Path, int, str], int]:
    def to_label(path: Path, line: int, raw: str) -> int:
        if raw not in index:
            raise DataError(
                f"{path}: line {line}: label {raw!r} does not occur in the train file (labels: {list(index)})"
            )
        return index[raw]

    return to_label


# ------------------------------------------------------------------------------------------------- metrics


def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics (spec.metrics) as plain floats; degenerate inputs give 0.0, never NaN.

    `predictions` are class indices (or floats for regression); 2-D logits (N, C) are reduced with argmax
    for convenience. F1 is for the positive class 1 (GLUE convention for MRPC and QQP).
    """
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if spec.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or gold.ndim != 1 or len(preds) != len(gold):
        raise ValueError(f"predictions {preds.shape} and labels {gold.shape} must be 1-D and of equal length")
    if len(gold) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if spec.is_regression:
        preds, gold = preds.astype(np.float64), gold.astype(np.float64)
    else:
        preds, gold = preds.astype(np.int64), gold.astype(np.int64)
        if preds.min() < 0 or gold.min() < 0:
            raise ValueError("class indices must be >= 0")
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            out[name] = float(np.mean(preds == gold))
        elif name == "f1":
            out[name] = _f1(preds, gold)
        elif name == "matthews_correlation":
            out[name] = _mcc(preds, gold, spec.num_labels)
        elif name == "pearson":
            out[name] = _correlation(stats.pearsonr, preds, gold)
        elif name == "spearman":
            out[name] = _correlation(stats.spearmanr, preds, gold)
    return out


def error_from_metrics(spec: TaskSpec, metrics: Mapping[str, float]) -> float:
    """The quantity the search minimises: 1 - main metric."""
    if spec.main_metric not in metrics:
        raise KeyError(f"metrics {sorted(metrics)} lack the main metric {spec.main_metric!r} of {spec.name}")
    return 1.0 - float(metrics[spec.main_metric])


def _f1(preds: np.ndarray, gold: np.ndarray) -> float:
    tp = int(np.sum((preds == 1) & (gold == 1)))
    fp = int(np.sum((preds == 1) & (gold != 1)))
    fn = int(np.sum((preds != 1) & (gold == 1)))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _mcc(preds: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K; equals the binary MCC for two classes)."""
    k = max(num_labels, int(preds.max()) + 1, int(gold.max()) + 1)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (gold, preds), 1.0)
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denominator) if denominator else 0.0


def _correlation(fn: Callable[..., Any], preds: np.ndarray, gold: np.ndarray) -> float:
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(gold) == 0:
        return 0.0
    value = float(fn(preds, gold)[0])
    return value if math.isfinite(value) else 0.0


# ------------------------------------------------------------------------------------------------ batching


# (input_ids, token_type_ids, attention_mask, label) of one tokenized example
_Feature = tuple[list[int], list[int], list[int], int | float]


class _EncodedDataset(Dataset):
    """Pre-tokenized examples, so tokenization happens once and not on every epoch."""

    def __init__(self, features: list[_Feature]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> _Feature:
        return self.features[i]


class _Collate:
    """Pads a batch to its longest member (or to max_length) on the tokenizer's padding side."""

    def __init__(self, pad_id: int, pad_type_id: int, left: bool, fixed_length: int | None, regression: bool):
        self.pad_id, self.pad_type_id, self.left = pad_id, pad_type_id, left
        self.fixed_length, self.regression = fixed_length, regression

    def __call__(self, batch: list[_Feature]) -> dict[str, torch.Tensor]:
        length = self.fixed_length or max(len(ids) for ids, _, _, _ in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        types = torch.full((len(batch), length), self.pad_type_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, (input_ids, type_ids, attention, _) in enumerate(batch):
            n = len(input_ids)
            cols = slice(length - n, length) if self.left else slice(0, n)
            ids[row, cols] = torch.tensor(input_ids, dtype=torch.long)
            types[row, cols] = torch.tensor(type_ids, dtype=torch.long)
            mask[row, cols] = torch.tensor(attention, dtype=torch.long)
        label_dtype = torch.float32 if self.regression else torch.long
        labels = torch.tensor([label for _, _, _, label in batch], dtype=label_dtype)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def make_batches(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    batch_size: int,
    max_length: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    pad_to_max_length: bool = False,
    is_regression: bool | None = None,
    sort_by_length: bool = False,
) -> DataLoader:
    """A re-iterable DataLoader of padded batches: input_ids, attention_mask, token_type_ids, labels.

    Examples are tokenized once, truncated to `max_length`; each batch is padded to its longest member
    (or to `max_length` with pad_to_max_length). Tokenizers without token_type_ids (RoBERTa) get zeros.
    With shuffle=True the order is drawn from `generator` on each pass, so a generator seeded the same
    way gives the same sequence of epochs (without one, torch's global RNG is used). Labels are float
    for regression: inferred from float labels unless `is_regression` says so. `sort_by_length` orders
    examples by token count (stable), which makes evaluation much cheaper on tasks of mixed lengths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if not examples:
        raise ValueError("make_batches needs at least one example")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    if is_regression is None:
        is_regression = any(isinstance(e.label, float) for e in examples)
    features = _tokenize(examples, tokenizer, max_length)
    if sort_by_length:  # for evaluation: batches of similar lengths waste little compute on padding
        features.sort(key=lambda feature: len(feature[0]))
    collate = _Collate(
        pad_id=int(pad_id),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        left=getattr(tokenizer, "padding_side", "right") == "left",
        fixed_length=max_length if pad_to_max_length else None,
        regression=is_regression,
    )
    return DataLoader(
        _EncodedDataset(features),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        collate_fn=collate,
    )


def _tokenize(examples: Sequence[Example], tokenizer: Any, max_length: int) -> list[_Feature]:
    """Tokenize single and paired examples in (at most) two batched calls, keeping the input order."""
    features: list[Any] = [None] * len(examples)
    groups = {
        False: [i for i, e in enumerate(examples) if e.text_b is None],
        True: [i for i, e in enumerate(examples) if e.text_b is not None],
    }
    for paired, indices in groups.items():
        if not indices:
            continue
        texts_a = [examples[i].text_a for i in indices]
        texts_b = [examples[i].text_b for i in indices] if paired else None
        encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
        input_ids = encoded["input_ids"]
        type_ids = encoded.get("token_type_ids")
        attention = encoded.get("attention_mask")
        for j, i in enumerate(indices):
            ids = list(input_ids[j])
            types = list(type_ids[j]) if type_ids is not None else [0] * len(ids)
            mask = list(attention[j]) if attention is not None else [1] * len(ids)
            features[i] = (ids, types, mask, examples[i].label)
    return features
