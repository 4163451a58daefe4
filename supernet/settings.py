"""The settings that define a run, a training and a refinement: plain dataclasses without torch.

They live apart from the code that uses them so that what only reads or validates settings (the CLI's argument
parser, the API's request schemas) starts without importing torch, transformers or datasets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The precisions a search may rank sub-networks in (supernet/evaluation.py): auto is bfloat16 where the device
# computes it natively, float32 elsewhere.
EVALUATION_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TrainingConfig:
    # Defaults from bench/supernet_recipes.py on MRPC (bench/RESULTS.md): 3 epochs of plain fine-tuning, Fisher
    # ordering of the fine-tuned model, then 1 sandwich epoch with labels + distillation at T = 1, all at 1e-4
    # (the best rate of plain fine-tuning too).
    epochs: float = 4.0
    # The first `plain_fraction` of the steps fine-tune only the full model (no sub-networks), so that importance
    # is scored on a model that has learned the task, and the sandwich steps start from a good teacher.
    plain_fraction: float = 0.75
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    num_random_subnets: int = 2  # k; 0 means plain fine-tuning of the full model (no sandwich)
    # The sandwich's smallest and random sub-networks keep at least this fraction of each gene's range
    # (SearchSpace.floor): 0 trains the space's very smallest member, which in the importance space is ~1 %
    # of the encoder and no better than the majority class.
    sample_floor: float = 0.0
    temperature: float = 1.0
    # weight of the label loss added to each sub-network's distillation loss: with it the small sub-networks
    # learn the task, not only the full network's logits (bench/RESULTS.md: +0.01-0.02 F1 at 25-40 % on MRPC)
    label_loss_weight: float = 1.0
    seed: int = 0
    checkpoint_every_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.gradient_accumulation < 1 or self.num_random_subnets < 0 or self.temperature <= 0:
            raise ValueError("gradient_accumulation >= 1, num_random_subnets >= 0 and temperature > 0 are required")
        if not 0 <= self.sample_floor <= 1:
            raise ValueError(f"sample_floor must be in [0, 1], got {self.sample_floor}")
        if not 0 <= self.plain_fraction < 1:
            raise ValueError(f"plain_fraction must be >= 0 and < 1, got {self.plain_fraction}")


@dataclass(frozen=True)
class RefineConfig:
    """How front points are refined, and which; epochs = 0 turns refining off."""

    epochs: float = 0.0
    learning_rate: float = 1e-4  # the rate chosen for MiniLM's fine-tuning (bench/RESULTS.md)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    # Which front points a job refines: empty, every one; else, for each budget (a fraction of the full model's
    # params, as the job counts them), the point best on validation within it, the one a user would download
    # (search.job.budget_points). Refining costs an epoch per point, and most of its gain is at the small end:
    # on MRPC's three seeds, refining the picks under 50 % and 33 % gave about half of what refining the whole
    # front gave (test hypervolume 0.159 -> 0.182, against 0.203) for about an eighth of its refining time; on
    # SST-2 seed 0, whose sliced points already match the full model, it changed nothing (bench/RESULTS_NOTES.md).
    budgets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.epochs <= 100:
            raise ValueError(f"refine epochs must be in [0, 100], got {self.epochs}")
        if self.learning_rate <= 0:
            raise ValueError(f"refine learning_rate must be > 0, got {self.learning_rate}")
        budgets = tuple(sorted({float(b) for b in self.budgets}, reverse=True))
        if any(not 0 < b <= 1 for b in budgets):
            raise ValueError(f"refine budgets are fractions of the full model's params in (0, 1], got "
                             f"{list(self.budgets)}")
        if budgets and not self.enabled:
            raise ValueError("refine budgets choose the points to refine: they need refine epochs > 0")
        object.__setattr__(self, "budgets", budgets)  # frozen: normalised once (a JSON list becomes a tuple)

    @property
    def enabled(self) -> bool:
        return self.epochs > 0

    def training(self, seed: int) -> TrainingConfig:
        return TrainingConfig(epochs=self.epochs, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                              warmup_ratio=self.warmup_ratio, num_random_subnets=0, seed=seed)

    def recipe(self) -> dict[str, Any]:
        """What shapes a refined model (not which points get one): a point refined earlier is kept while these
        match."""
        return {k: v for k, v in asdict(self).items() if k != "budgets"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"budgets": list(self.budgets)}


@dataclass
class CustomTask:
    """A user's dataset: CSV, TSV or JSONL files with one or two text columns and a label column."""

    name: str
    train_file: str
    test_file: str
    text_columns: list[str]
    label_column: str = "label"
    task_type: str = "classification"


# The search evaluates each sub-network it tries on the validation split, so the split's size sets its cost. On
# SST-2 (bench/search_budget.py, one seed) searching on 5,000 of its 20,205 sentences found a better front than on
# 500-2,000 (test hypervolume 0.663 against 0.636-0.647) for 1.58 x plain fine-tuning against 1.46 x.
DEFAULT_VALIDATION_LIMIT = 5000

# How many of those validation examples the search ranks each sub-network on (a seeded subset; None: all). Ranking
# 100 sub-networks is the search's whole cost; the best of them are then measured again on the whole (capped)
# split in float32 (search.job.SUBSET_RESCORED_LAYERS), so the figures a user chooses a point by do not come from
# the subset. On MRPC seed 0 (bench/RESULTS_NOTES.md, a 2-core Zen 4 VM) the job fell from 2.78 x to 2.14 x plain
# fine-tuning; its test hypervolume, 0.186 against 0.199, moved less than another search seed moves it (0.170).
DEFAULT_SEARCH_EXAMPLES = 550


@dataclass
class RunSpec:
    model: str = "minilm"
    task: str = "glue/rte"
    data_dir: str | None = None
    custom: CustomTask | None = None
    space: str = "importance"  # bench/RESULTS.md: beats uniform at every size on MRPC
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    train_limit: int | None = None
    # Cap on validation examples (a seeded random subset; None: the whole split). The search evaluates every
    # sub-network it tries on them, so on a large task (SST-2's split is 20,205 sentences) the whole split would
    # cost more than the training: bench/search_budget.py measures what a cap costs in quality.
    validation_limit: int | None = DEFAULT_VALIDATION_LIMIT
    split_seed: int = 0
    importance: str = "fisher"  # or "none"
    importance_batches: int = 8
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        data = {"validation_limit": None} | dict(data)  # written before the cap existed: the whole split
        data["training"] = TrainingConfig(**data.get("training", {}))
        if data.get("custom"):
            data["custom"] = CustomTask(**data["custom"])
        return cls(**data)
