"""The settings of a search: pydantic models without torch, beside supernet/settings.py's.

`SearchConfig` is what the search loop (runner.py) needs, `LatencyShape` the input the latency objective is timed
on, `SearchJob` a whole search job after training (job.py). `SearchSettings` puts a RunSpec and a SearchJob side by
side: it is what `nasprune search` parses its flags into and what POST /searches takes (service/api/schemas.py
adds the service's own fields), and `split()` gives back the two stored halves.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from supernet.settings import (
    COMMA_SEPARATED,
    DEFAULT_SEARCH_EXAMPLES,
    EVALUATION_DTYPES,
    MAX_BATCH,
    MAX_EXAMPLES,
    MAX_LENGTH,
    MAX_SEED,
    RefineConfig,
    RunSpec,
    SettingsModel,
    flag_extra,
)
from supernet.tasks import DataError, glue_task

from .names import OBJECTIVE_NAMES, OPTIMIZER_NAMES

PARAMS_KINDS = ("encoder", "total")
MAX_EVALUATIONS = 100_000
MAX_TIME_LIMIT_S = 30 * 24 * 3600.0
# The optimizers' own options are checked by the optimizers (search/optimizers/), which test their meaning but not
# their size: every number in optimizer_options must be finite and at most this large either way.
MAX_OPTION_MAGNITUDE = 1e9
MAX_OPTION_DEPTH = 4  # an option is a number, a string or a short list (ehvi's reference point), never deeper


def _check_option_numbers(value: Any, where: str) -> None:
    """Refuse NaN, infinity and absurd magnitudes anywhere in an optimizer option (lists and objects included), and
    nesting deeper than any optimizer takes. A loop over a stack, not recursion: a deeply nested body must be a
    422, never a RecursionError."""
    pending = [(value, where, 1)]
    while pending:
        item, name, depth = pending.pop()
        if depth > MAX_OPTION_DEPTH:
            raise ValueError(f"option {where} is nested more than {MAX_OPTION_DEPTH} levels deep")
        if isinstance(item, bool):
            continue
        if isinstance(item, int | float):
            if not math.isfinite(item) or abs(item) > MAX_OPTION_MAGNITUDE:
                raise ValueError(f"option {name} must be a finite number between {-MAX_OPTION_MAGNITUDE:g} and "
                                 f"{MAX_OPTION_MAGNITUDE:g}, got {item!r}")
        elif isinstance(item, list | tuple):
            pending.extend((inner, name, depth + 1) for inner in item)
        elif isinstance(item, dict):
            pending.extend((inner, f"{name}.{key}", depth + 1) for key, inner in item.items())


# The exit threshold gene's default grid (normalised entropy: 0 certain, 1 uniform over the classes). An exit leaves
# an example strictly below the threshold, so 0 is "off". Small steps near 0, where a trained exit's confident
# examples sit; nothing above 0.6 (a two-class prediction at normalised entropy 0.6 is about 85/15, any higher and an
# exit answers close to a coin's odds). Eight values keep the gene as coarse as the keep-rate genes.
DEFAULT_EXIT_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
MAX_EXIT_THRESHOLDS = 32


class SearchConfig(SettingsModel):
    """The search loop's budget and optimizer; every objective is minimised (Deb et al. 2002, NSGA-II)."""

    objectives: Annotated[list[Literal[OBJECTIVE_NAMES]], COMMA_SEPARATED] = Field(
        ["error", "params"], min_length=2, max_length=len(OBJECTIVE_NAMES),
        description="objectives to minimise, at least two distinct ones (comma-separated: error,params)")
    optimizer: Literal[OPTIMIZER_NAMES] = Field(
        "nsga2", description="ehvi needs botorch (pip install 'nasprune[ehvi]')")
    evaluations: int = Field(100, ge=1, le=MAX_EVALUATIONS,
                             description="distinct sub-networks to evaluate (with exit thresholds: structures, each "
                                         "scored at every threshold of the grid from its one pass)")
    ode_compensation: bool = Field(
        False, description="one more 0/1 gene: ODE-compensated layer dropping, where a kept layer followed by m "
                           "dropped ones takes one Euler step of 1 + m along its residual branch (Chen et al., 2023); "
                           "scored on the trained supernet without retraining")
    time_limit_s: float | None = Field(None, gt=0, le=MAX_TIME_LIMIT_S, json_schema_extra=flag_extra("time-limit"),
                                       description="search wall-clock limit in seconds (null: none)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, json_schema_extra=flag_extra("search-seed"),
                             description="the optimizer's seed; null: the training seed")
    optimizer_options: dict[str, Any] = Field(
        {}, max_length=16,
        description="extra keyword options of the optimizer (JSON), e.g. {\"population_size\": 20}; every "
                    f"number in them finite and at most {MAX_OPTION_MAGNITUDE:g} in size")

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"objectives must be distinct, got {value}")
        return value

    @field_validator("optimizer_options")
    @classmethod
    def _finite_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            _check_option_numbers(item, key)
        return value


class LatencyShape(SettingsModel):
    """The input shape the latency objective times each sub-network on."""

    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="latency: batch size")
    seq_len: int | None = Field(None, ge=1, le=MAX_LENGTH, description="latency: tokens per input (null: max_length)")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="latency: device to time on")
    lengths: Literal["fixed", "validation"] = Field(
        "fixed", description="latency: 'fixed': every input has seq_len tokens; 'validation': the task's validation "
                             "examples at their own lengths, sorted into batches of batch_size, each padded to its "
                             "longest (batch 1: every example alone), the time per batch averaged over them")


class DynamicConfig(SettingsModel):
    """Dimensions a sub-network adds at run time, searched beside its structure: what runs depends on each input,
    so their cost is measured over the task's real input lengths (the `expected_macs` objective)."""

    token_elimination: bool = Field(
        False, description="search token-elimination schedules too (TiltedBERT): two more genes, the layer dropping "
                           "starts at and how fast; scored on the trained supernet without retraining")
    keep_floor: float = Field(0.1, gt=0, le=1, description="token elimination: the smallest fraction of an "
                                                           "example's tokens any layer keeps")
    exits: bool = Field(
        False, description="search the early-exit threshold too (COST-EFF): one more gene, the normalised prediction "
                           "entropy below which an example leaves at an exit; trains the supernet with exits "
                           "(training.exits) and needs a classification task; each structure's exits are evaluated "
                           "once, every threshold scored from that pass")
    exit_thresholds: Annotated[list[Annotated[float, Field(ge=0, le=1)]], COMMA_SEPARATED] = Field(
        list(DEFAULT_EXIT_THRESHOLDS), min_length=1, max_length=MAX_EXIT_THRESHOLDS,
        description="early exits: the threshold gene's grid of normalised entropies in [0, 1], 0 (off: full depth) "
                    "included; the default is dense where confident exits sit (near 0) and stops at 0.6, past which "
                    "a two-class exit leaves with a prediction barely better than a coin")

    @field_validator("exit_thresholds")
    @classmethod
    def _threshold_grid(cls, value: list[float]) -> list[float]:
        """Sorted, each once (each a normalised entropy in [0, 1]), 0 present: the gene's upper corner is
        "off", so the largest member of the space runs the full depth as without exits."""
        grid = sorted(set(value))
        if grid[0] != 0.0:
            raise ValueError(f"exit thresholds must include 0 (off: full depth), got {grid}")
        return grid


class SearchJob(SettingsModel):
    """A search after training: the search loop, the latency shape, what the params objective counts, the refining
    of front points, and how sub-networks are ranked."""

    search: SearchConfig = Field(default_factory=SearchConfig)
    latency: LatencyShape = Field(default_factory=LatencyShape)
    params_kind: Literal[PARAMS_KINDS] = Field("encoder", json_schema_extra=flag_extra("params"),
                                               description="which parameter count the params objective uses")
    refine: RefineConfig = Field(default_factory=RefineConfig)
    dynamic: DynamicConfig = Field(default_factory=DynamicConfig)
    # Ranking in a lower precision is faster on CPUs that compute it natively (bench/eval_precision.py); the
    # front's figures are measured again in float32 whatever this says.
    evaluation_dtype: Literal[EVALUATION_DTYPES] = Field(
        "auto", description="precision the search ranks sub-networks in; auto: bfloat16 where the device has it "
                            "natively, else float32; the front's figures are float32 either way")
    search_examples: int | None = Field(
        DEFAULT_SEARCH_EXAMPLES, ge=1, le=MAX_EXAMPLES,
        description="validation examples the search ranks each sub-network on (a seeded subset; null/'all': every "
                    "one); the best of them (two non-dominated layers) are measured again on the whole capped split")

    def shared_problem(self) -> str | None:
        """Why a parameter-shared model cannot be searched so (its search varies the ODE steps and solver instead of
        dropping layers), naming the setting; None if it can (token elimination can: within Euler steps)."""
        if self.search.ode_compensation:
            return ("search.ode_compensation: a parameter-shared model keeps every layer and takes fewer, larger ODE "
                    "steps instead (its own genes)")
        if self.dynamic.exits:
            return "dynamic.exits: early exits do not run on a parameter-shared model's ODE steps yet"
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchJob:
        """Read a stored job; searches stored before these settings existed ranked in float32, on the whole
        split."""
        return cls.model_validate({"evaluation_dtype": "float32", "search_examples": None} | dict(data))


def task_is_regression(spec: RunSpec) -> bool:
    """Whether the run's task is a regression, from its settings alone (False for a task name not known here: it is
    refused on its own)."""
    if spec.custom is not None:
        return spec.custom.task_type == "regression"
    try:
        return glue_task(spec.task).spec.is_regression
    except DataError:
        return False


class SearchSettings(SearchJob, RunSpec):
    """A RunSpec and a SearchJob side by side (their fields do not collide): what `nasprune search` and POST
    /searches take. The search's seed, unless given, is the training seed, so that one seed repeats a job."""

    @model_validator(mode="after")
    def _search_seed(self) -> SearchSettings:
        if self.search.seed is None:
            self.search = self.search.model_copy(update={"seed": self.training.seed})
        return self

    @model_validator(mode="after")
    def _exits_need_classes(self) -> SearchSettings:
        """A regression task is refused before anything trains: an exit leaves when its prediction is confident
        (low entropy over the classes), and a regression output has no classes. (Whether the supernet has exit heads
        is known once it is loaded: search.job.check_exits.)"""
        if self.dynamic.exits and task_is_regression(self):
            raise ValueError(f"dynamic.exits: early exiting needs a classification task (an example leaves at an exit "
                             f"whose prediction entropy over the classes is low); {self.task} is a regression "
                             "task: search without exits")
        return self

    @model_validator(mode="after")
    def _canonical_training(self) -> SearchSettings:
        """Overrides RunSpec's: `dynamic.exits` may yet turn the exits on (below), keeping the exit settings asked
        for; split() makes the RunSpec, which canonicalises them."""
        return self

    @model_validator(mode="after")
    def _exits_are_trained(self) -> SearchSettings:
        """Searching thresholds needs exits that were trained (COST-EFF trains every exit with the backbone): so
        `dynamic.exits` trains the supernet with exits (`training.exits`), unless the caller said outright not to.
        One switch, `--exits`, then runs the whole pipeline; `--train-exits` alone trains exits for a later search."""
        if self.dynamic.exits and not self.training.exits:
            if "exits" in self.training.model_fields_set:
                raise ValueError("dynamic.exits searches exit thresholds, which need a supernet trained with exits; "
                                 "training.exits is false: drop it (dynamic.exits turns it on) or search without exits")
            self.training = self.training.model_copy(update={"exits": True})
        return self

    def split(self) -> tuple[RunSpec, SearchJob]:
        """The two stored halves, each holding the fields its model declares."""
        data = self.model_dump()
        run = RunSpec.model_validate({name: data[name] for name in RunSpec.model_fields})
        job = SearchJob.model_validate({name: data[name] for name in SearchJob.model_fields})
        return run, job
