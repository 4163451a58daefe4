"""A supernet training run end to end: task data, model, importance ordering, sandwich training, and
the run folder that later stages (search, export, the service) read.

Run folder layout:
    run.json        the RunSpec (everything that defines the run)
    checkpoint.pt   the training checkpoint (a rerun with the same folder resumes from it)
    supernet/       final weights (model.safetensors), supernet_config.json and the tokenizer files
    training.json   loss history and validation metrics of the full, middle and smallest sub-networks
    importance.json the importance scores the supernet was ordered by (sorted as its weights are; the
                    `importance` search space places heads and units by them)
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import confine
from .batching import make_batches, token_counts
from .config import SubNetworkConfig, SupernetConfig
from .convert import load_supernet_from_pretrained, load_tokenizer
from .devices import on_device, peak_memory, reset_peak_memory, resolve_device, training_dtype
from .evaluation import evaluate
from .files import atomic_write_json
from .importance import Importance, fisher_importance, reorder_by_importance
from .loading import load_custom_task, load_task
from .model import Supernet
from .settings import Compute, RunSpec
from .space import ImportanceSpace, SearchSpace, make_space
from .tasks import TaskData
from .training import SupernetTrainer, TrainState

log = logging.getLogger(__name__)

RUN_FILE, CHECKPOINT_FILE, SUPERNET_DIR, TRAINING_FILE = "run.json", "checkpoint.pt", "supernet", "training.json"
IMPORTANCE_FILE = "importance.json"


def load_run_task(spec: RunSpec) -> TaskData:
    if spec.custom is not None:
        c = spec.custom
        task = load_custom_task(c.name, c.train_file, c.test_file, text_columns=c.text_columns,
                                label_column=c.label_column, task_type=c.task_type,  # type: ignore[arg-type]
                                split_seed=spec.split_seed, train_limit=spec.train_limit)
    else:
        task = load_task(spec.task, spec.data_dir, split_seed=spec.split_seed, train_limit=spec.train_limit)
    if spec.validation_limit is not None:
        if spec.validation_limit < 1:
            raise ValueError(f"validation_limit must be >= 1, got {spec.validation_limit}")
        task.validation = seeded_subset(task.validation, spec.validation_limit, spec.split_seed)
    return task


def seeded_subset(examples: list, size: int, seed: int) -> list:
    """`size` of `examples` drawn at random with `seed`, in their original order; all of them if there are no
    more than `size`."""
    if size >= len(examples):
        return examples
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), size))]


def save_supernet(model: Supernet, folder: str | Path, tokenizer: Any = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "supernet_config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_supernet(folder: str | Path, device: torch.device | str = "cpu") -> Supernet:
    folder = Path(folder)
    config_file = folder / "supernet_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: no trained supernet here (missing supernet_config.json)")
    model = Supernet(SupernetConfig.from_dict(json.loads(config_file.read_text())))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.to(device).eval()


class Run:
    """Handles on a run folder and the objects built from its spec (task data, tokenizer, batches). `device`: where
    its supernet is loaded and its batches arrive (None: the CPU)."""

    def __init__(self, folder: str | Path, spec: RunSpec | None = None, *,
                 device: torch.device | None = None) -> None:
        self.device = device
        self.folder = Path(folder)
        if spec is None:
            run_file = self.folder / RUN_FILE
            if not run_file.is_file():
                raise FileNotFoundError(f"{self.folder}: not a run folder (missing {RUN_FILE})")
            spec = RunSpec.from_dict(json.loads(run_file.read_text()))
        self.spec = spec
        self._task: TaskData | None = None
        self._tokenizer: Any = None

    @property
    def task(self) -> TaskData:
        if self._task is None:
            self._task = load_run_task(self.spec)
        return self._task

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            trained = self.folder / SUPERNET_DIR
            if (trained / "tokenizer_config.json").is_file():
                self._tokenizer = load_tokenizer(str(trained))
            else:  # the user's model folder: held to the worker's roots like the weights
                self._tokenizer = load_tokenizer(confine.model_source(self.spec.model))
        return self._tokenizer

    def token_lengths(self, sub: SubNetworkConfig, limit: int = 512) -> list[int] | None:
        """For an export of `sub` that drops tokens: the validation examples' token counts (unpadded; at most
        `limit` of them, evenly spread over the sorted counts), which its `set_speedup` solves a schedule over.
        None for a static sub-network."""
        if sub.token_keep is None:
            return None
        lengths = sorted(token_counts(self.batches("validation")))
        if len(lengths) > limit:
            lengths = [lengths[round(i * (len(lengths) - 1) / (limit - 1))] for i in range(limit)]
        return lengths

    def batches(self, split: str, *, shuffle: bool = False, generator: torch.Generator | None = None,
                subset: int | None = None):
        """Batches of "train", "validation" or a test split (a key of `task.test`, e.g. "test"); `subset`: only
        that many of the split's examples, drawn with the run's split seed (the same ones every time)."""
        if split in ("train", "validation"):
            examples = getattr(self.task, split)
        elif split in self.task.test:
            examples = self.task.test[split]
        else:
            raise ValueError(f"unknown split {split!r}; this task has train, validation, {', '.join(self.task.test)}")
        if subset is not None:
            examples = seeded_subset(examples, subset, self.spec.split_seed)
        size = self.spec.batch_size if split == "train" else self.spec.eval_batch_size
        gpu = self.device is not None and self.device.type == "cuda"
        return on_device(make_batches(examples, self.tokenizer, batch_size=size, max_length=self.spec.max_length,
                                      shuffle=shuffle, generator=generator, is_regression=self.task.spec.is_regression,
                                      sort_by_length=split != "train", pin_memory=gpu), self.device)

    def space(self, config: SupernetConfig) -> SearchSpace:
        """The run's search space; the `importance` space with the scores the supernet was ordered by."""
        space = make_space(self.spec.space, config)
        if isinstance(space, ImportanceSpace):
            importance = self.importance()
            if importance is None:
                raise FileNotFoundError(f"{self.folder}: no {IMPORTANCE_FILE} (the importance space needs a supernet "
                                        "ordered by importance 'fisher')")
            space.set_importance(importance)
        return space

    def importance(self) -> Importance | None:
        path = self.folder / IMPORTANCE_FILE
        return Importance.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def load_supernet(self) -> Supernet:
        return load_supernet(self.folder / SUPERNET_DIR, self.device or "cpu")


def same_run(stored: RunSpec, spec: RunSpec) -> bool:
    """Whether `spec` continues the run stored as `stored`: equal, or equal but for validation limits that keep the
    same examples (None and any limit at least the split's size all mean the whole split). Only that case loads the
    task, to learn the split's size."""
    if stored == spec:
        return True
    whole = {"validation_limit": None}
    if stored.model_copy(update=whole) != spec.model_copy(update=whole):
        return False
    size = len(load_run_task(spec.model_copy(update=whole)).validation)
    return min(stored.validation_limit or size, size) == min(spec.validation_limit or size, size)


def spec_differences(stored: RunSpec, spec: RunSpec) -> str:
    """'name: X stored, Y asked' for each setting that differs (training settings as training.name), so a user
    resuming a folder sees which option to repeat, e.g. a default that changed since the run began."""
    return settings_differences(stored.to_dict(), spec.to_dict())


def settings_differences(stored: dict[str, Any], asked: dict[str, Any]) -> str:
    """spec_differences for any nested settings dict (nested keys as outer.inner)."""
    def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    old, new = flat(stored), flat(asked)
    return "; ".join(f"{k}: {old.get(k)!r} stored, {new.get(k)!r} asked"
                     for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))


def train_run(spec: RunSpec, folder: str | Path, *, progress: bool = True,
              on_step: Callable[[TrainState], None] | None = None,
              should_stop: Callable[[], bool] | None = None,
              should_checkpoint: Callable[[], bool] | None = None, compute: Compute | None = None) -> TrainState:
    """Train the supernet of `spec` into `folder`, resuming from its checkpoint if there is one (whatever device
    wrote it). `compute`: where and in which precision (default: auto)."""
    compute = compute or Compute()
    device = resolve_device(compute.device)
    run = Run(folder, spec, device=device)
    run.folder.mkdir(parents=True, exist_ok=True)
    run_file = run.folder / RUN_FILE
    if run_file.is_file() and not same_run(stored := RunSpec.from_dict(json.loads(run_file.read_text())), spec):
        raise ValueError(f"{run.folder} holds a different run ({spec_differences(stored, spec)}); choose another "
                         "output folder, or the settings it was run with")
    run_file.write_text(json.dumps(spec.to_dict(), indent=2))
    finished = run.folder / TRAINING_FILE
    if finished.is_file() and (run.folder / SUPERNET_DIR / "model.safetensors").is_file():
        log.info("%s: training already finished", run.folder)
        return TrainState(**json.loads(finished.read_text())["state"])
    task = run.task
    log.info("task %s: %d train, %d validation examples", task.spec.name, len(task.train), len(task.validation))
    model = load_supernet_from_pretrained(confine.model_source(spec.model), num_labels=task.spec.num_labels,
                                          exits=spec.training.exits).to(device)
    if model.config.shared and (problem := spec.training.shared_problem()):
        raise ValueError(problem)
    reset_peak_memory(device)
    space = make_space(spec.space, model.config)  # importance scores, if the space needs them, come below
    generator = torch.Generator()
    loader = run.batches("train", shuffle=True, generator=generator)
    if spec.importance not in ("fisher", "none"):
        raise ValueError(f"unknown importance method {spec.importance!r}; use 'fisher' or 'none'")
    if isinstance(space, ImportanceSpace) and spec.importance != "fisher":
        raise ValueError("the importance space places heads and units by their scores: it needs importance 'fisher'")

    def order_by_importance(model: Supernet) -> None:
        generator.manual_seed(spec.training.seed)
        importance = fisher_importance(model, loader, max_batches=spec.importance_batches, progress=progress,
                                        # detached exits do not shape the backbone: the last layer's loss alone
                                        exit_weighting=None if spec.training.detach_exits
                                        else spec.training.exit_loss_weighting)
        reorder_by_importance(model, importance)
        scores = importance.sorted()
        # written (atomically) before the checkpoint that follows the ordering
        atomic_write_json(run.folder / IMPORTANCE_FILE, scores.to_dict(), indent=None)
        if isinstance(space, ImportanceSpace):
            space.set_importance(scores)

    fisher = spec.importance == "fisher"
    trainer = SupernetTrainer(model, space, loader, spec.training, generator=generator,
                              checkpoint_path=run.folder / CHECKPOINT_FILE, on_step=on_step,
                              should_stop=should_stop, should_checkpoint=should_checkpoint,
                              on_plain_end=order_by_importance if fisher else None, progress=progress,
                              dtype=training_dtype(compute.precision, device))
    if (run.folder / CHECKPOINT_FILE).is_file():
        state = trainer.load_checkpoint()
        log.info("resuming from step %d of %d", state.step, state.total_steps)
        scores = run.importance()
        if isinstance(space, ImportanceSpace) and scores is not None and state.step >= trainer.plain_steps:
            space.set_importance(scores)  # ordered before the checkpoint; not ordered again
    elif fisher and trainer.plain_steps == 0:  # else scored when the plain steps end (on a trained head)
        order_by_importance(model)
    state = trainer.train()
    if state.stopped:
        return state
    save_supernet(model, run.folder / SUPERNET_DIR, run.tokenizer)
    validation = run.batches("validation")
    summary = {
        name: evaluate(model, validation, task.spec, sub=sub, progress=progress)
        for name, sub in (("full", None), ("middle", space.middle()), ("smallest", space.smallest()))
    }
    (run.folder / TRAINING_FILE).write_text(json.dumps(
        {"validation": summary, "majority_baseline": task.majority_baseline, "history": state.history,
         "state": asdict(state), "compute": trainer.compute_record() | peak_memory(device)}, indent=2))
    return state
