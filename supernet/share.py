"""Parameter-shared models made from unshared ones (`nasprune share`; issue 34).

Chen et al. (Findings of EMNLP 2023) read a parameter-shared encoder as a neural ODE: each layer is an Euler step
of dx/dt = f(x) with f the shared block's residual branch, so the same weights can be integrated in fewer, larger
steps. No shared checkpoint of the models here can be downloaded, so one is made: the unshared encoder's layers
are tied into G blocks (layer i runs block i // (L / G), or the contiguous blocks of any sizes a `mapping` gives);
each block starts from the member layer whose tying loses least (scored greedily, block by block, on a few
training batches against the unshared model); then the tied model
learns the unshared one by distillation: its logits, its hidden states at every ODE time both reach (a step of
size L / K ends at a layer boundary when it is a whole number), and the labels. The paper's pre-training makes
shared models accept larger steps; its stand-in here is step-count augmentation: every training step integrates
with a K drawn from those the tying accepts (SupernetConfig.ode_step_counts: with equal blocks, the multiples
of G up to L), so the model learns to answer at every K the search may choose.
The loop, schedule, checkpoints, resume and divergence checks are the project's trainer's (supernet/training.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import confine, schedules
from .config import SubNetworkConfig
from .convert import load_supernet_from_pretrained, read_model_config
from .counting import count_macs, count_params
from .devices import resolve_device, training_dtype
from .evaluation import evaluate
from .extract import extract, save_folder
from .files import atomic_write_json
from .model import Supernet
from .run import SUPERNET_DIR, Run, load_run_task, load_supernet, train_run
from .settings import Compute, RunSpec, ShareConfig, ShareSpec
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

log = logging.getLogger(__name__)

TEACHER_DIR, MODEL_DIR, WORK_DIR = "teacher", "model", "work"
TYING_FILE, CHECKPOINT_FILE = "tying.json", "share.pt"
# what a sharing run does, in order (the service shows the current one)
STAGES = ("fine-tuning the unshared model", "tying the layers", "recovery by distillation", "evaluation")
TRAINING_STAGES = (STAGES[0], STAGES[2])


def shared_config(teacher: Supernet, groups: tuple[int, ...]):
    """The teacher's config with its layers tied as `groups` says (the block of each layer; ConfigError if they
    cannot be)."""
    config = teacher.config
    if config.shared:
        raise ValueError("the model shares its layers already: nasprune share ties an unshared one")
    if len(set(config.layer_heads)) > 1 or len(set(config.layer_units)) > 1:
        raise ValueError("the model's layers differ in width: tying needs layers of one shape")
    return dataclasses.replace(config, layer_groups=tuple(groups))


@torch.no_grad()
def tie(teacher: Supernet, groups: tuple[int, ...], sources: list[int]) -> Supernet:
    """A shared model whose block g is teacher layer `sources[g]`, with the teacher's embeddings, head and exits."""
    student = Supernet(shared_config(teacher, groups))
    own = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.")}
    missing, unexpected = student.load_state_dict(own, strict=False)
    assert not unexpected and all(k.startswith("blocks.") for k in missing), (missing, unexpected)
    for block, source in zip(student.blocks, sources, strict=True):
        block.load_state_dict(teacher.layers[source].state_dict())
    return student


def stack_modules(model: Supernet) -> list[torch.nn.Module]:
    """The modules whose calls are the stack's steps: the shared blocks (one call per ODE step, each a step's end
    state under Euler), else the layers."""
    return list(model.blocks if model.config.shared else model.layers)


def matched_times(student: Supernet, sub: SubNetworkConfig) -> list[tuple[int, int]]:
    """(student step, teacher layer) pairs at the ODE times both reach: a step ends where the teacher's layer
    t - 1 does when the steps so far add up to a whole t."""
    pairs, time_so_far = [], 0.0
    for position, (_index, step) in enumerate(sub.schedule(student.config)):
        time_so_far += step
        if abs(time_so_far - round(time_so_far)) < 1e-6:
            pairs.append((position, round(time_so_far) - 1))
    return pairs


def integrated(config, steps: int | None, solver: str | None = None) -> SubNetworkConfig:
    full = SubNetworkConfig.full(config)
    return dataclasses.replace(full, ode_steps=steps, ode_solver=solver)


class ShareTrainer(SupernetTrainer):
    """The trainer's loop with one step of its own: the tied student learns the frozen unshared teacher, at a
    sampled step count K (step-count augmentation) or at one step per layer."""

    def __init__(self, student: Supernet, teacher: Supernet, loader: Iterable[Mapping[str, torch.Tensor]],
                 config: ShareConfig, seed: int, **kwargs) -> None:
        self.teacher, self.settings = teacher.eval(), config
        for param in teacher.parameters():
            param.requires_grad_(False)
        self.choices = student.config.ode_step_counts() if config.step_augmentation else [student.config.num_layers]
        self.solvers = [None, "heun"] if config.solver_augmentation else [None]  # None: Euler
        super().__init__(student, None, loader, recovery_training(config, seed),  # type: ignore[arg-type]
                         description="sharing recovery",
                         learning_rate_setting="share.learning_rate", **kwargs)

    def _forward_backward(self, batch: Mapping[str, torch.Tensor], scale: float) -> dict[str, float]:
        with self.autocast():
            return self._share_step(batch, scale)

    def _share_step(self, batch: Mapping[str, torch.Tensor], scale: float) -> dict[str, float]:
        labels = batch["labels"]
        inputs = distillation_inputs((batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")),
                                     self.settings, self.rng)  # the labelled rows first
        self._regression = labels.is_floating_point()
        steps = self.rng.choice(self.choices)
        solver = self.rng.choice(self.solvers) if len(self.solvers) > 1 else None
        sub = integrated(self.model.config, steps, solver)
        with torch.no_grad(), forward_outputs(stack_modules(self.teacher)) as taught:
            target = self.teacher(*inputs)
        with self.model.use(sub), forward_outputs(stack_modules(self.model)) as learnt:
            logits = self.model(*inputs)
        cfg = self.settings
        loss_logits = distillation_loss(logits, target, cfg.temperature)
        # a Heun step ends at the mean of its start and two Euler evaluations, which no hook sees: logits and labels
        pairs = [] if solver else [(learnt[s], taught[t]) for s, t in matched_times(self.model, sub)]
        hidden = hidden_state_loss(pairs, inputs[0], inputs[1], logits) if pairs else logits.new_zeros(())
        label = task_loss(logits[:len(labels)], labels)
        loss = loss_logits + cfg.hidden_loss_weight * hidden + cfg.label_loss_weight * label
        (loss * scale).backward()
        return {"loss": loss.item(), "loss_logits": float(loss_logits.detach()),
                "loss_hidden": float(hidden.detach()), "loss_label": float(label.detach()), "steps": float(steps),
                "heun": float(solver == "heun")}


@torch.no_grad()
def choose_sources(teacher: Supernet, groups: tuple[int, ...], batches: list[Mapping[str, torch.Tensor]],
                   temperature: float = 1.0) -> tuple[list[int], list[list[float]]]:
    """Per block, the member layer whose weights, run at every one of the block's layers, lose least against the
    teacher (distillation loss of the logits on `batches`), chosen block by block with the earlier blocks' choices
    in place and the later blocks at their first layer. Returns the choices and every candidate's loss."""
    members = schedules.block_members(groups, len(groups))
    sources = [layers[0] for layers in members]
    losses: list[list[float]] = []
    for g, layers in enumerate(members):
        scores = []
        for candidate in layers:
            trial = tie(teacher, groups, sources[:g] + [candidate] + sources[g + 1:]).to(
                next(teacher.parameters()).device).eval()
            total = 0.0
            for batch in batches:
                inputs = (batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
                total += float(distillation_loss(trial(*inputs), teacher(*inputs), temperature))
            scores.append(total / max(1, len(batches)))
        sources[g] = layers[min(range(len(layers)), key=scores.__getitem__)]
        losses.append(scores)
    return sources, losses


def teacher_for(spec: ShareSpec, folder: Path, *, progress: bool, should_stop: Callable[[], bool] | None,
                compute: Compute, on_step: Callable[[TrainState], None] | None = None) -> Supernet | None:
    """The unshared model the shared one learns: `spec.model` as it is (share.teacher_epochs 0), or fine-tuned on
    the task first (plain fine-tuning, resumable, in <folder>/teacher); None if stopped."""
    device = resolve_device(compute.device)
    if spec.share.teacher_epochs == 0:
        task = load_run_task(spec)
        return load_supernet_from_pretrained(confine.model_source(spec.model),
                                             num_labels=task.spec.num_labels).to(device).eval()
    data = {k: v for k, v in spec.to_dict().items() if k != "share"}
    plain = RunSpec.model_validate(data | {
        "space": "per_layer", "importance": "none",
        "training": spec.training.to_dict() | {"epochs": spec.share.teacher_epochs, "num_random_subnets": 0}})
    state = train_run(plain, folder / TEACHER_DIR, progress=progress, on_step=on_step, should_stop=should_stop,
                      compute=compute)
    if state.stopped:
        return None
    return load_supernet(folder / TEACHER_DIR / SUPERNET_DIR, device).eval()


def share_run(spec: ShareSpec, folder: str | Path, *, progress: bool = True,
              on_step: Callable[[TrainState], None] | None = None, should_stop: Callable[[], bool] | None = None,
              compute: Compute | None = None, on_stage: Callable[[str], None] | None = None
              ) -> dict[str, Any] | None:
    """Tie `spec.model`'s layers into `spec.share.groups` blocks and recover them on `spec.task` into `folder`
    (teacher/ and work/ beside the result, model/: a model folder `--model` accepts); resumes where a stopped run
    stopped. Returns the model's record (model/subnetwork.json), or None if stopped. `on_step` sees the teacher's
    fine-tuning steps, then the recovery's; `on_stage` is told each stage (STAGES) as it starts."""
    folder = Path(folder)
    stage = on_stage or (lambda _name: None)
    compute = compute or Compute()
    device = resolve_device(compute.device)
    result = folder / MODEL_DIR / "subnetwork.json"
    if result.is_file():
        return json.loads(result.read_text())
    (folder / WORK_DIR).mkdir(parents=True, exist_ok=True)
    settings_file = folder / WORK_DIR / "share_spec.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != spec.to_dict():
        raise ValueError(f"{folder} holds another sharing run; choose another output folder or its settings")
    groups = spec.share.tying(read_model_config(confine.model_source(spec.model)).num_hidden_layers)
    settings_file.write_text(json.dumps(spec.to_dict(), indent=2))
    started = time.perf_counter()
    if spec.share.teacher_epochs:
        stage(STAGES[0])
    teacher = teacher_for(spec, folder, progress=progress, should_stop=should_stop, compute=compute, on_step=on_step)
    if teacher is None:
        return None
    run = Run(folder / WORK_DIR, spec, device=device)
    cfg = spec.share
    generator = torch.Generator()
    loader = run.batches("train", shuffle=True, generator=generator)
    tying_file = folder / WORK_DIR / TYING_FILE
    if tying_file.is_file():
        tying = json.loads(tying_file.read_text())
    else:
        stage(STAGES[1])
        generator.manual_seed(spec.training.seed)
        batches = [b for _, b in zip(range(cfg.init_batches), loader, strict=False)]
        sources, losses = choose_sources(teacher, groups, batches, cfg.temperature)
        tying = {"groups": cfg.groups, "mapping": list(groups), "sources": sources, "candidate_losses": losses}
        atomic_write_json(tying_file, tying, indent=1)
    student = tie(teacher, groups, tying["sources"]).to(device)
    checkpoint = folder / WORK_DIR / CHECKPOINT_FILE
    trainer = ShareTrainer(student, teacher, loader, cfg, spec.training.seed, generator=generator,
                           checkpoint_path=checkpoint, on_step=on_step, should_stop=should_stop, progress=progress,
                           dtype=training_dtype(compute.precision, device))
    if checkpoint.is_file():
        trainer.load_checkpoint(checkpoint)
    stage(STAGES[2])
    if trainer.train().stopped:
        return None
    train_s = time.perf_counter() - started
    stage(STAGES[3])
    student.eval()
    validation = list(run.batches("validation"))
    by_steps = {str(k): evaluate(student, validation, run.task.spec, sub=integrated(student.config, k))
                for k in student.config.ode_step_counts()}
    metrics = {"validation": by_steps[str(student.config.num_layers)]}
    teacher_metrics = {"validation": evaluate(teacher, validation, run.task.spec)}
    tests = {split: list(run.batches(split)) for split in run.task.test}
    for model, into in ((student, metrics), (teacher, teacher_metrics)):
        values: dict[str, float] = {}
        for split, batches in tests.items():  # as search.job.metrics_on_test_splits names them
            prefix = "" if len(tests) == 1 else f"{split}/"
            values |= {f"{prefix}{k}": v for k, v in evaluate(model, batches, run.task.spec).items()}
        if values:
            into["test"] = values
    full = SubNetworkConfig.full(student.config)
    record = {
        "config": full.to_dict(), "params": count_params(student.config).to_dict(),
        "teacher_params": count_params(teacher.config).to_dict(),
        "macs": count_macs(student.config, full, seq_len=spec.max_length), "seq_len": spec.max_length,
        "metrics": metrics, "validation_by_ode_steps": by_steps, "teacher_metrics": teacher_metrics,
        "tying": tying, "share": cfg.to_dict(), "train_s": train_s,
    }
    save_folder(extract(student.cpu(), full), folder / MODEL_DIR, tokenizer=run.tokenizer, record=record)
    checkpoint.unlink(missing_ok=True)
    return record
