"""Request and response bodies of the HTTP API (pydantic), kept apart from the database tables.

The request bodies ARE the settings models (supernet/settings.py, search/settings.py): POST /searches takes the
fields of RunSpec and SearchJob side by side, so a CLI call and a body read alike: `--max-length 16 --evaluations 6`
is `{"max_length": 16, "search": {"evaluations": 6}}`, and every default and bound is the CLI's. GET /options
serves their JSON schema to the web page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from search.settings import SearchSettings
from supernet.settings import CompressConfig, Compute, CustomTask, RefinePointConfig, ShareSpec


class CustomTaskIn(CustomTask):
    """A user's dataset (task: custom/<name>): for each split, an uploaded dataset's id (POST /datasets) or a CSV,
    TSV or JSONL file under an allowed data root (relative paths: under data_root); exactly one of the two."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="the task's name; default: the <name> of task custom/<name>")
    train_file: str | None = Field(None, min_length=1, max_length=1000, description="training file (a path)")
    test_file: str | None = Field(None, min_length=1, max_length=1000, description="test file (a path)")
    train_dataset: str | None = Field(None, min_length=1, max_length=64, description="an uploaded dataset's id")
    test_dataset: str | None = Field(None, min_length=1, max_length=64, description="an uploaded dataset's id")

    @model_validator(mode="after")
    def _one_source_per_split(self) -> CustomTaskIn:
        for split in ("train", "test"):
            if (getattr(self, f"{split}_file") is None) == (getattr(self, f"{split}_dataset") is None):
                raise ValueError(f"give exactly one of {split}_file (a path) and {split}_dataset (an uploaded "
                                 "dataset's id)")
        return self


class SearchRequest(SearchSettings):
    """POST /searches: a RunSpec's fields (model, task, data, training) and a SearchJob's (search, latency, refine)
    side by side, with the CLI's defaults and bounds; `custom` may name uploaded datasets."""

    custom: CustomTaskIn | None = Field(None, description="the custom task's data (task: custom/<name>)")
    compute: Compute = Field(default_factory=Compute,
                             description="where the job runs (device) and the precision it trains in; its "
                                         "refinements run the same way")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200,
                                        description="also accepted as the Idempotency-Key header")


class ShareRequest(ShareSpec):
    """POST /shares: `nasprune share`'s settings (the model, the task and its data, how the unshared model is
    fine-tuned first: `training`, and `share`: the groups and the recovery), with `custom` naming uploaded datasets
    and `compute` where it runs. The shared model a share makes is a search's model as "share:<id>"."""

    custom: CustomTaskIn | None = Field(None, description="the custom task's data (task: custom/<name>)")
    compute: Compute = Field(default_factory=Compute, description="where the job runs and the precision it trains in")


class RefineCreate(RefinePointConfig):
    """POST /searches/{id}/pareto/{point}/refine: how to fine-tune the point (the `nasprune refine` options)."""


class CompressCreate(CompressConfig):
    """POST /searches/{id}/pareto/{point}/compress: how to compress the point (the `nasprune compress` options).
    Strict types: a number must be a JSON number (not "1" or true), as the schema says; a job is known by its
    settings."""

    model_config = ConfigDict(strict=True)


class Links(BaseModel):
    self: str
    trials: str
    pareto: str
    logs: str
    cancel: str
    refinements: str
    compressions: str


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
    attempts: int = Field(description="runs of this search lost to a dead worker (no heartbeat for stale_after_s) "
                                      "and taken back: 0 while its first run goes, 1 once a second worker resumed "
                                      "it; at NASPRUNE_MAX_ATTEMPTS it fails. The log's \"attempts N\" is this "
                                      "number. A worker that shuts down cleanly gives its job back without one.")
    worker_id: str | None
    device: str | None = Field(None, description="where its latest run ran: cpu, or cuda:N and the GPU's name")
    error: str | None = Field(description="why it failed, one line (paths as the request gave them)")
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
    dynamics: dict[str, Any] | None = Field(
        None, description="a sub-network that changes with its input (token_keep or exit_threshold in its config): "
                          "expected_macs over the validation inputs at their own lengths, mean_tokens after each "
                          "kept layer (token elimination) and mean_exit_layer, the mean 1-based kept layer the "
                          "inputs leave after (early exits)")


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


class RefinementRead(BaseModel):
    """A refine of one front point asked for after the search, and where it stands."""

    id: str
    search_id: str
    position: int
    settings: dict[str, Any] = Field(description="the refine settings: epochs, learning_rate, weight_decay, "
                                                 "warmup_ratio")
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    error: str | None
    device: str | None = Field(None, description="where its latest run ran: cpu, or cuda:N and the GPU's name")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RefinementBrief(BaseModel):
    """The latest refinement of a front point, in the front listing."""

    id: str
    status: str
    error: str | None


class CompressedRead(BaseModel):
    """What a compression made: the compressed model's exact size and cost, and how it scores, beside the point it
    came from."""

    params: dict[str, int] = Field(description="the compressed model's parameters (encoder, embeddings, total, ...)")
    point_params: dict[str, int] = Field(description="the point's own parameters, for comparison")
    macs: int = Field(description="MACs of one example of seq_len tokens")
    seq_len: int
    expected_macs: float | None = Field(None, description="MACs per example over the validation split's real lengths")
    validation: dict[str, float]
    test: dict[str, float] | None = None
    point_validation: dict[str, float] | None = Field(None, description="the point's own validation metrics")
    train_s: float = Field(description="seconds spent decomposing and recovering")
    source: str = Field(description="what was compressed: the point's refined model, or its slice of the supernet")


class CompressionRead(BaseModel):
    """A compression of one front point asked for after the search, and where it stands; once it succeeded, its
    figures (`result`) and its download."""

    id: str
    search_id: str
    position: int
    settings: dict[str, Any] = Field(description="the compress settings: protocol, rank, bank, embedding_rank, "
                                                 "epochs, learning_rate, ...")
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    error: str | None
    step: int | None = Field(None, description="recovery steps done (optimizer steps), as it runs")
    total_steps: int | None = Field(None, description="recovery steps in all")
    device: str | None = Field(None, description="where its latest run ran: cpu, or cuda:N and the GPU's name")
    result: CompressedRead | None = None
    download: str | None = Field(None, description="where to download the compressed model (once it succeeded)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SharedRead(BaseModel):
    """What a succeeded share made: the shared model's unique parameters beside the unshared model's, its metrics
    (at one ODE step per layer, and validation at every step count), the unshared model's, and the tying."""

    params: dict[str, int]
    teacher_params: dict[str, int] = Field(description="the unshared model's parameters")
    macs: int
    seq_len: int
    metrics: dict[str, dict[str, float]] = Field(description="validation and test at one step per layer")
    validation_by_ode_steps: dict[str, dict[str, float]] = Field(
        description="validation metrics at each number of ODE steps a search may choose")
    teacher_metrics: dict[str, dict[str, float]] = Field(description="the unshared model's validation and test")
    tying: dict[str, Any] = Field(description="the layer each shared block started from, and every candidate's loss")
    train_s: float = Field(description="seconds of fine-tuning, tying and recovery")


class ShareRead(BaseModel):
    """A share asked for (POST /shares) and where it stands; once it succeeded, its figures (`result`), its
    download, and the name a search gives it as its model."""

    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    cancel_requested: bool
    attempts: int = Field(description="runs lost to a dead worker and taken back")
    request: dict[str, Any] = Field(description="the share's settings (spec) and where it runs (compute)")
    error: str | None
    stage: str | None = Field(None, description="what it is doing: fine-tuning the unshared model, tying the "
                                                "layers, recovery by distillation, evaluation")
    step: int | None = Field(None, description="training steps done in the current stage")
    total_steps: int | None = Field(None, description="training steps of the current stage")
    device: str | None = Field(None, description="where its latest run ran: cpu, or cuda:N and the GPU's name")
    result: SharedRead | None = None
    model: str | None = Field(None, description="once it succeeded: a search's `model` for it (share:<id>)")
    download: str | None = Field(None, description="where to download the shared model (once it succeeded)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class PointRead(BaseModel):
    """A front point, with its position, the trial it is and its download links. `refined` is set when the
    point was refined (by the search, refine.epochs > 0, or on demand, POST .../refine): the downloads are
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
    measured_latency_ms: float | None = Field(
        None, description="the point's model timed by the search on its worker at the latency table's shape (static "
                          "points; the reference has the full model's): the check on latency_ms, the prediction")
    dynamics: dict[str, Any] | None = Field(None, description="as on trials")
    relative: dict[str, float | None] = Field(
        default_factory=dict, description="against the full model (the front's reference): params, macs and "
        "expected_macs as shares of its, speedup (its predicted latency / the point's), measured_speedup (the same "
        "from measured_latency_ms), validation_share and "
        "test_share of its main metric, normalised_retention on test ((metric - majority) / (full - majority))")
    knobs: dict[str, list[dict[str, Any]]] | None = Field(
        None, description="the point's runtime knobs turned after the search (search.knobs): for exit_threshold, "
        "token_keep_scale and ode_steps, every setting with its validation metrics, params, macs, latency_ms and "
        "dynamics, measured like the search's trials; null for a point without one")
    refined: RefinedRead | None = None
    refinement: RefinementBrief | None = Field(None, description="the point's latest on-demand refinement, if any")
    compressions: list[CompressionRead] = Field(default_factory=list,
                                                description="the point's compressions, newest first")
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
    device: str | None = Field(None, description="where its latest run ran: cpu, or cuda:N and the GPU's name")
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
    label_column: str | None = Field(None, description="the label column the upload was checked in, if any")
    task_type: str | None = Field(None, description="what that column was checked as: classification or regression")
    label_counts: dict[str, int] | None = Field(None, description="rows per class, in class order (classification)")


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
    loc: list[str | int] = Field(description="where: ['body', 'training', 'epochs'], ['query', 'limit'], ...")
    msg: str
    type: str


class ErrorRead(BaseModel):
    """The body of every error response: `detail` says what is wrong and what to do about it; `errors` lists the
    invalid fields when the request did not match the schema (422s only)."""

    detail: str
    errors: list[FieldErrorRead] | None = None
