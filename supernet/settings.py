"""The settings that define a run, a training and a refinement: pydantic models without torch.

Each default, bound and description is written once, here (and in search/settings.py for the search): the CLI's
flags (service/flags.py), the API's request body (service/api/schemas.py), the stored JSON (`to_dict`) and the web
form (GET /options) are all derived from these models, so they cannot disagree. They live apart from the code that
uses them so that what only reads or validates settings starts without importing torch, transformers or datasets.

A field may carry `json_schema_extra={"flag": ..., "aliases": [...]}`: the CLI flag's name when it is not the
field's name (`--lr` for `learning_rate`), and other names it keeps answering to. `"flag": None` means no flag.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .config import contiguity_problem, tied_groups
from .hardware import DEVICE_PATTERN

# Search spaces by name; supernet/space.py checks that its registry holds exactly these (tests/test_settings.py).
SPACE_NAMES = ("uniform", "per_layer", "layers", "importance")
# The precisions a search may rank sub-networks in (supernet/evaluation.py): auto is bfloat16 where the device
# computes it natively, float32 elsewhere.
EVALUATION_DTYPES = ("auto", "float32", "bfloat16")
IMPORTANCE_METHODS = ("fisher", "none")
TASK_TYPES = ("classification", "regression")
# How the supernet weighs its exits' losses (supernet/importance.py's weigh_exits): alike, or by depth (PABEE).
EXIT_LOSS_WEIGHTINGS = ("mean", "depth")
# The precisions a stage may train in (supernet/devices.py's training_dtype reads them).
TRAINING_PRECISIONS = ("auto", "float32", "bfloat16")

MAX_SEED = 2**31 - 1
MAX_BATCH = 4096
MAX_LENGTH = 8192
MAX_EPOCHS = 100
# Caps that no real use comes near (a hundred million examples, a billion steps) but that keep a typo or a hostile
# request from asking for a job that cannot end, or for numbers that overflow where they are used.
MAX_EXAMPLES = 100_000_000
MAX_STEPS = 1_000_000_000
# Gradient clipping norms above this clip nothing in practice: it is how "no clipping" is asked for.
MAX_GRAD_NORM = 1e9


def split_commas(value: Any) -> Any:
    """A list given as one comma-separated string ('a,b'), as the CLI and the API both accept it."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list field that also takes one comma-separated string ('a,b'), as the CLI and the API both accept it:
# `Annotated[list[...], COMMA_SEPARATED]`.
COMMA_SEPARATED = BeforeValidator(split_commas)


class SettingsModel(BaseModel):
    """Base of every settings model: unknown fields are errors (a typo must not fall back to a default), and so
    are NaN and infinity (no bound holds for them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form (run.json, search.json, the database's request column)."""
        return self.model_dump(mode="json")


def flag_extra(name: str | None, *aliases: str) -> dict[str, Any]:
    return {"flag": name, "aliases": list(aliases)}


class Compute(SettingsModel):
    """Where a stage runs and the precision it trains in: how, not what. A job resumed with other values continues
    the same run (checkpoints load onto any device), so these are not part of a run's or a result's identity."""

    model_config = ConfigDict(frozen=True)

    device: str = Field(
        "auto", pattern=DEVICE_PATTERN,
        description="where training, scoring and evaluation run: auto (a CUDA GPU when one is visible, else the "
                    "CPU), cpu, cuda or cuda:N; in the service, a job runs on the GPU of the worker that takes it")
    precision: Literal[TRAINING_PRECISIONS] = Field(
        "auto", description="training precision: auto (bfloat16 mixed precision on a GPU that computes it natively, "
                            "float32 elsewhere), float32, or bfloat16 (autocast: weights and optimizer stay float32); "
                            "the front's figures are measured in float32 either way")


# Training settings that act only with exits (TrainingConfig.canonical).
EXIT_ONLY_TRAINING = ("exit_learning_rate_scale", "exit_loss_weighting", "detach_exits")


class TrainingConfig(SettingsModel):
    """How the supernet is trained: plain fine-tuning of the full model, importance ordering, then sandwich steps
    (Yu & Huang 2019) with in-place distillation from the full model. The defaults are the recipe
    bench/supernet_recipes.py chose (bench/RESULTS.md has its figures)."""

    epochs: float = Field(4.0, gt=0, le=MAX_EPOCHS,
                          description="training epochs, the plain ones (plain_fraction) included; may be fractional")
    plain_fraction: float = Field(
        0.75, ge=0, lt=1,
        description="share of the training steps that fine-tune only the full model, so that importance is scored "
                    "on a model that has learned the task and the sandwich steps start from a good teacher")
    learning_rate: float = Field(1e-4, ge=0, le=1, json_schema_extra=flag_extra("lr", "learning-rate"),
                                 description="peak learning rate (0 leaves the weights as they are)")
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.06, ge=0, le=1, description="share of the steps that warm the learning rate up")
    gradient_accumulation: int = Field(1, ge=1, le=MAX_BATCH, json_schema_extra=flag_extra("grad-accum"),
                                       description="batches whose gradients are summed before a step")
    max_grad_norm: float = Field(1.0, gt=0, le=MAX_GRAD_NORM,
                                 description="gradient clipping norm (a large one, e.g. 1e9: no clipping)")
    num_random_subnets: int = Field(2, ge=0, le=64,
                                    description="k of the sandwich rule; 0 = plain fine-tuning of the full model")
    sample_floor: float = Field(
        0.0, ge=0, le=1,
        description="the sandwich's smallest and random sub-networks keep at least this fraction of each gene's "
                    "range (0: the space's very smallest member, which can be too small to learn anything)")
    temperature: float = Field(1.0, gt=0, le=1000, description="distillation temperature")
    label_loss_weight: float = Field(
        1.0, ge=0, le=1000,
        description="weight of the label loss added to each sub-network's distillation loss, so that small "
                    "sub-networks learn the task and not only the full network's logits")
    token_elimination: bool = Field(
        False, json_schema_extra=flag_extra("train-token-elimination"),
        description="elimination-aware sandwich: each random sub-network also draws a token-keep schedule (the full "
                    "network, the teacher, and the smallest never drop tokens), for searches with token elimination")
    exits: bool = Field(
        False, json_schema_extra=flag_extra("train-exits"),
        description="early exits (COST-EFF): the supernet gets a small classifier after every layer, trained on the "
                    "labels and on the full network's answers, so that a searched model can answer easy inputs after "
                    "a few layers; needed for searches with an exit threshold")
    exit_learning_rate_scale: float = Field(
        1.0, gt=0, le=1000,
        description="with exits: the exit heads learn at this multiple of the learning rate (fresh heads on a trained "
                    "backbone move little at its rate; DeeBERT trains them in a stage of their own)")
    exit_loss_weighting: Literal[EXIT_LOSS_WEIGHTINGS] = Field(
        "depth",
        description="with exits: how each network's exit losses make one. depth: the k-th kept layer's exit weighs k "
                    "(PABEE), so that the deep exits and the full network give up less to the shallow ones; mean: "
                    "every exit alike (DeeBERT, COST-EFF). bench/RESULTS.md sets the two against each other")
    detach_exits: bool = Field(
        False,
        description="with exits: the exit heads learn on detached hidden states, so the backbone learns only from the "
                    "last layer's losses, as without exits (DeeBERT's two stages at once): the full network keeps a "
                    "static run's accuracy and the exits read what it learned for the last layer; "
                    "exit_loss_weighting then does nothing (each head learns from its own loss)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="training seed (and the search's, unless search_seed)")
    checkpoint_every_steps: int | None = Field(None, ge=1, le=MAX_STEPS,
                                               description="also checkpoint every this many steps")

    def canonical(self) -> TrainingConfig:
        """These settings with the exit-only ones at their defaults when there are no exits: they do nothing then,
        so they must not make two plain runs differ (nor a run stored before a default changed)."""
        if self.exits:
            return self
        defaults = {name: TrainingConfig.model_fields[name].default for name in EXIT_ONLY_TRAINING}
        return self if all(getattr(self, k) == v for k, v in defaults.items()) else self.model_copy(update=defaults)

    def shared_problem(self) -> str | None:
        """Why a parameter-shared model's supernet cannot train so (its sandwich varies ODE steps and the solver),
        naming the setting; None if it can. Torch-free: the API refuses such a request before queueing it."""
        for name in ("token_elimination", "exits"):
            if getattr(self, name):
                return (f"training.{name}: a parameter-shared model trains its ODE steps and solver; "
                        f"elimination-aware training and early exits do not run with them yet")
        return None


class RefineConfig(SettingsModel):
    """How front points are refined (fine-tuned at their own size, on the labels), and which; epochs = 0 turns
    refining off."""

    model_config = ConfigDict(frozen=True)

    epochs: float = Field(
        0.0, ge=0, le=MAX_EPOCHS,
        description="after the search, fine-tune each chosen front point at its own size for this many epochs (may "
                    "be fractional; 0: off); downloads and exports then serve the refined models")
    learning_rate: float = Field(1e-4, gt=0, le=1, json_schema_extra=flag_extra("lr", "learning-rate"))
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.06, ge=0, le=1)
    # Refining costs an epoch per point and most of its gain is at the small end of the front, so a user may
    # refine only the points they would download (bench/RESULTS.md compares the two).
    budgets: Annotated[tuple[Annotated[float, Field(gt=0, le=1)], ...], COMMA_SEPARATED] = Field(
        (), max_length=16,
        description="refine only the points a user would download (needs refine epochs > 0): for each fraction of "
                    "the full model's params in (0, 1], the front point within it that is best on validation "
                    "(e.g. 0.5,0.33); empty: every front point")

    @field_validator("budgets")
    @classmethod
    def _normalise(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        """Largest first, each once: two spellings of one choice are one refine."""
        return tuple(sorted(set(value), reverse=True))

    @model_validator(mode="after")
    def _budgets_need_epochs(self) -> RefineConfig:
        if self.budgets and not self.enabled:
            raise ValueError("refine budgets choose the points to refine: they need refine epochs > 0")
        return self

    @property
    def enabled(self) -> bool:
        return self.epochs > 0

    def training(self, seed: int) -> TrainingConfig:
        return TrainingConfig(epochs=self.epochs, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                              warmup_ratio=self.warmup_ratio, num_random_subnets=0, seed=seed)

    def recipe(self) -> dict[str, Any]:
        """What shapes a refined model (not which points get one): a point refined earlier is kept while these
        match."""
        return {k: v for k, v in self.to_dict().items() if k != "budgets"}


class RefinePointConfig(SettingsModel):
    """An on-demand refine of chosen front points (`nasprune refine`, POST .../pareto/{point}/refine): the recipe
    fields of RefineConfig, with their bounds; at least some training, one epoch unless told."""

    model_config = ConfigDict(frozen=True)

    epochs: float = Field(1.0, gt=0, le=MAX_EPOCHS,
                          description="epochs of fine-tuning at the point's own size (may be fractional)")
    learning_rate: float = RefineConfig.model_fields["learning_rate"]
    weight_decay: float = RefineConfig.model_fields["weight_decay"]
    warmup_ratio: float = RefineConfig.model_fields["warmup_ratio"]

    def config(self) -> RefineConfig:
        return RefineConfig(**self.model_dump())


# The tucker protocol's bank when none is given: with the default rank, about 1/20 of MiniLM's encoder.
DEFAULT_BANK = 24
COMPRESSION_PROTOCOLS = ("tucker", "shared-lowrank", "lowrank")  # supernet/factors.py's PROTOCOLS (a test ties them)


class DistillationSettings(SettingsModel):
    """How a changed model recovers by distillation from the one it came from (logits at a temperature, hidden states,
    labels; supernet.training.recovery_training): what compression and sharing have in common."""

    model_config = ConfigDict(frozen=True)

    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.06, ge=0, le=1)
    temperature: float = Field(1.0, gt=0, le=1000, description="distillation temperature")
    hidden_loss_weight: float = Field(1.0, ge=0, le=1000, description="weight of the hidden-state loss")
    label_loss_weight: float = Field(1.0, ge=0, le=1000, description="weight of the label loss")
    augment_copies: int = Field(
        0, ge=0, le=16,
        description="augmented copies of each training batch the student also learns the teacher on (TinyBERT's "
                    "task-data augmentation, simplified: supernet.training.augmented), for small training sets; "
                    "each copy costs another batch's forward and backward; 0: the training set as it is")
    augment_rate: float = Field(0.15, gt=0, le=1, description="with augment_copies: the share of each copy's word "
                                                               "pieces replaced by others of the batch")

    def to_dict(self) -> dict[str, Any]:
        """Without the augmentation settings while it is off, so the records and keys of recoveries made before it
        existed (compression_key, a share's settings) stay what they were."""
        data = super().to_dict()
        if not self.augment_copies:
            del data["augment_copies"], data["augment_rate"]
        return data


class CompressConfig(DistillationSettings):
    """How a chosen front point is compressed (`nasprune compress`, POST .../pareto/{point}/compress): its encoder's
    matrices factorised (Ren et al., ICLR 2022; supernet/factors.py), then recovered by distillation from the point
    itself (logits, every layer's hidden states, labels) on the task's training split."""

    protocol: Literal[COMPRESSION_PROTOCOLS] = Field(
        "tucker", description="tucker: a bank of shared cores (the most compression); shared-lowrank: shared factors, "
                              "one core per block; lowrank: each matrix its own truncated SVD")
    rank: int = Field(128, ge=1, le=MAX_LENGTH,
                      description="rank d of the factors (at most the hidden size): smaller is smaller and faster")
    bank: int | None = Field(None, ge=1, le=1_000_000, json_schema_extra={"none": f"{DEFAULT_BANK} for tucker"},
                             description=f"tucker only: how many cores the matrix bank holds (default {DEFAULT_BANK}; "
                                         "at most the point's matrix blocks and rank²)")
    embedding_rank: int | None = Field(
        None, ge=1, le=MAX_LENGTH, json_schema_extra={"none": "keep them"},
        description="also factorise the word embeddings at this rank (they hold half of a small model's parameters)")
    epochs: float = Field(3.0, ge=0, le=MAX_EPOCHS,
                          description="epochs of recovery by distillation from the point (0: the decomposition alone)")
    learning_rate: float = Field(
        1e-3, gt=0, le=1, json_schema_extra=flag_extra("lr", "learning-rate"),
        description="the factors have far to go from where they start: at 1e-4 an extreme compression recovers "
                    "much less within an epoch")
    hidden_loss_weight: float = Field(1.0, ge=0, le=1000,
                                      description="weight of the per-layer hidden-state loss (mean squared error)")
    init: Literal["activations", "weights"] = Field(
        "activations",
        description="where recovery starts: activations fits the factors to what each matrix computes on training "
                    "inputs (a whitened SVD; far more accurate at low ranks); weights fits the weights alone (the "
                    "paper's SVD/Tucker, and what epochs 0 without training data gives)")
    init_batches: int = Field(16, ge=1, le=MAX_STEPS,
                              description="training batches whose inputs the activations init reads")

    @model_validator(mode="after")
    def _bank_is_tucker(self) -> CompressConfig:
        if self.protocol != "tucker" and self.bank is not None:
            raise ValueError(f"bank is the tucker protocol's number of cores; {self.protocol} has none")
        if self.protocol == "tucker" and self.bank is None:
            object.__setattr__(self, "bank", DEFAULT_BANK)
        return self

    def compression(self) -> dict[str, Any]:
        """The factorisation (supernet.factors.Compression's fields)."""
        return {k: v for k, v in self.to_dict().items()
                if k in ("protocol", "rank", "bank", "embedding_rank") and v is not None}


class CustomTask(SettingsModel):
    """A user's dataset: CSV, TSV or JSONL files with one or two text columns and a label column."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", json_schema_extra=flag_extra(None),
                      description="the task's name (task: custom/<name>)")
    train_file: str = Field(min_length=1, max_length=1000, description="custom task: training file (.csv, .tsv or "
                                                                        ".jsonl)")
    test_file: str = Field(min_length=1, max_length=1000, description="custom task: test file")
    text_columns: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], COMMA_SEPARATED] = Field(
        ["text"], min_length=1, max_length=2,
        description="custom task: one or two text columns")
    label_column: str = Field("label", min_length=1, max_length=200, description="custom task: label column")
    task_type: Literal[TASK_TYPES] = "classification"

# How many validation examples a run keeps (a seeded random subset; None: the whole split). The search evaluates
# every sub-network it tries on them, so on a large task the whole split would cost more than the training;
# bench/search_budget.py measures what a cap costs in quality (bench/RESULTS.md).
DEFAULT_VALIDATION_LIMIT = 5000

# How many of those the search ranks each sub-network on (a seeded subset; None: all). Ranking is the search's
# whole cost; the best sub-networks are measured again on the whole (capped) split in float32
# (search.job.SUBSET_RESCORED_LAYERS), so the figures a user chooses a point by do not come from the subset.
# bench/RESULTS.md has what this saves and what it costs in front quality.
DEFAULT_SEARCH_EXAMPLES = 550


class RunSpec(SettingsModel):
    """A trained supernet: the model, the task and its splits, and how it is trained (run.json)."""

    model: str = Field("minilm", min_length=1, max_length=1000,
                       description="'minilm', a local folder or a hub id (BERT/RoBERTa/ALBERT family)")
    task: str = Field("glue/rte", min_length=1, max_length=200,
                      description="glue/<name>, or custom/<name> with the custom task's files")
    data_dir: str | None = Field(None, max_length=1000,
                                 description="GLUE folder (classic TSV layout); default $GLUE_DIR or the hub")
    custom: CustomTask | None = Field(None, description="the custom task's files and columns (task custom/<name>)")
    space: Literal[SPACE_NAMES] = Field(
        "importance",
        description="search space; importance (how many heads and units the network keeps, placed by importance "
                    "across layers) beats uniform at every size (bench/RESULTS.md)")
    max_length: int = Field(128, ge=8, le=MAX_LENGTH, description="tokens per example (longer ones are cut)")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="training batch size")
    eval_batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="evaluation batch size")
    train_limit: int | None = Field(None, ge=1, le=MAX_EXAMPLES,
                                    description="cap on training examples (null/'all': every one)")
    validation_limit: int | None = Field(
        DEFAULT_VALIDATION_LIMIT, ge=1, le=MAX_EXAMPLES,
        description="cap on validation examples (a seeded random subset; null/'all': the whole split): the search "
                    "evaluates every sub-network it tries on them")
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the train/validation split")
    importance: Literal[IMPORTANCE_METHODS] = Field(
        "fisher", description="how heads and units are ordered before sandwich training (none: as they are)")
    importance_batches: int = Field(8, ge=1, le=10_000, description="batches the importance scores are taken on")
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="before")
    @classmethod
    def _custom_name(cls, data: Any) -> Any:
        """A custom task's name is the task's: `task: custom/<name>` need not repeat it in `custom`."""
        if isinstance(data, dict) and isinstance(data.get("custom"), dict) and "name" not in data["custom"]:
            task = data.get("task")
            if isinstance(task, str) and task.startswith("custom/"):
                data = dict(data) | {"custom": {"name": task.split("/", 1)[1]} | data["custom"]}
        return data

    @model_validator(mode="after")
    def _custom_matches_task(self) -> RunSpec:
        if self.custom is not None and self.task != f"custom/{self.custom.name}":
            raise ValueError(f"custom describes task custom/{self.custom.name}, but task is {self.task!r}; "
                             f"set task to custom/{self.custom.name}")
        return self

    @model_validator(mode="after")
    def _canonical_training(self) -> RunSpec:
        self.training = self.training.canonical()
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Read a stored run.json or request row: one written before the validation cap existed used the whole
        split, and one written before exits could be weighed by depth weighed them alike."""
        data = {"validation_limit": None} | dict(data)
        if isinstance(data.get("training"), dict):
            data["training"] = {"exit_loss_weighting": "mean"} | data["training"]
        return cls.model_validate(data)


class ShareConfig(DistillationSettings):
    """How an unshared encoder becomes a parameter-shared one (`nasprune share`; Chen et al., Findings of EMNLP 2023):
    its layers tied into `groups` shared blocks, each block started from the member layer whose tying loses least,
    then recovered by distillation from the unshared model (logits, hidden states at the ODE times its steps reach,
    labels), each step running a sampled number of ODE steps so that the shared model accepts fewer, larger ones."""

    groups: int = Field(1, ge=1, le=1024,
                        description="shared blocks: layer i runs block i // (L / G); 1 shares one block across every "
                                    "layer, and G must divide the layers (else give `mapping`)")
    mapping: Annotated[list[Annotated[int, Field(ge=0, le=1023)]], COMMA_SEPARATED] | None = Field(
        None, min_length=2, max_length=1024,
        description="the shared block of each layer, for blocks of unequal sizes (e.g. 0,0,1,1,1,2: contiguous "
                    "blocks numbered in order); sets `groups` to their count. A shared stack of unequal blocks "
                    "takes only the step counts whose steps end on every block's boundary")
    teacher_epochs: float = Field(
        3.0, ge=0, le=MAX_EPOCHS,
        description="plain fine-tuning of the unshared model on the task first (0: the model is fine-tuned already)")
    epochs: float = Field(2.0, gt=0, le=MAX_EPOCHS, description="epochs of recovery by distillation")
    learning_rate: float = Field(1e-4, gt=0, le=1, json_schema_extra=flag_extra("lr", "learning-rate"))
    hidden_loss_weight: float = Field(1.0, ge=0, le=1000,
                                      description="weight of the hidden-state loss at the ODE times both models reach")
    step_augmentation: bool = Field(
        True, description="each training step runs a random number of ODE steps (a multiple of the groups up to "
                          "the layers), so the shared model also answers at fewer steps; off: always one per layer")
    solver_augmentation: bool = Field(
        False, description="each training step also draws the solver, Euler or Heun, so the model learns to answer "
                           "under both (a Heun step learns from the logits and labels: its end state is no layer's)")
    init_batches: int = Field(4, ge=1, le=MAX_STEPS,
                              description="training batches each candidate block is scored on when tying")


    @field_validator("mapping")
    @classmethod
    def _contiguous(cls, value: list[int] | None) -> list[int] | None:
        problem = value is not None and contiguity_problem(tuple(value))
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _groups_of_mapping(self) -> ShareConfig:
        if self.mapping is not None:
            count = self.mapping[-1] + 1
            if "groups" in self.model_fields_set and self.groups != count:
                raise ValueError(f"groups: {self.groups} disagrees with the {count} blocks of `mapping`; give one")
            object.__setattr__(self, "groups", count)  # frozen: the count the mapping implies
        return self

    def tying(self, layers: int) -> tuple[int, ...]:
        """The block each of a model's `layers` layers runs (config.tied_groups: ValueError naming the field)."""
        return tied_groups(layers, self.groups, self.mapping)


class ShareSpec(RunSpec):
    """A sharing job: the model and task (RunSpec's data settings; its training and space settings do not apply)
    and how the layers are tied and recovered."""

    share: ShareConfig = Field(default_factory=ShareConfig)
