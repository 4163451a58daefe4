"""supernet.tasks: importable without torch (the API process validates task names with it), the GLUE registry's
lookup, and TaskSpec's own checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supernet.tasks import GLUE_TASKS, DataError, TaskSpec, glue_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["supernet.tasks", "supernet.readers", "supernet.loading", "supernet.metrics"])
def test_imports_neither_torch_nor_datasets(module: str) -> None:
    code = f"import sys, {module}; bad = [m for m in ('torch', 'datasets', 'transformers') if m in sys.modules]; " \
           "assert not bad, bad"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_glue_task_lookup() -> None:
    assert glue_task("RTE") is GLUE_TASKS["glue/rte"] and glue_task(" glue/MNLI ") is GLUE_TASKS["glue/mnli"]
    with pytest.raises(DataError, match="unknown task 'glue/squad'; known: glue/cola"):
        glue_task("glue/squad")
    assert all(key == task.spec.name for key, task in GLUE_TASKS.items())


def test_task_spec_checks() -> None:
    assert TaskSpec("r", True, (), ("pearson",), "pearson").num_labels == 1
    assert TaskSpec("c", False, ["a", "b", "c"], ["accuracy"], "accuracy").label_names == ("a", "b", "c")
    with pytest.raises(ValueError, match="regression task has no label names"):
        TaskSpec("r", True, ("a", "b"), ("pearson",), "pearson")
    with pytest.raises(ValueError, match="at least two labels"):
        TaskSpec("c", False, ("a",), ("accuracy",), "accuracy")
    with pytest.raises(ValueError, match=r"unknown metrics \['bleu'\]"):
        TaskSpec("c", False, ("a", "b"), ("bleu",), "bleu")
    with pytest.raises(ValueError, match="main metric 'f1' not in"):
        TaskSpec("c", False, ("a", "b"), ("accuracy",), "f1")
