"""Compressing a chosen point: decompose its dense model (supernet/decompose.py), then recover what the factors lost by
distilling the dense model into the compressed one.

Ren et al. (ICLR 2022) recover their decomposed BERT with knowledge distillation from the original at every level:
the logits and each layer's hidden states. Here the teacher is the point itself (its physically pruned model, left
frozen): the student learns its soft logits (temperature T), every layer's output over the real tokens (mean
squared error; compression keeps the layer count and the hidden size, so layer l matches layer l), and the labels.
The loop, schedule, checkpoints, resume and divergence checks are the project's trainer's (supernet/training.py).

What makes recovery work at extreme ranks is where it starts (`CompressConfig.init`) and how fast it moves. The
paper's factors fit the weights, ‖W - Ŵ‖; a pretrained matrix's spectrum is flat, so at 1/20 of the encoder that
loses most of every matrix and the decomposed model answers the majority class, where a small learning rate keeps it
for most of an epoch. Its inputs' spectrum is far from flat, so factors fitted to what each matrix computes on real
inputs, ‖X(W - Ŵ)‖ (a whitened SVD, as in the activation-aware SVDs of LLM compression: ASVD, SVD-LLM), keep much
of the point's accuracy before any training, and a learning rate of 1e-3 lets the factors travel the rest within an
epoch (bench/RESULTS.md and bench/READING.md have the figures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import factors
from .decompose import _dense_weight, _projection, decompose, model_layout
from .factors import Compression
from .modeling_nasprune import NasPruneForSequenceClassification
from .refine import PrunedModel
from .settings import CompressConfig
from .training import (
    SupernetTrainer,
    TrainState,
    distillation_inputs,
    distillation_loss,
    forward_outputs,
    hidden_state_loss,
    recovery_training,
    task_loss,
)


class RecoveryTrainer(SupernetTrainer):
    """The trainer's loop with one step of its own: the compressed student learns the frozen dense teacher."""

    def __init__(self, student: NasPruneForSequenceClassification, teacher: NasPruneForSequenceClassification,
                 loader: Iterable[Mapping[str, torch.Tensor]], config: CompressConfig, seed: int,
                 **kwargs) -> None:
        self.teacher, self.settings = teacher.eval(), config
        for param in teacher.parameters():
            param.requires_grad_(False)
        self.student = student
        super().__init__(PrunedModel(student), None, loader, recovery_training(config, seed),  # type: ignore[arg-type]
                         description="compression recovery", learning_rate_setting="compress.learning_rate", **kwargs)

    def _forward_backward(self, batch: Mapping[str, torch.Tensor], scale: float) -> dict[str, float]:
        with self.autocast():
            return self._recovery_step(batch, scale)

    def _recovery_step(self, batch: Mapping[str, torch.Tensor], scale: float) -> dict[str, float]:
        labels = batch["labels"]
        inputs = distillation_inputs((batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")),
                                     self.settings, self.rng)  # the labelled rows first
        self._regression = labels.is_floating_point()
        exits = bool(self.student.config.exits)  # every exit learns its counterpart (E, B, C)
        with torch.no_grad(), forward_outputs(self.teacher.model.layers) as taught:
            target = self.teacher.model(*inputs, all_exits=exits)
        with forward_outputs(self.student.model.layers) as learnt:
            logits = self.student.model(*inputs, all_exits=exits)
        cfg = self.settings
        regression = self.student.config.num_labels == 1
        pairs = list(zip(logits, target, strict=True)) if exits else [(logits, target)]
        loss_logits = torch.stack([F.mse_loss(s, t) if regression else distillation_loss(s, t, cfg.temperature)
                                   for s, t in pairs]).mean()
        hidden = hidden_state_loss(list(zip(learnt, taught, strict=True)), inputs[0], inputs[1], logits)
        loss = loss_logits + cfg.hidden_loss_weight * hidden
        losses = {"loss_logits": float(loss_logits.detach()), "loss_hidden": float(hidden.detach())}
        if cfg.label_loss_weight:
            label = torch.stack([task_loss(s[:len(labels)], labels) for s, _ in pairs]).mean()
            loss = loss + cfg.label_loss_weight * label
            losses["loss_label"] = float(label.detach())
        (loss * scale).backward()
        return {"loss": loss.item()} | losses


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
    With `config.init` "activations" the factors are first refitted to the inputs of `config.init_batches` batches
    of `loader` (fit_to_activations). CompressionError (naming the setting) for ranks that do not fit the point."""
    compression = Compression.from_dict(config.compression())
    model = decompose(dense.cpu(), compression)
    if config.init == "activations" and loader is not None:  # without data (epochs 0, no loader): the weights' fit
        fit_to_activations(dense.cpu(), model, input_covariances(dense.cpu(), loader, config.init_batches))
    model = model.to(device)
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


@torch.no_grad()
def input_covariances(dense: NasPruneForSequenceClassification, loader: Iterable[Mapping[str, torch.Tensor]],
                      batches: int) -> dict[factors.Matrix, torch.Tensor]:
    """E[x xᵀ] of each weight matrix's input x (float64, in x in) over the real tokens of `batches` of `loader`."""
    sums: dict[factors.Matrix, torch.Tensor] = {}
    real: dict[str, torch.Tensor] = {}
    by_call = {("attention", "_qkv"): ("query", "key", "value"), ("attention", "_output"): ("dense",),
               ("ffn", "_up"): ("intermediate",), ("ffn", "_down"): ("output",)}
    layout = {(m.layer, m.name): m for m in model_layout(dense) if m.width}
    patched = []

    def spy(block: torch.nn.Module, method: str, matrices: list[factors.Matrix]) -> Callable[..., torch.Tensor]:
        original = getattr(block, method)

        def call(x: torch.Tensor, *args: Any) -> torch.Tensor:  # the projections read x (B, T, in) first
            rows = x.detach().double()[real["mask"]]  # (N, in)
            for matrix in matrices:
                sums[matrix] = sums.get(matrix, 0) + rows.T @ rows
            return original(x, *args)
        return call

    for index, layer in enumerate(dense.model.layers):  # the dense projections run as F.linear of their weights
        for (block_name, method), names in by_call.items():
            matrices = [layout[index, n] for n in names if (index, n) in layout]
            if matrices:
                block = getattr(layer, block_name)
                block.__dict__[method] = spy(block, method, matrices)
                patched.append((block, method))
    tokens = 0
    try:
        with static_runs(dense):
            dense.eval()
            for index, batch in enumerate(loader):
                if index >= batches:
                    break
                ids, mask = batch["input_ids"].cpu(), batch.get("attention_mask")
                real["mask"] = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.cpu().bool()
                tokens += int(real["mask"].sum())
                types = batch.get("token_type_ids")
                dense.model(ids, None if mask is None else mask.cpu(), None if types is None else types.cpu())
    finally:
        for block, method in patched:
            del block.__dict__[method]
    return {m: total / max(1, tokens) for m, total in sums.items()}


def _roots(covariance: torch.Tensor, damping: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """C^½ and C^-½ of a covariance, damped by `damping` x its mean eigenvalue (so that it is invertible)."""
    values, vectors = torch.linalg.eigh(covariance)
    values = values.clamp_min(0) + damping * values.clamp_min(0).mean()
    return (vectors * values.sqrt()) @ vectors.T, (vectors * values.rsqrt()) @ vectors.T


@torch.no_grad()
def fit_to_activations(dense: NasPruneForSequenceClassification, model: NasPruneForSequenceClassification,
                       covariances: dict[factors.Matrix, torch.Tensor]) -> None:
    """Refit `model`'s factors (decomposed from `dense`) to what each matrix computes on real inputs, not to its
    weights: min ‖X(W - Ŵ)‖ instead of ‖W - Ŵ‖. A pretrained matrix's spectrum is flat, its inputs' is not.
    lowrank: Ŵ = [W C^½]_r C^-½ (whitened SVD; exact at full rank). The bank protocols keep the shared U and V of
    the Tucker decomposition and refit each block's core by least squares in its inputs' metric; tucker then spans
    the refitted cores with `bank` shared ones (truncated SVD) and refits each block's mixing in that metric too."""
    dtype = next(model.parameters()).dtype
    small = model.model
    if small.bank is None:
        for m, cov in covariances.items():
            target = _projection(model, m)
            weight = _projection(dense, m).weight.detach().double()  # (out, in)
            root, inverse = _roots(cov)
            u, s, vh = torch.linalg.svd(weight @ root, full_matrices=False)
            rank = target.down.shape[0]
            scale = s[:rank].sqrt()
            target.up.copy_((u[:, :rank] * scale).to(dtype))
            target.down.copy_(((scale[:, None] * vh[:rank]) @ inverse).to(dtype))
        return
    bank = small.bank
    hidden_factor, width_factor = bank.hidden_factor.double(), bank.width_factor.double()
    hidden = hidden_factor.shape[0]
    cores = bank.block_cores().detach().double().clone()  # (n, d, d)
    metrics: dict[int, tuple[bool, torch.Tensor]] = {}  # block: (outward, its error's metric in core space)
    eye = torch.eye(hidden, dtype=torch.float64)
    for m, cov in covariances.items():
        padded = torch.zeros(hidden, m.blocks * hidden, dtype=torch.float64)
        padded[:, :m.width] = _dense_weight(dense, m)  # (H, w)
        for k in range(m.blocks):
            block = padded[:, k * hidden:(k + 1) * hidden]  # (H, D)
            if m.outward:  # y = W_b c, c (D) on the width side: M = UᵀW_b C V (VᵀCV)⁻¹
                part = torch.zeros(hidden, hidden, dtype=torch.float64)
                end = min(hidden, m.width - k * hidden)
                part[:end, :end] = cov[k * hidden:k * hidden + end, k * hidden:k * hidden + end]
                part += 1e-3 * part.diagonal().mean() * eye
                gram = width_factor.T @ part @ width_factor
                cores[m.first + k] = torch.linalg.solve(gram, (hidden_factor.T @ block @ part @ width_factor).T).T
            else:  # y = x W_b, x (H) on the hidden side: M = (UᵀCU)⁻¹ UᵀC W_b V
                damped = cov + 1e-3 * cov.diagonal().mean() * eye
                gram = hidden_factor.T @ damped @ hidden_factor
                cores[m.first + k] = torch.linalg.solve(gram, hidden_factor.T @ damped @ block @ width_factor)
            metrics[m.first + k] = (m.outward, gram)
    if bank.mixing is None:
        bank.cores.copy_(cores.to(dtype))
        return
    # the bank: `bank` shared cores spanning the refitted ones (truncated SVD), then each block's mixing refitted
    # by least squares in its own metric (Σ_j P_bj C_j closest to its core where its inputs are)
    count = bank.mixing.shape[1]
    shared = torch.linalg.svd(cores.flatten(1), full_matrices=False)[2][:count].reshape(count, *cores.shape[1:])
    mixing = cores.flatten(1) @ shared.flatten(1).T  # the plain projection (for a block no input reached)
    for index, (outward, gram) in metrics.items():
        weighted = shared @ gram if outward else gram @ shared  # (bank, d, d)
        products = torch.einsum("jde,kde->jk", shared, weighted)
        target = torch.einsum("jde,de->j", weighted, cores[index])
        products += 1e-9 * products.diagonal().mean() * torch.eye(count, dtype=torch.float64)
        mixing[index] = torch.linalg.solve(products, target)
    bank.mixing.copy_(mixing.to(dtype))
    bank.cores.copy_(shared.to(dtype))


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
