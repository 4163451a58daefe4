"""Importance ordering of heads and FFN units, so that "keep the first k" keeps the best k.

Score: the Fisher information of a mask variable on each head / unit (Kwon et al., "A Fast Post-Training
Pruning Framework for Transformers", NeurIPS 2022): the squared gradient of the loss with respect to a
multiplicative mask at 1, summed over batches. No mask has to be inserted: for a head h whose context
columns J feed the output projection W, dL/dm_h = Σ_{j∈J} Σ_o W[o, j] · ∂L/∂W[o, j], and likewise for
an FFN unit j with the FFN's down projection. Each batch gives one gradient sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .model import Supernet
from .settings import EXIT_LOSS_WEIGHTINGS

log = logging.getLogger(__name__)


@dataclass
class Importance:
    heads: list[torch.Tensor]  # per layer, (num_heads,)
    units: list[torch.Tensor]  # per layer, (units,)

    def to_dict(self) -> dict[str, list[list[float]]]:
        return {"heads": [h.tolist() for h in self.heads], "units": [u.tolist() for u in self.units]}

    @classmethod
    def from_dict(cls, data: Mapping[str, list[list[float]]]) -> Importance:
        return cls(heads=[torch.tensor(h, dtype=torch.float32) for h in data["heads"]],
                   units=[torch.tensor(u, dtype=torch.float32) for u in data["units"]])

    def sorted(self) -> Importance:
        """The scores in the order `reorder_by_importance` leaves the weights (most important first per layer)."""
        return Importance(heads=[torch.sort(h, descending=True, stable=True).values for h in self.heads],
                          units=[torch.sort(u, descending=True, stable=True).values for u in self.units])


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def exits_task_loss(logits: torch.Tensor, labels: torch.Tensor, weighting: str = "mean") -> torch.Tensor:
    """`task_loss` at every exit of (E, B, C) logits (`model(..., all_exits=True)`), weighed by `weigh_exits`."""
    return weigh_exits(torch.stack([task_loss(exit_logits, labels) for exit_logits in logits]), weighting)


def weigh_exits(losses: torch.Tensor, weighting: str = "mean") -> torch.Tensor:
    """One loss from the (E,) losses of every exit, shallowest first: a weighted mean, never a sum.

    A mean keeps the figure on the scale of one exit's loss whatever the number of kept layers: the learning rate,
    the gradient clipping and `label_loss_weight` mean the same with and without exits, and a sampled sub-network
    with many layers does not outweigh a shallow one in the sandwich. "mean": every exit weighs the same, as in
    DeeBERT and COST-EFF (what keeps deep exits from dominating shallow layers is the trainer's gradient
    equilibrium, supernet.training.gradient_equilibrium, not the weights here). "depth": the k-th exit weighs k, as
    PABEE does (Zhou et al., "BERT Loses Patience", NeurIPS 2020): the deep exits, which answer the hard inputs and
    the full network's, give up less to the shallow ones."""
    if weighting == "mean":
        return losses.mean()
    if weighting != "depth":
        raise ValueError(f"exit loss weighting {weighting!r}: one of {EXIT_LOSS_WEIGHTINGS}")
    weights = torch.arange(1, len(losses) + 1, dtype=losses.dtype, device=losses.device)
    return (losses * weights).sum() / weights.sum()


def fisher_importance(model: Supernet, batches: Iterable[Mapping[str, torch.Tensor]], *,
                      max_batches: int = 8, progress: bool = True, exit_weighting: str | None = "mean"
                      ) -> Importance:
    """Sum over up to `max_batches` of the squared mask gradients of every head and FFN unit.

    With exit heads (`model.exits`) the loss is every exit's task loss (`exits_task_loss`, weighed as the supernet
    trains them: `exit_weighting`), as COST-EFF
    (Shen et al., EMNLP 2022) measures importance: scored on the last layer's loss alone, a head that only an early
    exit needs would look useless and be pruned first, starving that exit. `exit_weighting` None: the last layer's
    loss alone (detached exits, which do not shape the backbone)."""
    model.reset_super_network()
    was_training = model.training
    model.eval()  # importance of the deterministic network (no dropout)
    d = model.config.head_size
    device = next(model.parameters()).device  # summed where the gradients are: one copy to the host at the end
    heads = [torch.zeros(layer.attention.num_heads, device=device) for layer in model.layers]
    units = [torch.zeros(layer.ffn.units, device=device) for layer in model.layers]
    seen = 0
    iterator = iter(batches)
    for _ in tqdm(range(max_batches), desc="importance", disable=not progress, leave=False):
        batch = next(iterator, None)
        if batch is None:
            break
        model.zero_grad(set_to_none=True)
        inputs = (batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        if model.exits and exit_weighting is not None:  # COST-EFF: every exit's loss, so pruning keeps what
            # shallow exits need too
            loss = exits_task_loss(model(*inputs, all_exits=True), batch["labels"], exit_weighting)
        else:
            loss = task_loss(model(*inputs), batch["labels"])
        loss.backward()
        with torch.no_grad():
            for i, layer in enumerate(model.layers):
                w = layer.attention.dense.weight  # (H, heads * d); no grad when the layer has 0 heads
                if w.grad is not None:
                    per_column = (w * w.grad).sum(0)  # (heads * d,)
                    heads[i] += per_column.view(-1, d).sum(1).pow(2)
                w = layer.ffn.output.weight  # (H, units)
                if w.grad is not None:
                    units[i] += (w * w.grad).sum(0).pow(2)
        seen += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if seen == 0:
        raise ValueError("importance scoring needs at least one training batch")
    log.info("importance scored on %d batches", seen)
    return Importance(heads=[h.cpu() for h in heads], units=[u.cpu() for u in units])


@torch.no_grad()
def permute_heads(model: Supernet, layer_index: int, order: torch.Tensor) -> None:
    """Reorder the heads of one layer: new head j is old head order[j]. The function is unchanged."""
    attention = model.layers[layer_index].attention
    d = attention.head_size
    rows = (order.view(-1, 1) * d + torch.arange(d)).reshape(-1)
    for linear in (attention.query, attention.key, attention.value):
        linear.weight.copy_(linear.weight[rows])
        linear.bias.copy_(linear.bias[rows])
    attention.dense.weight.copy_(attention.dense.weight[:, rows])


@torch.no_grad()
def permute_units(model: Supernet, layer_index: int, order: torch.Tensor) -> None:
    """Reorder the FFN units of one layer: new unit j is old unit order[j]."""
    ffn = model.layers[layer_index].ffn
    ffn.intermediate.weight.copy_(ffn.intermediate.weight[order])
    ffn.intermediate.bias.copy_(ffn.intermediate.bias[order])
    ffn.output.weight.copy_(ffn.output.weight[:, order])


def reorder_by_importance(model: Supernet, importance: Importance) -> None:
    """Permute every layer so that its most important heads and units come first. A block shared by several layers
    is permuted once: its gradients, and so its scores, already sum over every layer that runs it."""
    done: set[int] = set()
    for i, layer in enumerate(model.layers):
        if id(layer) in done:
            continue
        done.add(id(layer))
        permute_heads(model, i, torch.argsort(importance.heads[i], descending=True, stable=True))
        permute_units(model, i, torch.argsort(importance.units[i], descending=True, stable=True))
