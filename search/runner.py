"""The search loop: ask/tell an optimizer within a budget, evaluate each new sub-network once, report it.

No database and no HTTP here: each finished trial is handed to `on_trial` (the CLI appends it to
`trials.jsonl`, the service stores a row), and a search resumes from the list of trials already done.
Resuming replays the optimizer with the same seed, answering its asks from those trials, so it reaches the
state it had and no sub-network is evaluated twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from supernet.config import SubNetworkConfig
from supernet.space import SearchSpace

from .objectives import Measurements, figures_dict, normalisation_bounds, objective_values, resolve_objectives
from .optimizers import make_optimizer
from .pareto import DEFAULT_REFERENCE, distinct_non_dominated, hypervolume, hypervolume_history, normalize
from .settings import SearchConfig

log = logging.getLogger(__name__)

# An optimizer that keeps proposing sub-networks it has seen (a converged population on a small space)
# gets this many answers from the cache in a row before the search ends early.
MAX_CONSECUTIVE_REPEATS = 2000


@dataclass
class Trial:
    index: int
    config: SubNetworkConfig
    objectives: dict[str, float]
    validation: dict[str, float]
    params: dict[str, int]
    macs: int
    latency_ms: float
    elapsed_s: float  # search time when the trial finished
    dynamics: dict[str, Any] | None = None  # search.objectives.Measurements.dynamics; None for a static network

    def to_dict(self) -> dict[str, Any]:
        data = {"index": self.index, "config": self.config.to_dict(), "objectives": self.objectives,
                "validation": self.validation, "params": self.params, "macs": self.macs,
                "latency_ms": self.latency_ms, "elapsed_s": self.elapsed_s}
        return data | ({"dynamics": self.dynamics} if self.dynamics is not None else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        dynamics = data.get("dynamics")
        return cls(index=data["index"], config=SubNetworkConfig.from_dict(data["config"]),
                   objectives=dict(data["objectives"]), validation=dict(data["validation"]),
                   params=dict(data["params"]), macs=int(data["macs"]), latency_ms=float(data["latency_ms"]),
                   elapsed_s=float(data["elapsed_s"]), dynamics=None if dynamics is None else dict(dynamics))


@dataclass
class SearchResult:
    trials: list[Trial]
    front: list[Trial]  # non-dominated trials over the chosen objectives
    hypervolume: float
    hypervolume_history: list[float]  # after each trial, same normalisation
    bounds: tuple[list[float], list[float]]  # normalisation lower/upper per objective
    reference_point: list[float]
    stopped: bool = False
    # forward passes spent, the budget's unit (SearchSpace.evaluation): fewer than the trials where one pass scores
    # several members (every exit threshold of a structure)
    evaluations: int = 0


def summarize(trials: Sequence[Trial], objectives: Sequence[str], bounds: tuple[list[float], list[float]]
              ) -> tuple[list[Trial], float, list[float]]:
    """Front, hypervolume and hypervolume history of trials (normalised by `bounds`, reference 1.1)."""
    if not trials:
        return [], 0.0, []
    values = np.array([[t.objectives[name] for name in objectives] for t in trials], dtype=float)
    mask = distinct_non_dominated(values)
    front = sorted((t for t, keep in zip(trials, mask, strict=True) if keep),
                   key=lambda t: [t.objectives[name] for name in objectives])
    reference = np.full(len(objectives), DEFAULT_REFERENCE)
    lower, upper = bounds
    history = hypervolume_history(values, reference, lower, upper)
    volume = hypervolume(normalize(values, lower, upper), reference)
    return front, float(volume), [float(h) for h in history]


def run_search(space: SearchSpace, measurements: Measurements, config: SearchConfig, *,
               trials: Sequence[Trial] = (), on_trial: Callable[[Trial, SearchResult], None] | None = None,
               should_stop: Callable[[], bool] | None = None, progress: bool = True) -> SearchResult:
    """Search `space` for sub-networks that trade the chosen objectives off best.

    Every run starts with the largest, smallest and middle member. The budget is `evaluations` distinct
    sub-networks evaluated (trials passed in count towards it) and/or `time_limit_s` of search time. Where one
    evaluation scores other members too (SearchSpace.scored_alongside: every exit threshold of a structure), they
    become trials of their own without counting towards the budget, and the optimizer's asks for them are answered
    from them. A `seed` of None means the training seed (run_search_job fills it in); a search run on its own,
    without one, uses 0.
    """
    objectives = resolve_objectives(config.objectives)
    names = [o.name for o in objectives]
    bounds = normalisation_bounds(objectives, measurements)
    reference_point = [DEFAULT_REFERENCE] * len(names)
    initial = [space.encode(s) for s in (space.largest(), space.smallest(), space.middle())]
    optimizer = make_optimizer(config.optimizer, space.lower, space.upper, len(names),
                               seed=0 if config.seed is None else config.seed,
                               initial=initial, **config.optimizer_options)
    done: list[Trial] = sorted(trials, key=lambda t: t.index)
    cache = {t.config: t for t in done}
    evaluated = {space.evaluation(t.config) for t in done}
    offset = done[-1].elapsed_s if done else 0.0
    start = time.perf_counter()
    stopped, repeats = False, 0
    bar = tqdm(total=config.evaluations, initial=min(len(evaluated), config.evaluations), desc="search",
               disable=not progress)

    def result() -> SearchResult:
        front, volume, history = summarize(done, names, bounds)
        return SearchResult(trials=list(done), front=front, hypervolume=volume, hypervolume_history=history,
                            bounds=bounds, reference_point=reference_point, stopped=stopped,
                            evaluations=len(evaluated))

    def add(sub: SubNetworkConfig) -> Trial:
        figures = measurements.figures(sub)
        trial = Trial(index=len(done), config=sub, objectives=objective_values(objectives, sub, measurements),
                      **figures_dict(figures), elapsed_s=offset + time.perf_counter() - start)
        cache[sub] = trial
        done.append(trial)
        return trial

    def add_scored_alongside(subs: Sequence[SubNetworkConfig]) -> list[Trial]:
        members = dict.fromkeys(m for sub in subs for m in space.scored_alongside(sub) if m not in cache)
        return [add(member) for member in members]

    def report(new: list[Trial]) -> None:
        current = result()
        bar.set_postfix({"hv": f"{current.hypervolume:.4f}"})
        if on_trial is not None:
            for trial in new:
                on_trial(trial, current)

    # a search stopped between a trial and the members scored alongside it scores them now (one pass)
    if missing := add_scored_alongside([t.config for t in done]):
        report(missing)
    while len(evaluated) < config.evaluations:
        elapsed = offset + time.perf_counter() - start
        if config.time_limit_s is not None and elapsed >= config.time_limit_s:
            log.info("search time limit reached after %d evaluations", len(evaluated))
            break
        if should_stop is not None and should_stop():
            stopped = True
            break
        vector = optimizer.ask()
        sub = space.decode(vector)
        trial = cache.get(sub)
        if trial is not None:
            optimizer.tell(vector, [trial.objectives[n] for n in names])
            repeats += 1
            if repeats >= MAX_CONSECUTIVE_REPEATS:
                log.warning("the optimizer proposed only known sub-networks %d times in a row; stopping", repeats)
                break
            continue
        repeats = 0
        trial = add(sub)
        evaluated.add(space.evaluation(sub))
        optimizer.tell(vector, [trial.objectives[n] for n in names])
        bar.update(1)
        report([trial, *add_scored_alongside([sub])])
    bar.close()
    return result()
