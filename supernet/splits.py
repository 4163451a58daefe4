"""The split protocol, the same for GLUE and custom tasks.

The labelled *train* file is split at random (seeded, deterministic across machines) into a training part and a
validation part. The search tunes and selects on validation only; the task's dev file(s) serve as the held-out
*test* set(s), because GLUE's own test labels are not public (the protocol of Klein et al., TMLR 2024).
`train_limit` then caps the training part (a seeded random subset of it); the validation part never depends on
`train_limit`, so runs with different limits are compared on the same validation examples.

Torch-free (numpy for the majority baseline's metrics).
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import numpy as np

from .metrics import compute_metrics
from .tasks import DataError, Example, TaskData, TaskSpec

logger = logging.getLogger(__name__)

__all__ = ["split_train_validation", "check_split_args", "assemble", "majority_baseline"]


def split_train_validation(
    n: int, *, split_seed: int = 0, validation_fraction: float = 0.3, train_limit: int | None = None
) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of the split protocol for `n` train-file examples, each in file order.

    A seeded `random.Random` shuffle, so the split is the same on every machine and Python version.
    Validation gets round(n * fraction) examples (at least one); `train_limit` keeps the first
    `train_limit` training indices of the shuffled order, so validation is independent of the limit.
    """
    check_split_args(validation_fraction, train_limit)
    order = list(range(n))
    random.Random(split_seed).shuffle(order)
    n_val = max(1, round(n * validation_fraction)) if n else 0
    validation, train = order[:n_val], order[n_val:]
    if train_limit is not None:
        train = train[:train_limit]
    return sorted(train), sorted(validation)


def check_split_args(validation_fraction: float, train_limit: int | None) -> None:
    """Refuse split arguments before any file is read, so a bad request fails at once."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if train_limit is not None and train_limit < 1:
        raise ValueError(f"train_limit must be >= 1 or None, got {train_limit}")


def assemble(
    spec: TaskSpec,
    full_train: list[Example],
    tests: dict[str, list[Example]],
    source: str,
    split_seed: int,
    validation_fraction: float,
    train_limit: int | None,
) -> TaskData:
    """A TaskData from the whole train file's examples and the test split(s), split by the protocol above."""
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
    data.majority_baseline = majority_baseline(spec, train, next(iter(tests.values())))
    logger.info("%s (%s, split_seed=%d): %r", spec.name, source, split_seed, data)
    return data


def majority_baseline(spec: TaskSpec, train: list[Example], test: list[Example]) -> dict[str, float]:
    """Metrics of a constant predictor: the majority train class (lowest index on ties), or the train mean."""
    labels = np.asarray([e.label for e in test])
    if spec.is_regression:
        constant: float = float(np.mean([e.label for e in train]))
    else:
        counts = Counter(int(e.label) for e in train)
        constant = min(counts, key=lambda c: (-counts[c], c))
    return compute_metrics(spec, np.full(len(labels), constant), labels)
