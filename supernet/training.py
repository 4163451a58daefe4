"""Supernet training with the sandwich rule and in-place distillation; plain fine-tuning is k = 0.

Each step trains the full network on the labels, then the smallest and k random sub-networks on the
full network's (detached) logits: T²·KL(student/T ‖ teacher/T) for classification, MSE for regression,
optionally mixed with the label loss (Yu & Huang, "Universally Slimmable Networks and Improved Training
Techniques", ICCV 2019; Klein et al., TMLR 2024). Gradients of all of them are accumulated before one
AdamW step. Checkpoints hold everything needed to continue exactly where a run stopped.

With exits (`TrainingConfig.exits`, COST-EFF: Shen et al., EMNLP 2022) every loss is taken at every exit of the
network that runs (`model(..., all_exits=True)`): the full network learns the labels at each of its exits, and each
sampled sub-network distils the full network's *final* logits into each of its exits, plus the labels; the exits'
losses are averaged alike or by depth (`exit_loss_weighting`). While they
train, gradient equilibrium (`gradient_equilibrium`) rescales what reaches each layer from the exits after it.
With `detach_exits` (DeeBERT) the exit heads learn on detached hidden states instead (`detached_exits`): the
backbone's gradients, clipping included, are those of a run without exits.

A run that diverges (a NaN or infinite loss, or weights that are no longer finite) stops with `TrainingDiverged`
before it writes another checkpoint: a model that predicts nothing must not be searched over, kept or served, and
the user needs to hear which setting to change rather than get a front of ties.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .devices import autocast
from .files import atomic_path
from .importance import task_loss, weigh_exits
from .model import Supernet
from .settings import TrainingConfig
from .space import SearchSpace, TokenEliminationSpace

log = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]


class TrainingDiverged(ValueError):
    """Training produced a NaN or infinite loss, or weights that are not finite; the message says at which step and
    which setting to lower."""


def count_nonfinite(model: torch.nn.Module) -> tuple[int, int]:
    """(weights that are NaN or inf, all weights) of `model`: one device sync for the whole model."""
    params = list(model.parameters())
    if not params:
        return 0, 0
    bad = torch.stack([(~torch.isfinite(p.detach())).sum() for p in params]).sum()
    return int(bad.item()), sum(p.numel() for p in params)


@dataclass
class TrainState:
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    step: int = 0  # optimizer steps done
    total_steps: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per optimizer step


@contextmanager
def forward_outputs(modules: Iterable[torch.nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Each output of `modules`' forward calls while open, in the order they run (hidden states (B, T, H) for a
    model's layers): what recovery by distillation matches against the teacher's."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in modules]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def hidden_state_loss(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Mean over `pairs` of (student, teacher) hidden states (B, T, H) of their squared difference, averaged over the
    real tokens only (the mask, in `like`'s dtype and device): what recovery by distillation matches besides the
    logits."""
    weights = (torch.ones(input_ids.shape, dtype=like.dtype, device=like.device) if attention_mask is None
               else attention_mask.to(like.dtype))
    return sum(((s - t).square().mean(-1) * weights).sum() / weights.sum() for s, t in pairs) / max(1, len(pairs))


Inputs = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # input_ids, attention_mask, token_type_ids


def augmented(inputs: Inputs, copies: int, rate: float, generator: torch.Generator) -> Inputs:
    """The batch followed by `copies` copies of it in which each word piece is, with probability `rate`, replaced by
    a word piece drawn from the batch's own: TinyBERT's task-data augmentation (Jiao et al., 2020) reduced to what
    needs no tokenizer or masked LM. The first and last real token of each row ([CLS], [SEP]), any piece equal to
    them and padding stay. The teacher answers the copies, so a small training set (MRPC's 3.7k pairs) gives the
    student many more inputs to learn it on; they carry no labels."""
    ids, mask, types = inputs
    if copies == 0:
        return inputs
    rows = ids.shape[0]
    present = (mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool))
    ends = torch.zeros_like(present)
    ends[:, 0] = True
    ends[torch.arange(rows, device=ids.device), present.sum(dim=1).clamp(min=1) - 1] = True
    words = present & ~torch.isin(ids, ids[ends])
    pool = ids[words]
    repeated = ids.repeat(copies, 1)
    if pool.numel():
        draw = (torch.rand(repeated.shape, generator=generator) < rate).to(ids.device) & words.repeat(copies, 1)
        picks = pool[torch.randint(pool.numel(), repeated.shape, generator=generator).to(ids.device)]
        repeated = torch.where(draw, picks, repeated)

    def stacked(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.cat([t, t.repeat(copies, 1)])

    return torch.cat([ids, repeated]), stacked(mask), stacked(types)


def distillation_inputs(inputs: Inputs, settings: Any, rng: random.Random) -> Inputs:
    """A recovery step's inputs: the batch, and its augmented copies when `settings.augment_copies` asks for them
    (drawn from the trainer's checkpointed `rng`, so a resumed run draws as the uninterrupted one)."""
    if not settings.augment_copies:
        return inputs
    generator = torch.Generator().manual_seed(rng.randrange(2**62))
    return augmented(inputs, settings.augment_copies, settings.augment_rate, generator)


def recovery_training(settings: Any, seed: int) -> TrainingConfig:
    """The trainer's settings for a recovery by distillation (compress, share): `settings`' epochs and optimiser,
    no sandwich (one model learns a frozen teacher)."""
    return TrainingConfig(epochs=settings.epochs, learning_rate=settings.learning_rate,
                          weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio,
                          num_random_subnets=0, seed=seed)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-place distillation (Hinton et al., 2015): T²·KL(teacher/T ‖ student/T); MSE for regression."""
    if student.shape[-1] == 1:
        return F.mse_loss(student, teacher)
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by `scale`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` unchanged, with its gradient multiplied by `scale` on the way back."""
    return _ScaleGradient.apply(x, scale)


@contextmanager
def gradient_equilibrium(model: Supernet) -> Iterator[None]:
    """Gradient equilibrium (Li et al., "Improved Techniques for Training Adaptive Deep Networks", ICCV 2019), as
    COST-EFF trains its exits: while the context is open, with E kept layers and layer l the l-th of them (0-based),
    the gradient reaching l's output from its own exit is scaled by 1/(E-l) and the one from the next layer by
    (E-l-1)/(E-l). By induction, layer l's output then receives the *mean* of the gradients of the exits at or
    after it, 1/(E-l)·Σ_{k>=l} ∂L_k, instead of their sum: without it the deep exits' gradients pile up in the
    shallow layers and drown the shallow exits' own. Exit heads and the main head keep their full gradients.

    Implemented with hooks, so the modules stay untouched and the scaling exists only while exits train: a forward
    hook on each layer's FFN (the last block of a layer, run by its plain and its token-eliminating forward alike)
    scales the whole output by (E-l-1)/(E-l), and a pre-hook on exit head l scales its input by a further
    1/(E-l-1), which makes the exit branch's factor 1/(E-l). The position l is read from `model.active_layers` at
    each call, so sub-networks that drop layers count their own kept layers."""
    def position(index: int) -> tuple[int, int]:
        return model.active_layers.index(index), len(model.active_layers)

    def layer_output(index: int) -> Callable[..., torch.Tensor | None]:
        def hook(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
            if index not in model.active_layers:
                return None
            at, kept = position(index)
            return None if at == kept - 1 else scale_gradient(output, (kept - at - 1) / (kept - at))
        return hook

    def exit_input(index: int) -> Callable[..., tuple[torch.Tensor, ...]]:
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            at, kept = position(index)  # the forward runs an exit only after a kept layer that is not the last
            return args if at == kept - 1 else (scale_gradient(args[0], 1.0 / (kept - at - 1)), *args[1:])
        return hook

    handles = [layer.ffn.register_forward_hook(layer_output(i)) for i, layer in enumerate(model.layers)]
    handles += [head.register_forward_pre_hook(exit_input(i)) for i, head in enumerate(model.exit_heads)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def detached_exits(model: Supernet) -> Iterator[None]:
    """While open, every exit head reads its layer's hidden state detached, so the exits' losses train the heads and
    nothing else: DeeBERT's second stage (Xin et al., ACL 2020: the backbone fine-tuned first, the exit heads then on
    the frozen backbone) run alongside the first, in one training. A pre-hook, like gradient_equilibrium's."""
    def detach(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0].detach(), *args[1:])

    handles = [head.register_forward_pre_hook(detach) for head in model.exit_heads]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _decay_groups(model: torch.nn.Module, weight_decay: float, learning_rate: float,
                  exit_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW's groups: weight decay on matrices only; with `exit_scale` != 1, the exit heads' parameters in groups
    of their own at that multiple of the learning rate (the schedule scales every group alike)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        exit_head = exit_scale != 1.0 and "exit_heads." in name
        groups.setdefault((param.ndim < 2 or "norm" in name, exit_head), []).append(param)
    return [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr": learning_rate * (exit_scale if exit_head else 1.0)}
            for (no_decay, exit_head), params in sorted(groups.items())]


def _same_supernet(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a checkpoint's supernet config is the model's. One written before supernets could have exit heads
    has no `exits` key: it had none, and a job resumed after an upgrade must not fail for that."""
    return stored == current or {"exits": False} | stored == current


class SupernetTrainer:
    """Runs the epoch loop over `loader` (an iterable of batches with a length). If `generator` drives
    the loader's shuffling it is re-seeded every epoch, so a resumed run sees the same order."""

    def __init__(self, model: Supernet, space: SearchSpace, loader: Iterable[Batch], config: TrainingConfig, *,
                 generator: torch.Generator | None = None, checkpoint_path: str | Path | None = None,
                 on_step: Callable[[TrainState], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 should_checkpoint: Callable[[], bool] | None = None,
                 on_plain_end: Callable[[Supernet], None] | None = None, progress: bool = True,
                 description: str = "supernet training",
                 learning_rate_setting: str = "training.learning_rate",
                 dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(loader, Sized) or len(loader) == 0:
            raise ValueError("the training loader is empty")
        self.model, self.space, self.loader, self.config = model, space, loader, config
        self.generator = generator
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.on_step, self.should_stop, self.should_checkpoint = on_step, should_stop, should_checkpoint
        self.on_plain_end = on_plain_end
        self.progress, self.description = progress, description  # the progress bar's label
        self.learning_rate_setting = learning_rate_setting  # the setting a diverged run tells the user to lower
        # mixed precision of the forward passes (supernet.devices.training_dtype); the model's weights, gradients and
        # the optimizer's moments stay float32, so bfloat16 needs no loss scaling
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.exits = config.exits
        if self.exits and not getattr(model, "exits", False):
            raise ValueError("training.exits trains exit heads, and this model has none (build the supernet with "
                             "exits, e.g. load_supernet_from_pretrained(..., exits=True))")
        self._regression = False  # float labels seen: a diverged run may owe it to their scale too
        accumulation = config.gradient_accumulation
        self.steps_per_epoch = math.ceil(len(loader) / accumulation)
        total = max(1, math.ceil(config.epochs * self.steps_per_epoch))
        # plain steps first (at least one sandwich step is left); each phase has its own warm-up and decay. With
        # k = 0 the whole run is plain fine-tuning: one phase, one schedule.
        self.plain_steps = min(total - 1, round(config.plain_fraction * total)) if config.num_random_subnets else 0
        self.state = TrainState(total_steps=total)
        torch.manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        self.optimizer = torch.optim.AdamW(
            _decay_groups(model, config.weight_decay, config.learning_rate,
                          config.exit_learning_rate_scale if config.exits else 1.0), lr=config.learning_rate)
        plain = self.plain_steps  # the first phase; the sandwich phase is [plain, total)

        def phase(step: int, start: int, end: int) -> float:
            step, length = step - start, end - start
            warmup = int(config.warmup_ratio * length)
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (length - step) / max(1, length - warmup))

        def linear(step: int) -> float:
            return phase(step, 0, plain) if step < plain else phase(step, plain, total)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear)
        self._checkpoint_requested = False

    # -- one step -------------------------------------------------------------------------------------------
    def _forward_backward(self, batch: Batch, scale: float) -> dict[str, float]:
        if not self.exits:
            shaping = nullcontext()
        else:
            shaping = detached_exits(self.model) if self.config.detach_exits else gradient_equilibrium(self.model)
        with shaping, self.autocast():
            return self._sandwich(batch, scale)

    def autocast(self) -> Any:
        """The forward passes' precision context (a no-op in float32)."""
        return autocast(self.device, self.dtype)

    def compute_record(self) -> dict[str, str]:
        """What the training record says of how it ran (the caller adds the device and peak memory)."""
        return {"precision": str(self.dtype).removeprefix("torch.")}

    def _logits(self, inputs: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
        """(B, C) logits, or with exits (E, B, C): every kept layer's exit, the main head's last."""
        return self.model(*inputs, all_exits=True) if self.exits else self.model(*inputs)

    def _label_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task loss, with exits over every exit (`_over_exits`)."""
        if not self.exits:
            return task_loss(logits, labels)
        return self._over_exits(torch.stack([task_loss(exit_logits, labels) for exit_logits in logits]))

    def _over_exits(self, losses: torch.Tensor) -> torch.Tensor:
        """One loss from every exit's (E,), shallowest first: their weighted mean (importance.weigh_exits says why a
        mean); with detached exits the last layer's at full weight, as without exits, plus each exit head's own,
        which reaches nothing but that head."""
        if self.config.detach_exits:
            return losses[-1] + losses[:-1].sum()
        return weigh_exits(losses, self.config.exit_loss_weighting)

    def _student_loss(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A sub-network's loss: distillation from the full network's final logits (B, C) plus the weighted label
        loss; with exits, at every exit of `student` (E, B, C), weighed over them like the label loss."""
        cfg = self.config

        def at_exit(logits: torch.Tensor) -> torch.Tensor:
            loss = distillation_loss(logits, teacher, cfg.temperature)
            if cfg.label_loss_weight:
                loss = loss + cfg.label_loss_weight * task_loss(logits, labels)
            return loss

        if not self.exits:
            return at_exit(student)
        return self._over_exits(torch.stack([at_exit(logits) for logits in student]))

    def _sandwich(self, batch: Batch, scale: float) -> dict[str, float]:
        model, cfg = self.model, self.config
        inputs = (batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        labels = batch["labels"]
        self._regression = labels.is_floating_point()
        model.reset_super_network()
        logits = self._logits(inputs)
        loss = self._label_loss(logits, labels)
        (loss * scale).backward()
        losses = {"loss_full": loss.item()}
        if cfg.num_random_subnets == 0 or self.state.step < self.plain_steps:
            return losses
        teacher = (logits[-1] if self.exits else logits).detach()  # the full network's final answer
        floor = cfg.sample_floor
        # elimination-aware: the random members also draw a keep schedule (the teacher pass never eliminates)
        sampler = TokenEliminationSpace(self.space) if cfg.token_elimination else self.space
        subnets = [self.space.smallest(floor)] + [sampler.sample(self.rng, floor)
                                                  for _ in range(cfg.num_random_subnets)]
        total = 0.0
        for sub in subnets:
            model.set_sub_network(sub)
            sub_loss = self._student_loss(self._logits(inputs), teacher, labels)
            (sub_loss * scale).backward()
            total += sub_loss.item()
        model.reset_super_network()
        losses["loss_subnets"] = total / len(subnets)
        return losses

    def _optimizer_step(self, pending: int) -> None:
        accumulation = self.config.gradient_accumulation
        if pending != accumulation:  # a short last group of an epoch: undo the 1/accumulation scaling
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.mul_(accumulation / pending)
        if self.exits and self.config.detach_exits:  # the backbone clipped as without exits, the heads on their own
            heads = {id(p) for p in self.model.exit_heads.parameters()}
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if id(p) not in heads],
                                           self.config.max_grad_norm)
            torch.nn.utils.clip_grad_norm_(self.model.exit_heads.parameters(), self.config.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _end_plain_phase(self) -> None:
        """Run the hook (e.g. importance reordering, which permutes weights), then start the sandwich phase
        with fresh optimizer moments (they belong to the old order) and checkpoint, so a resume never repeats it."""
        if self.on_plain_end is not None:  # may draw from the loader's generator: epochs are re-seeded anyway
            self.on_plain_end(self.model)
        self.model.train()
        self.optimizer.state.clear()
        self.save_checkpoint()

    # -- divergence ---------------------------------------------------------------------------------------------
    def _diverged(self, step: int, detail: str) -> TrainingDiverged:
        hint = f"lower {self.learning_rate_setting} (now {self.config.learning_rate:g})"
        if self._regression:
            hint += " or scale the task's regression labels down"
        return TrainingDiverged(f"{self.description} diverged at step {step} of "
                                f"{self.state.total_steps}: {detail}; {hint}")

    def _check_losses(self, sums: Mapping[str, float]) -> None:
        """Before the optimizer step: the losses are floats already (`.item()` per micro-batch), so this costs
        nothing, and a NaN gradient never reaches the weights or the optimizer's moments."""
        for key, value in sums.items():
            if not math.isfinite(value):
                what = ("the sub-networks' loss" if key == "loss_subnets" else
                        "the full network's loss" if self.config.num_random_subnets else "the loss")
                raise self._diverged(self.state.step + 1, f"{what} is {value}")

    def check_weights(self) -> None:
        """TrainingDiverged if any weight is NaN or inf. Run before every checkpoint, at every epoch's end and at
        the run's end (not every step: each check is a device sync), so a checkpoint never holds a diverged
        model."""
        bad, total = count_nonfinite(self.model)
        if bad:
            raise self._diverged(self.state.step, f"{bad:,} of {total:,} weights are NaN or inf")

    # -- the loop -------------------------------------------------------------------------------------------
    def request_checkpoint(self) -> None:
        """Ask for a checkpoint after the current optimizer step (e.g. from a signal handler)."""
        self._checkpoint_requested = True

    def train(self) -> TrainState:
        state, accumulation = self.state, self.config.gradient_accumulation
        self.model.train()
        bar = tqdm(total=state.total_steps, initial=state.step, desc=self.description, disable=not self.progress)
        pending, sums = 0, {}
        while state.step < state.total_steps and not state.stopped:
            if self.generator is not None:
                self.generator.manual_seed(self.config.seed * 1_000_003 + state.epoch)
            finished_epoch = True
            for index, batch in enumerate(self.loader):
                if index < state.batch_in_epoch:
                    continue
                for key, value in self._forward_backward(batch, 1.0 / accumulation).items():
                    sums[key] = sums.get(key, 0.0) + value
                pending += 1
                state.batch_in_epoch = index + 1
                if pending < accumulation and state.batch_in_epoch < len(self.loader):
                    continue
                self._check_losses(sums)
                self._optimizer_step(pending)
                state.step += 1
                state.history.append({k: v / pending for k, v in sums.items()} | {"step": state.step})
                pending, sums = 0, {}
                if state.step == self.plain_steps:
                    self._end_plain_phase()
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in state.history[-1].items() if k != "step"})
                if self.on_step is not None:
                    self.on_step(state)
                every = self.config.checkpoint_every_steps
                requested = self._checkpoint_requested or (self.should_checkpoint and self.should_checkpoint())
                if requested or (every and state.step % every == 0):
                    self.save_checkpoint()
                if self.should_stop is not None and self.should_stop():
                    state.stopped = True
                if state.step >= state.total_steps or state.stopped:
                    finished_epoch = state.batch_in_epoch == len(self.loader)
                    break
            if finished_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
                if state.step < state.total_steps:
                    self.save_checkpoint()  # at least once per epoch
        bar.close()
        self.model.eval()
        self.save_checkpoint()  # checks the weights, with or without a checkpoint file
        return state

    # -- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(self.state),
            "training_config": self.config.to_dict(),
            "supernet_config": self.model.config.to_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_python": self.rng.getstate(),
        } | ({"rng_cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        """Write the checkpoint atomically (supernet.files), so a job resumed after a crash never reads a torn one.
        The weights are checked first (TrainingDiverged), also when there is no checkpoint file to write: every
        epoch's end and the run's end pass here."""
        self._checkpoint_requested = False
        self.check_weights()
        path = Path(path) if path else self.checkpoint_path
        if path is None:
            return None
        with atomic_path(path) as tmp:
            torch.save(self.checkpoint(), tmp)
        log.info("checkpoint at step %d written to %s", self.state.step, path)
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> TrainState:
        """Restore model, optimizer, scheduler, progress and RNG state to continue a run exactly."""
        path = Path(path) if path else self.checkpoint_path
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        data = torch.load(path, weights_only=True, map_location="cpu")  # onto any device: load_state_dict moves
        if not _same_supernet(data["supernet_config"], self.model.config.to_dict()):
            raise ValueError(f"{path}: checkpoint belongs to a different supernet")
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.state = TrainState(**data["state"])
        self.state.stopped = False
        torch.set_rng_state(data["rng_torch"])
        if self.device.type == "cuda" and "rng_cuda" in data:  # dropout on the GPU draws from the GPU's generator
            torch.cuda.set_rng_state(data["rng_cuda"], self.device)
        version, internal, gauss = data["rng_python"]
        self.rng.setstate((version, tuple(internal), gauss))
        return self.state
