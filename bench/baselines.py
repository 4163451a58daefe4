"""The alternatives a nasprune front is measured against (bench/prove.py): plain fine-tuning, layer dropping,
one-shot importance pruning without retraining (Kwon et al., "A Fast Post-Training Pruning Framework for
Transformers", NeurIPS 2022), the same masks fine-tuned, and a small NAS of uniform sub-networks each
fine-tuned alone.

Every baseline trains with the project's own `SupernetTrainer` at k = 0 (plain fine-tuning: same AdamW, warm-up,
linear schedule and clipping as the supernet), so the methods differ only in what they train. A physically
pruned model (an `extract`ed sub-network) is trained through `PrunedModel`, which gives it the supernet's
interface.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from supernet.config import SubNetworkConfig, SupernetConfig
from supernet.counting import count_macs, layer_macs
from supernet.evaluation import evaluate
from supernet.importance import Importance
from supernet.metrics import error_from_metrics
from supernet.refine import PrunedModel
from supernet.settings import TrainingConfig
from supernet.tasks import TaskSpec
from supernet.training import SupernetTrainer, TrainState

log = logging.getLogger(__name__)

__all__ = ["PrunedModel", "finetune", "kwon_mask", "layer_drop_configs", "uniform_configs"]


@dataclass
class EpochResult:
    epoch: int
    validation: dict[str, float]
    test: dict[str, float]
    validation_error: float


@dataclass
class FineTuneResult:
    """Per-epoch metrics of one fine-tuning run and the epoch chosen on validation (never on test)."""

    learning_rate: float
    epochs: list[EpochResult] = field(default_factory=list)
    train_s: float = 0.0  # training time only (evaluations excluded)

    @property
    def best(self) -> EpochResult:
        return min(self.epochs, key=lambda e: (e.validation_error, e.epoch))

    def to_dict(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "train_s": self.train_s,
                "epochs": [vars(e) for e in self.epochs], "best_epoch": self.best.epoch}


def finetune(model: torch.nn.Module, train_batches: Sequence[Mapping[str, torch.Tensor]],
             validation_batches: Iterable[Mapping[str, torch.Tensor]],
             test_batches: Iterable[Mapping[str, torch.Tensor]], task: TaskSpec, config: TrainingConfig, *,
             generator: torch.Generator | None = None, progress: bool = True,
             on_epoch: Callable[[EpochResult], None] | None = None) -> FineTuneResult:
    """Plain fine-tuning (config.num_random_subnets must be 0) with validation and test metrics after every
    whole epoch (`on_epoch` sees each, e.g. to keep the weights of the best). `model` is a Supernet (trained
    as the full network) or a PrunedModel."""
    if config.num_random_subnets != 0:
        raise ValueError("finetune is plain fine-tuning: set num_random_subnets=0")
    result = FineTuneResult(learning_rate=config.learning_rate)
    trainer: SupernetTrainer
    started = time.perf_counter()
    evaluating = 0.0

    def on_step(state: TrainState) -> None:
        nonlocal evaluating
        if state.step % trainer.steps_per_epoch:
            return
        began = time.perf_counter()
        epoch = state.step // trainer.steps_per_epoch
        validation = evaluate(model, validation_batches, task)
        test = evaluate(model, test_batches, task)
        result.epochs.append(EpochResult(epoch=epoch, validation=validation, test=test,
                                         validation_error=error_from_metrics(task, validation)))
        log.info("epoch %d: validation %s, test %s", epoch, validation, test)
        if on_epoch is not None:
            on_epoch(result.epochs[-1])
        model.train()
        evaluating += time.perf_counter() - began

    trainer = SupernetTrainer(model, None, train_batches, config, generator=generator,  # type: ignore[arg-type]
                              on_step=on_step, progress=progress, description="fine-tuning")
    trainer.train()
    result.train_s = time.perf_counter() - started - evaluating
    return result


# ------------------------------------------------------------------------------------------------ configurations


def layer_drop_configs(config: SupernetConfig) -> list[SubNetworkConfig]:
    """The full-width model without its top k layers, for k = 1 .. L-1 (Sajjad et al., 2023: top-layer
    dropping is the strong simple baseline)."""
    full = SubNetworkConfig.full(config)
    return [SubNetworkConfig(layers=tuple(range(config.num_layers - k)), heads=full.heads, units=full.units)
            for k in range(1, config.num_layers)]


def uniform_configs(config: SupernetConfig, fractions: Sequence[float]) -> list[SubNetworkConfig]:
    """All layers kept, each with the first `fraction` of its heads and units (at least one head and unit)."""
    configs = []
    for fraction in fractions:
        heads = max(1, round(config.num_heads * fraction))
        units = max(1, round(config.intermediate_size * fraction))
        configs.append(SubNetworkConfig(layers=tuple(range(config.num_layers)), heads=(heads,) * config.num_layers,
                                        units=(units,) * config.num_layers))
    return configs


def kwon_mask(config: SupernetConfig, importance: Importance, mac_budget: float, *,
              seq_len: int = 128) -> SubNetworkConfig:
    """The heads and FFN units to keep under `mac_budget` (a fraction of the full encoder's MACs), chosen as in
    Kwon et al.'s mask search: for every number n of kept heads (the n most important across all layers), fill
    the rest of the budget with the most important units, and keep the n whose kept importance is largest.

    The model must already be ordered by the same importance (`reorder_by_importance`), so that the chosen
    heads and units of each layer are its first k (what a SubNetworkConfig can express).
    """
    if not 0 < mac_budget <= 1:
        raise ValueError(f"mac_budget is a fraction of the full encoder's MACs in (0, 1], got {mac_budget}")
    L = config.num_layers
    head_cost = layer_macs(config, 1, 0, seq_len)  # one head: Q, K, V, output projections and attention
    unit_cost = layer_macs(config, 0, 1, seq_len)
    budget = mac_budget * count_macs(config, seq_len=seq_len, encoder_only=True)
    heads = sorted(((float(s), i) for i in range(L) for s in importance.heads[i]), reverse=True)
    units = sorted(((float(s), i) for i in range(L) for s in importance.units[i]), reverse=True)
    unit_prefix = [0.0]
    for score, _ in units:
        unit_prefix.append(unit_prefix[-1] + score)
    best: tuple[float, int, int] | None = None
    head_sum = 0.0
    for n in range(len(heads) + 1):
        if n:
            head_sum += heads[n - 1][0]
        left = budget - n * head_cost
        if left < 0:
            break
        m = min(len(units), int(left // unit_cost))
        score = head_sum + unit_prefix[m]
        if best is None or score >= best[0]:  # on a tie keep more heads (never worse, and 1.0 is the full model)
            best = (score, n, m)
    if best is None:  # unreachable: n = 0 always fits
        raise ValueError("no mask fits the budget")
    _, n, m = best
    layer_heads, layer_units = [0] * L, [0] * L
    for _, i in heads[:n]:
        layer_heads[i] += 1
    for _, i in units[:m]:
        layer_units[i] += 1
    return SubNetworkConfig(layers=tuple(range(L)), heads=tuple(layer_heads), units=tuple(layer_units))
