"""A whole search job in a run folder: supernet training, search, test re-evaluation, front and plot.

The CLI and the service's workers call the same `run_search_job`; they differ only in the `Store` that keeps the
job's records (search/store.py): the CLI's `FileStore` (trials.jsonl and front.json in the run folder, the default)
or the service's database. What the run folder holds either way:
    search.json    the SearchConfig and latency shape of the search
    pareto.png     the front over all trials
    refined/<n>/   front point n refined (by the job's SearchJob.refine, or on demand by refine_points): an exported
                   model folder, an artifact; the record is the front point's "refined" entry in the store (its
                   validation and test metrics, training time, settings, and "kept": whether it is at least as good
                   as the slice on validation, and so what exports and downloads serve)
and, with a FileStore, trials.jsonl (one line per evaluated sub-network, appended as soon as it is done) and
front.json (the Pareto front with validation and test metrics, and the full model's figures).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import torch

from supernet.config import SubNetworkConfig, SupernetConfig
from supernet.devices import resolve_device, training_dtype
from supernet.evaluation import dtype_name, evaluate, resolve_dtype
from supernet.extract import save_folder, subnetwork_record
from supernet.metrics import error_from_metrics
from supernet.refine import PrunedModel, refine_subnetwork
from supernet.run import Run, settings_differences, train_run
from supernet.settings import Compute, RefineConfig, RunSpec
from supernet.space import ExitSpace, OdeCompensationSpace, SharedSpace, TokenEliminationSpace
from supernet.tasks import TaskSpec
from supernet.training import TrainState

from .knobs import knob_table
from .latency import load_or_calibrate, measure_subnetworks
from .objectives import ExitPasses, Measurements, figures_dict, objective_values, resolve_objectives
from .pareto import distinct_non_dominated, first_layers
from .plot import plot_front
from .records import (
    PLOT_FILE,
    REFINED_DIR,
    SEARCH_FILE,
    SUBNETWORK_FILE,
)
from .runner import SearchResult, Trial, run_search
from .settings import DynamicConfig, SearchJob
from .store import FileStore, Store

log = logging.getLogger(__name__)


def read_trials(folder: str | Path) -> list[Trial]:
    """Trials stored in a run folder's trials.jsonl (`FileStore`); a torn last line (a crash mid-write) is
    ignored."""
    return FileStore(folder).load_trials()


def _identity(job: dict[str, Any]) -> dict[str, Any]:
    """What makes two searches the same search: everything but the budget, which a rerun may raise, and the
    refining after it (a stage of its own: refined points record their settings and are redone if they differ)."""
    search = {k: v for k, v in job["search"].items() if k not in ("evaluations", "time_limit_s")}
    return {k: v for k, v in job.items() if k != "refine"} | {"search": search}


def check_exits(config: SupernetConfig, task: TaskSpec) -> None:
    """Refuse a search of exit thresholds (SearchJob.dynamic.exits) that cannot run, in the user's terms."""
    if task.is_regression:
        raise ValueError(f"dynamic.exits: early exiting needs a classification task (an example leaves at an exit "
                         f"whose prediction entropy over the classes is low); {task.name} is a regression task: "
                         "search without exits")
    if not config.exits:
        raise ValueError("dynamic.exits: this supernet has no exit heads; train it with exits (nasprune search "
                         "--exits trains them, as does --train-exits; API \"dynamic\": {\"exits\": true}) in a new "
                         "output folder, or search without exits")


def metrics_on_test_splits(run: Run, supernet, sub, test_batches: dict[str, list],
                  exits: Mapping[str, ExitPasses] | None = None) -> dict[str, float]:
    """`sub`'s metrics on each test split; with `exits` (one ExitPasses per split), scored from each structure's one
    pass over the exits, as the search scored validation."""
    metrics: dict[str, float] = {}
    for split, batches in test_batches.items():
        if exits is not None and sub is not None:
            values = exits[split].score(sub)[0]
        else:
            values = evaluate(supernet, batches, run.task.spec, sub=sub)
        prefix = "" if len(test_batches) == 1 else f"{split}/"
        metrics.update({f"{prefix}{k}": v for k, v in values.items()})
    return metrics


def _point(trial_like: dict[str, Any], test: dict[str, float]) -> dict[str, Any]:
    """A front.json point; "search_validation" only where the search ranked in another precision or on a
    subset."""
    keys = ("config", "objectives", "validation", "params", "macs", "latency_ms", "dynamics", "search_validation")
    return {key: trial_like[key] for key in keys if key in trial_like} | {"test": test}


# A search that ranked on a validation subset measures its first two non-dominated layers again, not only its
# front: the subset's noise pushes good sub-networks just behind the front. Two layers recover the test front that
# measuring every trial again gives, for a fraction of the evaluations (bench/front_rescoring.py; figures in
# bench/RESULTS.md).
SUBSET_RESCORED_LAYERS = 2


def ranked_subset(search_examples: int | None, validation_size: int) -> int | None:
    """The validation subset a search ranks on: `search_examples`, or None (the whole split) where that many is at
    least the split's size."""
    return search_examples if search_examples is not None and search_examples < validation_size else None


def _front_scored_again(result: SearchResult, measurements: Measurements, names: list[str],
                        validation: list | None) -> tuple[list[dict[str, Any]], Measurements]:
    """The front as dicts with figures in float32 on the whole validation split, and the measurements that took
    them. A search that ranked in a lower precision has its front measured again (what an exported model scores;
    the search's figures stay under "search_validation"); one that ranked on a subset (`validation`: the whole
    split's batches) its first SUBSET_RESCORED_LAYERS non-dominated layers. Exit thresholds of one structure are
    measured together (one pass scores them all): every threshold of each structure with a point in those layers,
    layers peeled by structure, so that a structure's near-copies neither crowd out other structures nor, ranked a
    little too well, hide its own better threshold. The points those figures show dominated are dropped."""
    if measurements.dtype == torch.float32 and validation is None:
        return [trial.to_dict() for trial in result.front], measurements
    candidates = result.front
    structures = [trial.config.pass_structure() for trial in result.trials]
    layers = SUBSET_RESCORED_LAYERS if validation is not None else 1 if len(set(structures)) < len(structures) else 0
    if layers:
        ranked = [[trial.objectives[name] for name in names] for trial in result.trials]
        candidates = [result.trials[i] for i in first_layers(ranked, layers, structures)]
    precise = replace(measurements, dtype=torch.float32, _cache={},
                      validation_batches=measurements.validation_batches if validation is None else validation)
    objectives = resolve_objectives(names)
    points = [{"config": trial.config.to_dict(), "objectives": objective_values(objectives, trial.config, precise),
               **figures_dict(precise.figures(trial.config)), "search_validation": trial.validation}
              for trial in candidates]
    if not points:
        return points, precise
    keep = distinct_non_dominated([[p["objectives"][name] for name in names] for p in points])
    kept = [p for p, k in zip(points, keep, strict=True) if k]
    return sorted(kept, key=lambda p: [p["objectives"][name] for name in names]), precise


def _with_open_exits(points: list[dict[str, Any]], measurements: Measurements,
                     names: list[str]) -> list[dict[str, Any]]:
    """Each exiting point reading only the exits its validation examples left at (Measurements.opened), with the
    figures of that: the same answers for a check less per closed exit and input. A point that lets no one out
    early becomes its structure at full depth, and one that then repeats another point, or is dominated by one
    (a closed exit's head no longer counts), is dropped."""
    objectives = resolve_objectives(names)
    kept: dict[SubNetworkConfig, dict[str, Any]] = {}
    for point in points:
        sub = SubNetworkConfig.from_dict(point["config"])
        opened = measurements.opened(sub)
        if opened != sub:
            figures = {key: value for key, value in point.items() if key != "dynamics"}
            point = figures | {"config": opened.to_dict(),
                               "objectives": objective_values(objectives, opened, measurements),
                               **figures_dict(measurements.figures(opened))}
        kept.setdefault(opened, point)
    points = list(kept.values())
    keep = distinct_non_dominated([[p["objectives"][name] for name in names] for p in points])
    return sorted([p for p, k in zip(points, keep, strict=True) if k],
                  key=lambda p: [p["objectives"][name] for name in names])


def write_front(run: Run, result: SearchResult, measurements: Measurements, names: list[str], *,
                search_examples: int | None = None, store: Store | None = None,
                dynamic: DynamicConfig | None = None) -> dict[str, Any]:
    """Re-evaluate the front (and the full model) on the test split, save it in `store` (default: front.json in
    the run folder) and write pareto.png. `search_examples`: the size of the validation subset `measurements`
    ranked on (None: the whole split). Each point with a runtime knob gets its `knobs` (search.knobs), measured
    like the search's trials; `dynamic`: the search's grid of exit thresholds and keep floor."""
    store = store if store is not None else FileStore(run.folder)
    supernet = measurements.supernet
    ranked = measurements
    # Tokenised and collated once, then reused for every front point and the full model.
    test_batches = {split: list(run.batches(split)) for split in run.task.test}
    search_dtype = dtype_name(measurements.dtype)
    size = len(run.task.validation)
    subset = ranked_subset(search_examples, size)
    chosen, measurements = _front_scored_again(result, measurements, names,
                                               None if subset is None else list(run.batches("validation")))
    chosen = _with_open_exits(chosen, measurements, names)
    # with exits, the points of one structure share its pass over each test split's exits
    exits = ({split: ExitPasses(supernet, batches, run.task.spec) for split, batches in test_batches.items()}
             if measurements.exits else None)
    points = [_point(p, metrics_on_test_splits(run, supernet, SubNetworkConfig.from_dict(p["config"]), test_batches,
                                               exits))
              for p in chosen]
    dynamic = dynamic or DynamicConfig()
    for point in points:
        table = knob_table(SubNetworkConfig.from_dict(point["config"]), ranked,
                           exit_thresholds=tuple(dynamic.exit_thresholds) if ranked.exits else (),
                           keep_floor=dynamic.keep_floor)
        if table:
            point["knobs"] = table
    full = supernet.full_config()
    full_objectives = objective_values(resolve_objectives(names), full, measurements)
    reference = _point({"config": full.to_dict(), "objectives": full_objectives,
                        **figures_dict(measurements.reference())},
                       metrics_on_test_splits(run, supernet, None, test_batches))
    previous = store.load_front()
    _measure_latencies(supernet, measurements.latency, [*points, reference], previous)
    front = {
        "task": run.task.spec.name, "main_metric": run.task.spec.main_metric, "objectives": names,
        "points": points, "reference": reference, "majority_baseline": run.task.majority_baseline,
        "hypervolume": result.hypervolume, "hypervolume_history": result.hypervolume_history,
        "normalisation": {"lower": result.bounds[0], "upper": result.bounds[1],
                          "reference_point": result.reference_point},
        "evaluations": result.evaluations, "trials": len(result.trials),
        "search_dtype": search_dtype,  # the precision the search ranked in; the figures here are float32
        # the validation examples the search ranked on; the figures here are on all `validation_examples`
        "search_examples": subset or size, "validation_examples": size,
    }
    _keep_refined(points, previous)
    store.save_front(front)
    plot_front(front, [t.to_dict() for t in result.trials], run.folder / PLOT_FILE)
    return front


def _measure_latencies(supernet, table, points: list[dict[str, Any]], previous: Mapping[str, Any] | None) -> None:
    """Check the predicted latencies on this machine: each static point's model and the full one (the last of
    `points`) timed side by side (`measured_latency_ms`). A rerun over the same front keeps the timings it has (a
    rerun changes nothing); a front with any new point is timed again, all together."""
    earlier = {} if not previous else {
        json.dumps(p["config"], sort_keys=True): p["measured_latency_ms"]
        for p in [*previous.get("points", []), previous.get("reference") or {}] if "measured_latency_ms" in p}
    subs = [SubNetworkConfig.from_dict(p["config"]) for p in points]
    keys = [json.dumps(p["config"], sort_keys=True) for p in points]
    if all(key in earlier for key, sub in zip(keys, subs, strict=True) if sub.is_static):
        timed = [earlier.get(key) if sub.is_static else None for key, sub in zip(keys, subs, strict=True)]
    else:
        timed = measure_subnetworks(supernet, table, subs, device=next(supernet.parameters()).device)
    for point, ms in zip(points, timed, strict=True):
        if ms is not None:
            point["measured_latency_ms"] = ms


def _keep_refined(points: list[dict[str, Any]], previous: Mapping[str, Any] | None) -> None:
    """Carry the "refined" entries of the stored front over to the points written again at the same position with
    the same sub-network (a resumed or rerun job): their refined/<position>/ models still belong to them."""
    old = previous["points"] if previous is not None else []
    for position, point in enumerate(points):
        if position < len(old) and old[position].get("config") == point["config"] and "refined" in old[position]:
            point["refined"] = old[position]["refined"]


def keeps_refined(task: TaskSpec, refined: Mapping[str, float], sliced: Mapping[str, float]) -> bool:
    """Whether a refined model replaces its slice: at least as good on validation (never chosen on test). A short
    fine-tune can unsettle a large point the supernet already trained well while it lifts the small ones
    (bench/RESULTS.md)."""
    return error_from_metrics(task, refined) <= error_from_metrics(task, sliced)


def _refined_already(point: Mapping[str, Any], folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The point's "refined" entry if it was refined with these settings and its model is still there: a resumed
    or rerun job, or a repeated on-demand refine, does not train it again."""
    refined = point.get("refined")
    if isinstance(refined, dict) and refined.get("settings") == settings and (folder / SUBNETWORK_FILE).is_file():
        return refined
    return None


def budget_points(front: Mapping[str, Any], budgets: Sequence[float], task: TaskSpec,
                  params_kind: str = "encoder") -> list[int]:
    """The positions of the points a user would download at these budgets: for each budget (a fraction of the full
    model's params of `params_kind`), the front point within it that is best on validation, the smaller on a tie
    (bench/scoring.best_under's rule). A budget no point fits picks none; two budgets may pick one point."""
    full = front["reference"]["params"][params_kind]
    points = front["points"]
    chosen = set()
    for budget in budgets:
        within = [i for i, p in enumerate(points) if p["params"][params_kind] <= budget * full + 1e-9]
        if within:
            chosen.add(min(within, key=lambda i: (error_from_metrics(task, points[i]["validation"]),
                                                  points[i]["params"][params_kind])))
        else:
            log.warning("no front point within %g of the full model's %s params: nothing to refine for it",
                        budget, params_kind)
    return sorted(chosen)


def refine_front(run: Run, front: dict[str, Any], supernet, config: RefineConfig, *,
                 positions: Sequence[int] | None = None, progress: bool = True,
                 on_point: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, store: Store | None = None,
                 precision: str = "auto") -> bool:
    """Fine-tune front points at their own size (`refine_subnetwork`) into refined/<position>/, evaluate them on
    validation and test, and record that as each point's "refined" entry in `store` (default: front.json) as soon
    as it is done (so a stopped job resumes at the next one). `positions`: only those points (default: all).
    `on_point(done, total)` reports progress. False if stopped early. Each point trains where `supernet` is, in
    `precision` (supernet.devices.training_dtype); its figures are measured in float32."""
    store = store if store is not None else FileStore(run.folder)
    points = front["points"]
    chosen = list(range(len(points))) if positions is None else list(positions)
    bad = [p for p in chosen if not 0 <= p < len(points)]
    if bad:
        raise ValueError(f"no front point {bad[0]}: the front has points 0 to {len(points) - 1}")
    settings = config.recipe() | {"seed": run.spec.training.seed}
    generator = torch.Generator()
    dtype = training_dtype(precision, next(supernet.parameters()).device)

    @cache
    def data() -> tuple[list, dict[str, list], Any]:
        """Validation and test batches and the training loader, tokenised only if a point needs training."""
        return (list(run.batches("validation")), {split: list(run.batches(split)) for split in run.task.test},
                run.batches("train", shuffle=True, generator=generator))

    for done, position in enumerate(chosen):
        if on_point is not None:
            on_point(done, len(chosen))
        point = points[position]
        folder = run.folder / REFINED_DIR / str(position)
        refined = _refined_already(point, folder, settings)
        if refined is None:
            if should_stop is not None and should_stop():
                return False
            sub = SubNetworkConfig.from_dict(point["config"])
            validation, test_batches, loader = data()
            started = time.perf_counter()
            model = refine_subnetwork(supernet, sub, loader, config, seed=run.spec.training.seed,
                                      generator=generator, should_stop=should_stop, progress=progress, dtype=dtype)
            if model is None:
                return False
            train_s = time.perf_counter() - started
            wrapped = PrunedModel(model).eval()
            metrics = evaluate(wrapped, validation, run.task.spec)
            refined = {"validation": metrics, "test": metrics_on_test_splits(run, wrapped, None, test_batches),
                       "train_s": train_s, "kept": keeps_refined(run.task.spec, metrics, point["validation"]),
                       "settings": settings, "folder": f"{REFINED_DIR}/{position}"}
            record = subnetwork_record(supernet, sub, seq_len=run.spec.max_length,
                                       metrics={"validation": point["validation"], "test": point["test"],
                                                "refined": refined})
            save_folder(model.cpu(), folder, tokenizer=run.tokenizer, record=record)
        store.set_refined(position, point["config"], refined)
        point["refined"] = refined
    if on_point is not None:
        on_point(len(chosen), len(chosen))
    return True


def refine_points(folder: str | Path, positions: Sequence[int], config: RefineConfig, *, progress: bool = True,
                  on_point: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, store: Store | None = None,
                  compute: Compute | None = None) -> dict[str, Any] | None:
    """Refine chosen points of a finished search, on demand: refining costs about one fine-tuning epoch of the
    point's own size, so refining only the points a user will download is far cheaper than the whole front
    (bench/RESULTS.md). `store`: where the front is (default: front.json in `folder`). Returns the updated front,
    or None if stopped early. `compute`: where and in which precision (default auto)."""
    folder = Path(folder)
    store = store if store is not None else FileStore(folder)
    front = store.load_front()
    if front is None:
        raise FileNotFoundError(f"{folder}: no front here; run the search first")
    if not config.enabled:
        raise ValueError("refine epochs is 0: nothing to refine")
    compute = compute or Compute()
    run = Run(folder, device=resolve_device(compute.device))
    if not refine_front(run, front, run.load_supernet(), config, positions=positions, progress=progress,
                        on_point=on_point, should_stop=should_stop, store=store, precision=compute.precision):
        return None
    return front


def run_search_job(spec: RunSpec, job: SearchJob, folder: str | Path, *, progress: bool = True,
                   on_train_step: Callable[[TrainState], None] | None = None,
                   on_trial: Callable[[Trial, SearchResult], None] | None = None,
                   on_refine: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, store: Store | None = None,
                   compute: Compute | None = None) -> SearchResult | None:
    """Train (or resume) the supernet, search (or resume from the trials in `store`), write the front, then refine
    its points if the job asks for it (`on_refine(done, total)`). `store` keeps the trials and the front (default:
    `FileStore(folder)`: trials.jsonl and front.json). None if stopped early. `compute`: where every stage runs and
    the precision it trains in (default auto)."""
    folder = Path(folder)
    compute = compute or Compute()
    device = resolve_device(compute.device)
    if job.search.seed is None:  # SearchConfig.seed: None is the training seed
        job = job.model_copy(update={"search": job.search.model_copy(update={"seed": spec.training.seed})})
    store = store if store is not None else FileStore(folder)
    state = train_run(spec, folder, progress=progress, on_step=on_train_step, should_stop=should_stop,
                      compute=compute)
    if state.stopped:
        return None
    search_file = folder / SEARCH_FILE
    stored = SearchJob.from_dict(json.loads(search_file.read_text())) if search_file.is_file() else None
    if stored is not None and job.evaluation_dtype == "auto":  # a resumed search keeps the precision it ranked in
        job = job.model_copy(update={"evaluation_dtype": stored.evaluation_dtype})
    run = Run(folder, spec, device=device)
    # a subset as large as the split is the whole split, as a search stored before the setting ranked on
    job = job.model_copy(update={"search_examples": ranked_subset(job.search_examples, len(run.task.validation))})
    if stored is not None and _identity(stored.to_dict()) != _identity(job.to_dict()):
        differences = settings_differences(_identity(stored.to_dict()), _identity(job.to_dict()))
        raise ValueError(f"{folder} holds a different search ({differences}); choose another output folder")
    supernet = run.load_supernet()
    if job.dynamic.exits:  # refused before search.json is written: the folder stays free for a search that can run
        check_exits(supernet.config, run.task.spec)
    if supernet.config.shared and (problem := job.shared_problem()):
        raise ValueError(problem)
    dtype = resolve_dtype(job.evaluation_dtype, next(supernet.parameters()).device)
    # search.json names the precision itself, so a resume on another machine ranks the same way
    job = job.model_copy(update={"evaluation_dtype": dtype_name(dtype)})
    search_file.write_text(json.dumps(job.to_dict(), indent=2))
    seq_len = job.latency.seq_len or spec.max_length
    space = run.space(supernet.config)
    if job.search.ode_compensation:  # the compensation gene, scored on the trained supernet (zero-shot)
        space = OdeCompensationSpace(space)
    if job.dynamic.token_elimination:  # the schedule genes, scored on the trained supernet (zero-shot)
        if isinstance(space, SharedSpace):  # tokens are dropped within Euler steps only (SubNetworkConfig.validate)
            space = space.with_solvers(("euler",))
        space = TokenEliminationSpace(space, floor=job.dynamic.keep_floor)
    if job.dynamic.exits:  # the threshold gene, scored from one pass over each structure's exits
        space = ExitSpace(space, job.dynamic.exit_thresholds)
    real_lengths = job.latency.lengths == "validation"
    # a token axis where inputs keep their own lengths or tokens are dropped; the one shape otherwise (cheaper)
    table = load_or_calibrate(supernet.config, batch_size=job.latency.batch_size, seq_len=seq_len,
                              unit_step=space.unit_step, device=job.latency.device,
                              token_axis=real_lengths or job.dynamic.token_elimination)
    measurements = Measurements(supernet=supernet, task=run.task.spec,
                                validation_batches=run.batches("validation", subset=job.search_examples),
                                latency=table, seq_len=seq_len, params_kind=job.params_kind, dtype=dtype,
                                latency_on_lengths=real_lengths, exits=job.dynamic.exits)

    def record(trial: Trial, current: SearchResult) -> None:
        store.add_trial(trial)  # durable before the search goes on: acknowledged, it is never evaluated again
        if on_trial is not None:
            on_trial(trial, current)

    trials = store.load_trials()
    result = run_search(space, measurements, job.search, trials=trials, on_trial=record,
                        should_stop=should_stop, progress=progress)
    if result.stopped:
        return None
    front = write_front(run, result, measurements, job.search.objectives, search_examples=job.search_examples,
                        store=store, dynamic=job.dynamic)
    positions = (budget_points(front, job.refine.budgets, run.task.spec, job.params_kind)
                 if job.refine.budgets else None)
    if job.refine.enabled and not refine_front(run, front, supernet, job.refine, positions=positions,
                                               progress=progress, on_point=on_refine, should_stop=should_stop,
                                               store=store, precision=compute.precision):
        return None
    return result
