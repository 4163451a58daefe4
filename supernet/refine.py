"""Refining a front point: a short fine-tuning of its physically pruned model at its own size.

A sub-network's weights are shared with every other sub-network during supernet training; a few steps of
training on its own fit them to that one architecture. bench/RESULTS.md measured why this matters: Kwon-style
masks plus one epoch of fine-tuning per pruned model beat the supernet's sub-networks as sliced. Refining gives
nasprune's front points the same last step, on the task's labels, with the project's trainer (AdamW, warm-up,
linear decay, clipping), and yields an ordinary exported model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from .config import SubNetworkConfig
from .extract import extract
from .model import Supernet
from .modeling_nasprune import NasPruneForSequenceClassification
from .settings import RefineConfig
from .training import SupernetTrainer


class PrunedModel(torch.nn.Module):
    """An exported (physically smaller) model in the interface SupernetTrainer uses for plain fine-tuning."""

    def __init__(self, exported: torch.nn.Module) -> None:
        super().__init__()
        self.exported = exported
        self.config = exported.config  # the trainer's checkpoints record config.to_dict()

    def reset_super_network(self) -> None:
        """Nothing to reset: the model is the sub-network."""

    # what the trainer's exit training reads (supernet.training.gradient_equilibrium): the exported stack's own
    @property
    def exits(self) -> bool:
        return bool(getattr(self.exported.model, "exits", False))

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.exported.model.layers

    @property
    def exit_heads(self) -> torch.nn.ModuleList:
        return self.exported.model.exit_heads

    @property
    def active_layers(self) -> list[int]:
        return self.exported.model.active_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, all_exits: bool = False) -> torch.Tensor:
        return self.exported.model(input_ids, attention_mask, token_type_ids, all_exits=all_exits)


def refine_subnetwork(supernet: Supernet, sub: SubNetworkConfig, loader: Iterable[Mapping[str, torch.Tensor]],
                      config: RefineConfig, *, seed: int = 0, generator: torch.Generator | None = None,
                      should_stop: Callable[[], bool] | None = None, progress: bool = True,
                      dtype: torch.dtype = torch.float32) -> NasPruneForSequenceClassification | None:
    """Extract `sub` from `supernet` (which is left untouched) and fine-tune the copy on `loader`'s labels.
    None if `should_stop` stopped it (a point is short: it is redone whole, never resumed). A refine whose loss or
    weights stop being finite raises `TrainingDiverged` (naming refine.learning_rate) instead of returning a model
    that predicts nothing. The copy trains where `supernet` is, in `dtype` (supernet.devices.training_dtype). A
    model with exit heads trains them all on the labels with its backbone (as the supernet's full network did), so
    its exits still answer for the refined layers."""
    if not config.enabled:
        raise ValueError("refine epochs is 0: nothing to refine")
    model = extract(supernet, sub).to(next(supernet.parameters()).device)
    wrapped = PrunedModel(model)
    training = config.training(seed)
    if wrapped.exits and len(sub.layers) > 1:  # its exit heads learn the refined stack too (every exit on the labels)
        training = training.model_copy(update={"exits": True})
    trainer = SupernetTrainer(wrapped, None, loader, training,  # type: ignore[arg-type]
                              generator=generator, should_stop=should_stop, progress=progress,
                              description="refinement", learning_rate_setting="refine.learning_rate", dtype=dtype)
    if trainer.train().stopped:
        return None
    return model.eval()
