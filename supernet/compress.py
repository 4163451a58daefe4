"""Compressing a chosen point: decompose its dense model (supernet/decompose.py), then recover what the factors lost by
distilling the dense model into the compressed one.

Ren et al. (ICLR 2022) recover their decomposed BERT with knowledge distillation from the original at every level:
the logits and each layer's hidden states. Here the teacher is the point itself (its physically pruned model, left
frozen): the student learns its soft logits (temperature T), every layer's output over the real tokens (mean
squared error; compression keeps the layer count and the hidden size, so layer l matches layer l), and the labels.
The loop, schedule, checkpoints, resume and divergence checks are the project's trainer's (supernet/training.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from .decompose import decompose
from .factors import Compression
from .modeling_nasprune import NasPruneForSequenceClassification
from .refine import PrunedModel
from .settings import CompressConfig, TrainingConfig
from .training import SupernetTrainer, TrainState, distillation_loss, task_loss


@contextmanager
def layer_outputs(model: NasPruneForSequenceClassification) -> Iterator[list[torch.Tensor]]:
    """Collect each layer's output (B, T, H) of the forwards run while open, in layer order."""
    seen: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _i, out: seen.append(out)) for layer in model.model.layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class RecoveryTrainer(SupernetTrainer):
    """The trainer's loop with one step of its own: the compressed student learns the frozen dense teacher."""

    def __init__(self, student: NasPruneForSequenceClassification, teacher: NasPruneForSequenceClassification,
                 loader: Iterable[Mapping[str, torch.Tensor]], config: CompressConfig, seed: int,
                 **kwargs) -> None:
        self.teacher, self.settings = teacher.eval(), config
        for param in teacher.parameters():
            param.requires_grad_(False)
        self.student = student
        training = TrainingConfig(epochs=config.epochs, learning_rate=config.learning_rate,
                                  weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio,
                                  num_random_subnets=0, seed=seed)
        super().__init__(PrunedModel(student), None, loader, training,  # type: ignore[arg-type]
                         description="compression recovery", learning_rate_setting="compress.learning_rate", **kwargs)

    def _forward_backward(self, batch: Mapping[str, torch.Tensor], scale: float) -> dict[str, float]:
        with self.autocast():
            return self._recovery_step(batch, scale)

    def _recovery_step(self, batch: Mapping[str, torch.Tensor], scale: float) -> dict[str, float]:
        inputs = (batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        labels = batch["labels"]
        self._regression = labels.is_floating_point()
        exits = bool(self.student.config.exits)  # every exit learns its counterpart (E, B, C)
        with torch.no_grad(), layer_outputs(self.teacher) as taught:
            target = self.teacher.model(*inputs, all_exits=exits)
        with layer_outputs(self.student) as learnt:
            logits = self.student.model(*inputs, all_exits=exits)
        cfg = self.settings
        regression = self.student.config.num_labels == 1
        pairs = list(zip(logits, target, strict=True)) if exits else [(logits, target)]
        loss_logits = torch.stack([F.mse_loss(s, t) if regression else distillation_loss(s, t, cfg.temperature)
                                   for s, t in pairs]).mean()
        mask = inputs[1]
        weights = (torch.ones(inputs[0].shape, dtype=logits.dtype, device=logits.device) if mask is None
                   else mask.to(logits.dtype))
        hidden = sum(((s - t).square().mean(-1) * weights).sum() / weights.sum()
                     for s, t in zip(learnt, taught, strict=True)) / max(1, len(learnt))
        loss = loss_logits + cfg.hidden_loss_weight * hidden
        if cfg.label_loss_weight:
            loss = loss + cfg.label_loss_weight * torch.stack([task_loss(s, labels) for s, _ in pairs]).mean()
        (loss * scale).backward()
        return {"loss": loss.item(), "loss_hidden": float(hidden.detach())}


def compress_model(dense: NasPruneForSequenceClassification, config: CompressConfig,
                   loader: Iterable[Mapping[str, torch.Tensor]] | None, *, seed: int = 0,
                   generator: torch.Generator | None = None, checkpoint_path: str | Path | None = None,
                   on_step: Callable[[TrainState], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, progress: bool = True,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> NasPruneForSequenceClassification | None:
    """`dense` (left untouched) decomposed by `config` and recovered on `loader` for `config.epochs` (0: the
    decomposition alone, no loader needed); the decomposition runs on the host (tensorly), the recovery on `device`
    in `dtype` (supernet.devices.training_dtype), and the model is returned there. With `checkpoint_path`, a
    stopped recovery (None is returned) resumes
    from where it stopped when called again with the same settings; the checkpoint is removed once it is done.
    CompressionError (naming the setting) for ranks that do not fit the point."""
    model = decompose(dense.cpu(), Compression.from_dict(config.compression())).to(device)
    if config.epochs == 0:
        return model
    if loader is None:
        raise ValueError("recovery needs the task's training batches (or compress epochs 0)")
    path = None if checkpoint_path is None else Path(checkpoint_path)
    dense = dense.to(device)
    with static_runs(model), static_runs(dense):
        trainer = RecoveryTrainer(model, dense, loader, config, seed, generator=generator, checkpoint_path=path,
                                  on_step=on_step, should_stop=should_stop, progress=progress, dtype=dtype)
        if path is not None and path.is_file():
            trainer.load_checkpoint(path)
        if trainer.train().stopped:  # the trainer checkpointed on its way out
            return None
    if path is not None:
        path.unlink(missing_ok=True)
    return model.eval()


@contextmanager
def static_runs(model: NasPruneForSequenceClassification) -> Iterator[None]:
    """Every token through every layer while the model learns (layer l's output then matches the teacher's layer
    l token for token); the point's token schedule and exit threshold are back afterwards."""
    keep, threshold = model.model.token_keep, model.model.exit_threshold
    model.model.token_keep, model.model.exit_threshold = None, None
    try:
        yield
    finally:
        model.model.token_keep, model.model.exit_threshold = keep, threshold
