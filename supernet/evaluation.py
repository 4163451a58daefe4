"""Evaluate the supernet (or one of its sub-networks) on a split: predictions, then task metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import SubNetworkConfig
from .data import TaskSpec, compute_metrics
from .model import Supernet


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every example, in loader order."""
    model.eval()
    logits, labels = [], []
    for batch in tqdm(batches, desc="evaluating", disable=not progress, leave=False):
        out = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        logits.append(getattr(out, "logits", out).float().numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(logits), np.concatenate(labels)


def metrics_from_logits(spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predictions = logits[:, 0] if spec.is_regression else logits.argmax(-1)
    return compute_metrics(spec, predictions, labels)


def evaluate(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], spec: TaskSpec, *,
             sub: SubNetworkConfig | None = None, progress: bool = False) -> dict[str, float]:
    """Task metrics of `model`; for a Supernet, of sub-network `sub` (None: the full network)."""
    if isinstance(model, Supernet):
        with model.use(sub):
            return metrics_from_logits(spec, *predict(model, batches, progress=progress))
    if sub is not None:
        raise ValueError("a sub-network can only be chosen inside a Supernet")
    return metrics_from_logits(spec, *predict(model, batches, progress=progress))
