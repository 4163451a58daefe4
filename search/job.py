"""A whole search job in a run folder: supernet training, search, test re-evaluation, front and plot.

The CLI and the service's workers call the same `run_search_job`. Files it adds to the run folder:
    search.json    the SearchConfig and latency shape of the search
    trials.jsonl   one line per evaluated sub-network, appended as soon as it is done (resume reads it)
    front.json     the Pareto front with validation and test metrics, and the full model's figures
    pareto.png     the front over all trials
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supernet.evaluation import evaluate
from supernet.run import Run, RunSpec, train_run
from supernet.training import TrainState

from .latency import load_or_calibrate
from .objectives import Measurements, figures_dict, objective_values, resolve_objectives
from .plot import plot_front
from .runner import SearchConfig, SearchResult, Trial, run_search

log = logging.getLogger(__name__)

SEARCH_FILE, TRIALS_FILE, FRONT_FILE, PLOT_FILE = "search.json", "trials.jsonl", "front.json", "pareto.png"


@dataclass
class LatencyShape:
    batch_size: int = 32
    seq_len: int | None = None  # None: the run's max_length
    device: str = "cpu"


@dataclass
class SearchJob:
    search: SearchConfig = field(default_factory=SearchConfig)
    latency: LatencyShape = field(default_factory=LatencyShape)
    params_kind: str = "encoder"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchJob:
        return cls(search=SearchConfig(**data["search"]), latency=LatencyShape(**data["latency"]),
                   params_kind=data.get("params_kind", "encoder"))


def read_trials(folder: str | Path) -> list[Trial]:
    """Trials stored in a run folder; a torn last line (a crash mid-write) is ignored."""
    path = Path(folder) / TRIALS_FILE
    if not path.is_file():
        return []
    trials = []
    for line in path.read_text().splitlines():
        try:
            trials.append(Trial.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError):
            log.warning("%s: skipping an unreadable line", path)
    return trials


def _identity(job: dict[str, Any]) -> dict[str, Any]:
    """What makes two searches the same search: everything but the budget, which a rerun may raise."""
    search = {k: v for k, v in job["search"].items() if k not in ("evaluations", "time_limit_s")}
    return job | {"search": search}


def _rewrite_trials(folder: Path, trials: list[Trial]) -> None:
    path = folder / TRIALS_FILE
    if not path.is_file():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in trials))
    os.replace(tmp, path)


def _append_trial(folder: Path, trial: Trial) -> None:
    with open(folder / TRIALS_FILE, "a") as f:
        f.write(json.dumps(trial.to_dict()) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _test_metrics(run: Run, supernet, sub, test_batches: dict[str, list]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split, batches in test_batches.items():
        values = evaluate(supernet, batches, run.task.spec, sub=sub)
        prefix = "" if len(test_batches) == 1 else f"{split}/"
        metrics.update({f"{prefix}{k}": v for k, v in values.items()})
    return metrics


def _point(trial_like: dict[str, Any], test: dict[str, float]) -> dict[str, Any]:
    return {key: trial_like[key] for key in ("config", "objectives", "validation", "params", "macs", "latency_ms")
            } | {"test": test}


def write_front(run: Run, result: SearchResult, measurements: Measurements, names: list[str]) -> dict[str, Any]:
    """Re-evaluate the front (and the full model) on the test split and write front.json + pareto.png."""
    supernet = measurements.supernet
    # Tokenised and collated once, then reused for every front point and the full model.
    test_batches = {split: list(run.batches(split)) for split in run.task.test}
    points = [_point(trial.to_dict(), _test_metrics(run, supernet, trial.config, test_batches))
              for trial in result.front]
    full = supernet.full_config()
    full_objectives = objective_values(resolve_objectives(names), full, measurements)
    reference = _point({"config": full.to_dict(), "objectives": full_objectives,
                        **figures_dict(measurements.reference())},
                       _test_metrics(run, supernet, None, test_batches))
    front = {
        "task": run.task.spec.name, "main_metric": run.task.spec.main_metric, "objectives": names,
        "points": points, "reference": reference, "majority_baseline": run.task.majority_baseline,
        "hypervolume": result.hypervolume, "hypervolume_history": result.hypervolume_history,
        "normalisation": {"lower": result.bounds[0], "upper": result.bounds[1],
                          "reference_point": result.reference_point},
        "evaluations": len(result.trials),
    }
    tmp = run.folder / f".{FRONT_FILE}.tmp"
    tmp.write_text(json.dumps(front, indent=2))
    os.replace(tmp, run.folder / FRONT_FILE)
    plot_front(front, [t.to_dict() for t in result.trials], run.folder / PLOT_FILE)
    return front


def run_search_job(spec: RunSpec, job: SearchJob, folder: str | Path, *, progress: bool = True,
                   on_train_step: Callable[[TrainState], None] | None = None,
                   on_trial: Callable[[Trial, SearchResult], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> SearchResult | None:
    """Train (or resume) the supernet, search (or resume), then write the front. None if stopped early."""
    folder = Path(folder)
    state = train_run(spec, folder, progress=progress, on_step=on_train_step, should_stop=should_stop)
    if state.stopped:
        return None
    search_file = folder / SEARCH_FILE
    if search_file.is_file() and _identity(json.loads(search_file.read_text())) != _identity(job.to_dict()):
        raise ValueError(f"{folder} holds a different search; choose another output folder")
    search_file.write_text(json.dumps(job.to_dict(), indent=2))
    run = Run(folder, spec)
    supernet = run.load_supernet()
    seq_len = job.latency.seq_len or spec.max_length
    space = run.space(supernet.config)
    table = load_or_calibrate(supernet.config, batch_size=job.latency.batch_size, seq_len=seq_len,
                              unit_step=space.unit_step, device=job.latency.device)
    measurements = Measurements(supernet=supernet, validation_batches=run.batches("validation"), task=run.task.spec,
                                latency=table, seq_len=seq_len, params_kind=job.params_kind)

    def record(trial: Trial, current: SearchResult) -> None:
        _append_trial(folder, trial)
        if on_trial is not None:
            on_trial(trial, current)

    trials = read_trials(folder)
    _rewrite_trials(folder, trials)  # drop a line torn by a crash, so appending starts on a clean line
    result = run_search(space, measurements, job.search, trials=trials, on_trial=record,
                        should_stop=should_stop, progress=progress)
    if result.stopped:
        return None
    write_front(run, result, measurements, job.search.objectives)
    return result
