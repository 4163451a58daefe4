"""Load a task: a GLUE task (classic TSV folder, $GLUE_DIR, or the Hugging Face hub) or a custom task from CSV,
TSV or JSONL files, split by the protocol in supernet.splits.

Torch-free: the files are read by supernet.readers, the same rules the service checks uploads with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from .readers import Record, check_file, float_label, index_label, load_glue_hub, read_glue_tsv, sorted_labels
from .splits import assemble, check_split_args
from .tasks import HUB_DATASET, Example, TaskData, TaskSpec, glue_task

__all__ = ["load_task", "load_custom_task"]


def load_task(
    task: str,
    data_dir: str | Path | None = None,
    *,
    split_seed: int = 0,
    validation_fraction: float = 0.3,
    train_limit: int | None = None,
) -> TaskData:
    """Load a GLUE task ("glue/rte", ...) and apply the split protocol (see supernet.splits).

    `data_dir` is the classic GLUE folder (<data_dir>/<TASKDIR>/train.tsv, dev.tsv; MNLI has
    dev_matched.tsv and dev_mismatched.tsv). Without it, $GLUE_DIR is used; without that, the task is
    loaded from the Hugging Face hub ("nyu-mll/glue"), whose validation split(s) become the test split(s).
    """
    glue = glue_task(task)
    check_split_args(validation_fraction, train_limit)
    if data_dir is None and os.environ.get("GLUE_DIR"):
        data_dir = os.environ["GLUE_DIR"]
    if data_dir is None:
        full_train, tests = load_glue_hub(glue)
        source = f"hub dataset {HUB_DATASET}/{glue.hub_subset}"
    else:
        folder = Path(data_dir).expanduser() / glue.directory
        train_path = folder / glue.train_file
        full_train = read_glue_tsv(glue, train_path)
        tests = {split: read_glue_tsv(glue, folder / name) for split, name in glue.test_files}
        source = str(train_path)
    return assemble(glue.spec, full_train, tests, source, split_seed, validation_fraction, train_limit)


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
    """Load a user task from CSV, TSV or JSONL files (format chosen by extension; rules in readers.check_file).

    CSV and TSV follow the usual quoting rules (as pandas writes them) and need a header row.
    Classification labels are collected from the train file and sorted (numerically if they all look like
    integers), so index i is the i-th sorted label; a test label not seen in train is an error. Each file is held
    to readers.check_column's rules for its text and label columns (no empty text or label, no JSON object or
    list, two to MAX_CLASSES classes, numbers with fractions only as regression), the very rules an upload is
    checked with, so a file named by path fails its job with the reason an upload would have got.
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
    check_split_args(validation_fraction, train_limit)
    train_path, test_path = Path(train_file), Path(test_file)
    is_regression = task_type == "regression"

    def records(path: Path) -> list[Record]:
        return check_file(path, text_columns=text_columns, label_column=label_column, regression=is_regression,
                          keep_records=True).records

    train_rows, test_rows = records(train_path), records(test_path)
    to_label: Callable[[str | Path, int, str], int | float]
    if is_regression:
        spec = TaskSpec(f"custom/{name}", True, (), ("pearson", "spearman"), "spearman")
        to_label = float_label
    else:
        label_names = sorted_labels(train_path, [raw for _, _, raw in train_rows])
        metrics = ("accuracy", "f1") if len(label_names) == 2 else ("accuracy",)
        spec = TaskSpec(f"custom/{name}", False, label_names, metrics, "accuracy")
        to_label = index_label({n: i for i, n in enumerate(label_names)})

    def examples(path: Path, rows: list[Record]) -> list[Example]:
        return [Example(texts[0], texts[1] if len(texts) > 1 else None, to_label(path, line, raw))
                for line, texts, raw in rows]

    full_train = examples(train_path, train_rows)
    tests = {"test": examples(test_path, test_rows)}
    return assemble(spec, full_train, tests, str(train_path), split_seed, validation_fraction, train_limit)
