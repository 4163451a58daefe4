"""Request and response bodies of the HTTP API (pydantic), kept apart from the database tables.

Field names and defaults follow the `nasprune search` flags, so a CLI call and a POST /searches body read alike:
`--max-length 16 --evaluations 6` is `{"max_length": 16, "budget": {"evaluations": 6}}`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from supernet.settings import (
    DEFAULT_SEARCH_EXAMPLES,
    DEFAULT_VALIDATION_LIMIT,
    EVALUATION_DTYPES,
    RunSpec,
    TrainingConfig,
)

_STRICT = ConfigDict(extra="forbid")


class CustomTaskIn(BaseModel):
    """A user's dataset: for each split, an uploaded dataset's id (POST /datasets) or a CSV, TSV or JSONL file
    under an allowed data root (relative paths: under data_root)."""

    model_config = _STRICT

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    train_file: str | None = Field(None, min_length=1, max_length=1000)
    test_file: str | None = Field(None, min_length=1, max_length=1000)
    train_dataset: str | None = Field(None, min_length=1, max_length=64, description="an uploaded dataset's id")
    test_dataset: str | None = Field(None, min_length=1, max_length=64, description="an uploaded dataset's id")
    text_columns: list[str] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    label_column: str = Field("label", min_length=1, max_length=200)
    task_type: Literal["classification", "regression"] = "classification"

    @model_validator(mode="after")
    def _one_source_per_split(self) -> CustomTaskIn:
        for split in ("train", "test"):
            if (getattr(self, f"{split}_file") is None) == (getattr(self, f"{split}_dataset") is None):
                raise ValueError(f"give exactly one of {split}_file (a path) and {split}_dataset (an uploaded "
                                 "dataset's id)")
        return self


class BudgetIn(BaseModel):
    model_config = _STRICT

    epochs: float = Field(TrainingConfig.epochs, gt=0, le=100,
                          description="training epochs (may be fractional): the first three quarters fine-tune the "
                                      "full model, the rest train the supernet's sub-networks")
    evaluations: int = Field(100, ge=1, le=100_000, description="distinct sub-networks to evaluate")
    time_limit_s: float | None = Field(None, gt=0, le=30 * 24 * 3600, description="search wall-clock limit")
    train_limit: int | None = Field(None, ge=1, description="cap on training examples")
    validation_limit: int | None = Field(
        DEFAULT_VALIDATION_LIMIT, ge=1,
        description="cap on validation examples (a seeded random subset; null: the whole split): the search "
                    "evaluates every sub-network it tries on them")
    search_examples: int | None = Field(
        DEFAULT_SEARCH_EXAMPLES, ge=1,
        description="validation examples the search ranks each sub-network on (a seeded subset of the capped "
                    "split; null: all of it); the best of them (two non-dominated layers) are measured again on "
                    "the whole capped split and their front kept")
    refine_epochs: float = Field(0, ge=0, le=10,
                                 description="after the search, fine-tune each Pareto-front point at its own size "
                                             "for this many epochs (may be fractional) on the task's labels (0: "
                                             "off); downloads then serve the refined models. Costs about this many "
                                             "epochs of training per front point, at the point's size")
    refine_budgets: list[float] = Field(
        default_factory=list, max_length=16,
        description="refine only the points a user would download (needs refine_epochs > 0): for each fraction "
                    "of the full model's params in (0, 1], the front point within it that is best on validation "
                    "(e.g. [0.5, 0.33]); empty: every front point")


class LatencyIn(BaseModel):
    model_config = _STRICT

    batch_size: int = Field(32, ge=1, le=4096)
    seq_len: int | None = Field(None, ge=1, le=8192, description="default: max_length")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")


class SearchCreate(BaseModel):
    """POST /searches. Everything but `model` and `task` has the CLI's default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("minilm", min_length=1, max_length=1000,
                       description="'minilm', a local folder under an allowed model root, or a hub id")
    task: str | CustomTaskIn = Field("glue/rte", description="a GLUE name ('glue/rte') or a custom task object")
    data_dir: str | None = Field(None, max_length=1000, description="GLUE folder (classic TSV layout)")
    space: str = Field(RunSpec.space, description="search space: importance (default), uniform, per_layer or layers")
    objectives: list[str] = Field(default_factory=lambda: ["error", "params"], min_length=1, max_length=8)
    optimizer: str = "nsga2"
    budget: BudgetIn = Field(default_factory=BudgetIn)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    max_length: int = Field(128, ge=8, le=8192)
    batch_size: int = Field(32, ge=1, le=4096)
    eval_batch_size: int = Field(64, ge=1, le=4096)
    latency: LatencyIn = Field(default_factory=LatencyIn)
    params: Literal["encoder", "total"] = "encoder"
    evaluation_dtype: Literal[EVALUATION_DTYPES] = Field(
        "auto", description="precision the search ranks sub-networks in; auto: bfloat16 where the worker's CPU has "
                            "it natively (about 2-2.5 x faster), else float32; the front's figures are float32")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200,
                                        description="also accepted as the Idempotency-Key header")

    @field_validator("objectives", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """Accept "error,params" as the CLI does."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class Links(BaseModel):
    self: str
    trials: str
    pareto: str
    logs: str
    cancel: str
    refinements: str


class Progress(BaseModel):
    stage: str | None
    epoch: int | None
    step: int | None
    total_steps: int | None
    evaluations_done: int
    evaluations_total: int | None
    hypervolume: float | None
    elapsed_s: float | None = Field(description="seconds since the latest run started (to its end if ended)")
    eta_s: float | None = Field(description="estimated seconds left in the current stage")


class SearchRead(BaseModel):
    id: str
    status: str
    cancel_requested: bool
    attempts: int
    worker_id: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    progress: Progress
    request: dict[str, Any]
    links: Links


class SearchPage(BaseModel):
    items: list[SearchRead]
    total: int
    offset: int
    limit: int


class TrialRead(BaseModel):
    index: int
    config: dict[str, Any]
    objectives: dict[str, float]
    validation: dict[str, float]
    params: dict[str, int]
    macs: int
    latency_ms: float
    elapsed_s: float


class TrialPage(BaseModel):
    items: list[TrialRead]
    total: int
    offset: int


class RefinedRead(BaseModel):
    """A front point after refining (fine-tuning at its own size): its figures and how it was trained."""

    validation: dict[str, float]
    test: dict[str, float]
    train_s: float = Field(description="seconds spent fine-tuning the point")
    kept: bool = Field(True, description="whether the refined model is at least as good as the slice on validation, "
                                         "and so what the downloads serve (else the slice)")
    settings: dict[str, Any] = Field(description="the refining settings (epochs, learning_rate, ..., seed)")


class RefineCreate(BaseModel):
    """POST /searches/{id}/pareto/{point}/refine: how to fine-tune the point (the `nasprune refine` options)."""

    model_config = _STRICT

    epochs: float = Field(1.0, gt=0, le=10, allow_inf_nan=False,
                          description="epochs of fine-tuning at the point's own size (may be fractional)")
    learning_rate: float = Field(1e-4, gt=0, allow_inf_nan=False)


class RefinementRead(BaseModel):
    """A refine of one front point asked for after the search, and where it stands."""

    id: str
    search_id: str
    position: int
    settings: dict[str, Any] = Field(description="epochs and learning_rate")
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RefinementBrief(BaseModel):
    """The latest refinement of a front point, in the front listing."""

    id: str
    status: str
    error: str | None


class PointRead(BaseModel):
    """A front point, with its position, the trial it is and its download links. `refined` is set when the
    point was refined (by the search, budget.refine_epochs > 0, or on demand, POST .../refine): the downloads are
    then the refined model, if it was kept."""

    position: int
    trial_index: int | None
    config: dict[str, Any]
    objectives: dict[str, float]
    validation: dict[str, float]
    test: dict[str, float]
    params: dict[str, int]
    macs: int
    latency_ms: float
    refined: RefinedRead | None = None
    refinement: RefinementBrief | None = Field(None, description="the point's latest on-demand refinement, if any")
    downloads: dict[str, str]


class ParetoRead(BaseModel):
    """The search's front as stored in the database: its points (front_points rows) and the rest (reference,
    hypervolume, normalisation, ...: its fronts row)."""

    model_config = ConfigDict(extra="allow")

    objectives: list[str]
    points: list[PointRead]
    reference: dict[str, Any] | None = None
    hypervolume: float | None = None


class ExportRead(BaseModel):
    """An export job: the archive of a front point in a format, refined or sliced, built by a worker. A download
    answers with this while the job is queued or running (202) or once it failed (500)."""

    id: int
    search_id: str
    position: int
    format: str
    refined: bool = Field(description="built from the point's refined model (else sliced from the supernet)")
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    error: str | None = Field(description="why it failed; asking for the download again retries it")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DatasetRead(BaseModel):
    """An uploaded dataset (its server-side path is not shown: a search names it by id)."""

    id: str
    name: str
    filename: str = Field(description="the uploaded file's name, for display")
    format: str
    size_bytes: int
    num_rows: int
    columns: list[str]
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetRead]
    total: int
    offset: int
    limit: int


class Health(BaseModel):
    status: str
    database: str
    schema_revision: str | None


class FieldErrorRead(BaseModel):
    loc: list[str | int] = Field(description="where: ['body', 'budget', 'epochs'], ['query', 'limit'], ...")
    msg: str
    type: str


class ErrorRead(BaseModel):
    """The body of every error response: `detail` says what is wrong and what to do about it; `errors` lists the
    invalid fields when the request did not match the schema (422s only)."""

    detail: str
    errors: list[FieldErrorRead] | None = None
