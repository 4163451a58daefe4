"""supernet.metrics: accuracy, F1, Matthews correlation, Pearson and Spearman checked by hand; degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from supernet.metrics import compute_metrics, error_from_metrics
from supernet.tasks import GLUE_TASKS, TaskSpec


def _spec(name: str) -> TaskSpec:
    return GLUE_TASKS[f"glue/{name}"].spec


def test_accuracy_f1_mcc_by_hand() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    preds = np.array([1, 1, 0, 0, 1, 0, 1, 1])  # tp=3 fn=1 fp=2 tn=2
    mrpc = compute_metrics(_spec("mrpc"), preds, labels)
    assert mrpc == {"f1": pytest.approx(6 / 9), "accuracy": pytest.approx(5 / 8)}
    mcc = (3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3)
    cola = compute_metrics(_spec("cola"), preds, labels)
    assert cola["matthews_correlation"] == pytest.approx(mcc)
    assert error_from_metrics(_spec("cola"), cola) == pytest.approx(1 - mcc)
    assert error_from_metrics(_spec("mrpc"), mrpc) == pytest.approx(1 - 6 / 9)
    assert compute_metrics(_spec("rte"), preds, labels) == {"accuracy": pytest.approx(5 / 8)}
    logits = np.eye(2)[preds] * 3.0  # 2-D logits are reduced with argmax
    assert compute_metrics(_spec("rte"), logits, labels)["accuracy"] == pytest.approx(5 / 8)
    three = compute_metrics(_spec("mnli"), np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    assert three == {"accuracy": 0.75}


def test_pearson_spearman_by_hand() -> None:
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    preds = np.array([1.0, 3.0, 2.0, 5.0])
    out = compute_metrics(_spec("stsb"), preds, labels)
    # pearson: centered x=[-1.5,-.5,.5,1.5], y=[-1.75,.25,-.75,2.25]; sum xy=5.5, sxx=5, syy=8.75
    assert out["pearson"] == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    assert out["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # ranks differ by 1 at two places
    assert error_from_metrics(_spec("stsb"), out) == pytest.approx(1 - 0.8)


def test_degenerate_predictions_give_zero_not_nan() -> None:
    labels = np.array([0, 1, 1, 0])
    constant = np.zeros(4, dtype=int)
    cola = compute_metrics(_spec("cola"), constant, labels)
    assert cola == {"matthews_correlation": 0.0, "accuracy": 0.5}
    assert compute_metrics(_spec("mrpc"), constant, labels)["f1"] == 0.0
    stsb = compute_metrics(_spec("stsb"), np.full(4, 2.5), np.array([1.0, 2.0, 3.0, 4.0]))
    assert stsb == {"pearson": 0.0, "spearman": 0.0}
    stsb = compute_metrics(_spec("stsb"), np.array([1.0, 2.0]), np.array([3.0, 3.0]))
    assert stsb == {"pearson": 0.0, "spearman": 0.0}
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics(_spec("rte"), np.zeros(3), np.zeros(4))
    with pytest.raises(KeyError, match="matthews_correlation"):
        error_from_metrics(_spec("cola"), {"accuracy": 1.0})
