"""What a task is: its spec (labels, metrics), one example, a loaded task, and the GLUE registry.

Torch-free and datasets-free at import: the API process imports this module to validate task names, and must not
pay for (or depend on) the training stack. Loading lives in supernet.loading, file formats in supernet.readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DataError",
    "Example",
    "TaskSpec",
    "TaskData",
    "GlueTask",
    "GLUE_TASKS",
    "HUB_DATASET",
    "METRIC_NAMES",
    "glue_task",
]

HUB_DATASET = "nyu-mll/glue"
METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearman")


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
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"task {self.name}: unknown metrics {unknown}; known: {list(METRIC_NAMES)}")
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


def glue_task(task: str) -> GlueTask:
    """The registry entry of `task`: "glue/rte", or a bare name ("rte", "RTE")."""
    key = task.strip().lower()
    if "/" not in key:
        key = f"glue/{key}"
    try:
        return GLUE_TASKS[key]
    except KeyError:
        raise DataError(f"unknown task {task!r}; known: {', '.join(GLUE_TASKS)}") from None
