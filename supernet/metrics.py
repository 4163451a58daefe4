"""The task metrics (accuracy, F1, Matthews correlation, Pearson, Spearman) and the error the search minimises.

numpy and scipy only: the search and the service score predictions without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import stats

from .tasks import TaskSpec

__all__ = ["compute_metrics", "error_from_metrics"]


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
