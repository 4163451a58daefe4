"""search.runner.run_search on a tiny (untrained) supernet: initial configs, determinism, budget, resume,
time limit, progress callbacks and the front."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import TOY_SPEC, make_supernet, toy_batches

from search import objectives as objectives_module
from search import runner as runner_module
from search.objectives import Measurements
from search.pareto import distinct_non_dominated, hypervolume, hypervolume_history, normalize
from search.runner import SearchConfig, SearchResult, Trial, run_search, summarize
from supernet.config import SubNetworkConfig
from supernet.counting import count_params
from supernet.evaluation import evaluate
from supernet.space import make_space

OPTIMIZERS = ["nsga2", "local", "random", "morea"]
# small populations so that the optimizers get past their initial phase within a dozen evaluations
OPTIONS = {"nsga2": {"population_size": 4}, "morea": {"population_size": 4, "sample_size": 2}}


@pytest.fixture(scope="module")
def supernet():
    return make_supernet(seed=3)


@pytest.fixture(scope="module")
def batches():
    return toy_batches(count=3, size=4, tokens=8)


def measurements(supernet, batches, table) -> Measurements:
    """A fresh Measurements (empty cache) on the toy batches."""
    return Measurements(supernet=supernet, validation_batches=batches, task=TOY_SPEC, latency=table, seq_len=8)


def search(supernet, batches, table, space_name: str = "uniform", *, trials=(), on_trial=None, should_stop=None,
           **config) -> SearchResult:
    optimizer = config.get("optimizer", "nsga2")
    config = {"optimizer_options": OPTIONS.get(optimizer, {})} | config
    space = make_space(space_name, supernet.config)
    return run_search(space, measurements(supernet, batches, table), SearchConfig(**config), trials=trials,
                      on_trial=on_trial, should_stop=should_stop, progress=False)


def sequence(trials) -> list[tuple[SubNetworkConfig, dict[str, float]]]:
    return [(t.config, t.objectives) for t in trials]


def dominates(a: dict[str, float], b: dict[str, float], names) -> bool:
    return all(a[n] <= b[n] for n in names) and any(a[n] < b[n] for n in names)


# ------------------------------------------------------------------------------------------------ basics


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("space_name", ["uniform", "per_layer"])
def test_first_trials_are_largest_smallest_middle(supernet, batches, tiny_latency_table, optimizer, space_name):
    result = search(supernet, batches, tiny_latency_table, space_name, optimizer=optimizer, evaluations=5)
    space = make_space(space_name, supernet.config)
    assert [t.config for t in result.trials[:3]] == [space.largest(), space.smallest(), space.middle()]
    assert space.largest() == SubNetworkConfig.full(supernet.config)
    assert [t.index for t in result.trials] == list(range(5))


def test_trial_records_the_measurements(supernet, batches, tiny_latency_table) -> None:
    result = search(supernet, batches, tiny_latency_table, objectives=["error", "params", "latency"],
                    evaluations=6)
    config = supernet.config
    for trial in result.trials:
        metrics = evaluate(supernet, batches, TOY_SPEC, sub=trial.config)
        assert trial.validation == metrics
        assert trial.objectives == {"error": pytest.approx(1 - metrics["accuracy"]),
                                    "params": float(count_params(config, trial.config).encoder),
                                    "latency": tiny_latency_table.predict(trial.config)}
        assert trial.params == count_params(config, trial.config).to_dict()
        assert trial.latency_ms == tiny_latency_table.predict(trial.config)
        assert isinstance(trial.macs, int) and trial.macs > 0
    elapsed = [t.elapsed_s for t in result.trials]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert result.bounds == ([0.0, 0.0, 0.0], [1.0, float(count_params(config).encoder),
                                               tiny_latency_table.predict(SubNetworkConfig.full(config))])
    assert result.reference_point == [1.1, 1.1, 1.1] and not result.stopped


# ----------------------------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_same_seed_same_search(supernet, batches, tiny_latency_table, optimizer) -> None:
    runs = [search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=12, seed=seed)
            for seed in (5, 5, 6)]
    assert sequence(runs[0].trials) == sequence(runs[1].trials)
    assert runs[0].hypervolume_history == runs[1].hypervolume_history
    assert [t.config for t in runs[0].front] == [t.config for t in runs[1].front]
    # the seed matters: beyond the three fixed initial configs another seed searches elsewhere
    assert [t.config for t in runs[0].trials[3:]] != [t.config for t in runs[2].trials[3:]]


# ------------------------------------------------------------------------------------------------ budget


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_budget_is_distinct_evaluations(supernet, batches, tiny_latency_table, evaluated, optimizer) -> None:
    result = search(supernet, batches, tiny_latency_table, optimizer=optimizer, evaluations=15)
    configs = [t.config for t in result.trials]
    assert len(result.trials) == 15 and len(set(configs)) == 15
    assert len(evaluated) == 15 and len(set(evaluated)) == 15 and set(evaluated) == set(configs)
    assert [t.index for t in result.trials] == list(range(15))


def test_figures_computed_once_per_trial(supernet, batches, tiny_latency_table, monkeypatch) -> None:
    calls: list[SubNetworkConfig] = []
    original = Measurements.figures

    def counting(self, sub):
        if sub not in self._cache:
            calls.append(sub)
        return original(self, sub)

    monkeypatch.setattr(Measurements, "figures", counting)
    result = search(supernet, batches, tiny_latency_table, optimizer="local", evaluations=9)
    assert len(calls) == 9 and set(calls) == {t.config for t in result.trials}


def test_small_space_is_exhausted_without_repeats(supernet, batches, tiny_latency_table, evaluated,
                                                  monkeypatch) -> None:
    """The layers space of 3 layers has 7 distinct sub-networks: a budget of 20 stops after all 7."""
    monkeypatch.setattr(runner_module, "MAX_CONSECUTIVE_REPEATS", 30)
    result = search(supernet, batches, tiny_latency_table, "layers", optimizer="local", evaluations=20)
    configs = [t.config for t in result.trials]
    assert len(configs) == len(set(configs)) == 7
    assert len(evaluated) == 7
    assert not result.stopped


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_replays_and_continues(supernet, batches, tiny_latency_table, evaluated, optimizer) -> None:
    straight = search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=12)
    evaluated.clear()
    first = search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=6)
    assert len(first.trials) == 6 and len(evaluated) == 6
    evaluated.clear()
    new = []
    resumed = search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=12,
                     trials=first.trials, on_trial=lambda trial, result: new.append(trial.index))
    old = {t.config for t in first.trials}
    assert len(evaluated) == 6 and not old & set(evaluated)
    assert new == list(range(6, 12))
    assert resumed.trials[:6] == first.trials
    assert sequence(resumed.trials) == sequence(straight.trials)
    assert resumed.hypervolume_history == pytest.approx(straight.hypervolume_history)
    assert resumed.hypervolume == pytest.approx(straight.hypervolume)
    # a finished search resumed with the same budget evaluates nothing
    evaluated.clear()
    again = search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=12,
                   trials=resumed.trials, on_trial=lambda trial, result: pytest.fail("evaluated again"))
    assert evaluated == [] and again.trials == resumed.trials


def test_resume_from_json_in_any_order(supernet, batches, tiny_latency_table, evaluated) -> None:
    straight = search(supernet, batches, tiny_latency_table, optimizer="nsga2", evaluations=10)
    first = search(supernet, batches, tiny_latency_table, optimizer="nsga2", evaluations=7)
    stored = [Trial.from_dict(json.loads(json.dumps(t.to_dict()))) for t in reversed(first.trials)]
    evaluated.clear()
    resumed = search(supernet, batches, tiny_latency_table, optimizer="nsga2", evaluations=10, trials=stored)
    assert len(evaluated) == 3
    assert sequence(resumed.trials) == sequence(straight.trials)
    assert [t.index for t in resumed.trials] == list(range(10))


@pytest.mark.parametrize("optimizer", ["nsga2", "morea"])
def test_stop_and_resume(supernet, batches, tiny_latency_table, evaluated, optimizer) -> None:
    straight = search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=10)
    done: list[Trial] = []
    stopped = search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=10,
                     on_trial=lambda trial, result: done.append(trial), should_stop=lambda: len(done) >= 4)
    assert stopped.stopped and len(stopped.trials) == 4 and stopped.trials == done
    assert len(stopped.hypervolume_history) == 4
    evaluated.clear()
    resumed = search(supernet, batches, tiny_latency_table, "per_layer", optimizer=optimizer, evaluations=10,
                     trials=stopped.trials)
    assert not resumed.stopped and len(evaluated) == 6
    assert not {t.config for t in stopped.trials} & set(evaluated)
    assert sequence(resumed.trials) == sequence(straight.trials)


def test_should_stop_before_anything(supernet, batches, tiny_latency_table, evaluated) -> None:
    result = search(supernet, batches, tiny_latency_table, evaluations=5, should_stop=lambda: True)
    assert result.stopped and result.trials == [] and result.front == []
    assert result.hypervolume == 0.0 and result.hypervolume_history == []
    assert evaluated == []


# -------------------------------------------------------------------------------------------- time limit


def test_time_limit_stops_early(supernet, batches, tiny_latency_table, monkeypatch) -> None:
    def slow(model, batches, spec, *, sub=None, progress=False, dtype=torch.float32):
        time.sleep(0.05)
        return evaluate(model, batches, spec, sub=sub, dtype=dtype)

    monkeypatch.setattr(objectives_module, "evaluate", slow)
    start = time.perf_counter()
    result = search(supernet, batches, tiny_latency_table, optimizer="local", evaluations=200, time_limit_s=0.3)
    wall = time.perf_counter() - start
    assert 2 <= len(result.trials) < 20  # about 0.3 / 0.05 evaluations, far from the budget of 200
    assert not result.stopped  # running out of time is not an interruption
    assert 0.3 <= wall < 10.0
    # every trial but the last started before the limit
    assert all(t.elapsed_s < 0.3 for t in result.trials[:-1])


def test_time_limit_counts_the_time_of_resumed_trials(supernet, batches, tiny_latency_table, evaluated) -> None:
    first = search(supernet, batches, tiny_latency_table, optimizer="local", evaluations=4)
    late = [Trial.from_dict(t.to_dict() | {"elapsed_s": 100.0 + t.index}) for t in first.trials]
    evaluated.clear()
    result = search(supernet, batches, tiny_latency_table, optimizer="local", evaluations=10, time_limit_s=50.0,
                    trials=late)
    assert evaluated == [] and len(result.trials) == 4
    # with time left, the search goes on and its trials continue the clock
    result = search(supernet, batches, tiny_latency_table, optimizer="local", evaluations=6, time_limit_s=500.0,
                    trials=late)
    assert len(evaluated) == 2 and all(t.elapsed_s >= 103.0 for t in result.trials[4:])


# ----------------------------------------------------------------------------------------------- callback


def test_on_trial_reports_each_new_trial(supernet, batches, tiny_latency_table) -> None:
    names = ["error", "params", "latency"]
    reports: list[tuple[Trial, SearchResult]] = []
    result = search(supernet, batches, tiny_latency_table, optimizer="nsga2", objectives=names, evaluations=10,
                    on_trial=lambda trial, current: reports.append((trial, current)))
    assert [trial.index for trial, _ in reports] == list(range(10))
    assert [trial for trial, _ in reports] == result.trials
    for k, (trial, current) in enumerate(reports):
        assert len(current.trials) == k + 1 and current.trials[-1] is trial
        assert len(current.hypervolume_history) == k + 1
        assert current.hypervolume == pytest.approx(current.hypervolume_history[-1])
        assert current.hypervolume_history == pytest.approx(result.hypervolume_history[:k + 1])
    history = result.hypervolume_history
    assert len(history) == 10 and all(b >= a - 1e-12 for a, b in zip(history, history[1:], strict=False))
    values = np.array([[t.objectives[n] for n in names] for t in result.trials])
    lower, upper = result.bounds
    assert history == pytest.approx(hypervolume_history(values, 1.1, lower, upper))
    assert result.hypervolume == pytest.approx(hypervolume(normalize(values, lower, upper), 1.1))
    assert result.hypervolume > 0  # the full model (normalised to 1.0 in every cost) is inside the box


# -------------------------------------------------------------------------------------------------- front


@pytest.mark.parametrize("objectives", [["error", "params"], ["error", "macs", "latency"]])
def test_front_is_the_non_dominated_set(supernet, batches, tiny_latency_table, objectives) -> None:
    result = search(supernet, batches, tiny_latency_table, "per_layer", optimizer="random", objectives=objectives,
                    evaluations=16)
    front, others = result.front, [t for t in result.trials if t not in result.front]
    assert front and all(t in result.trials for t in front)
    for a in front:
        assert not any(dominates(b.objectives, a.objectives, objectives) for b in result.trials)
    for t in others:
        assert any(dominates(f.objectives, t.objectives, objectives) for f in front), t
    keys = [[t.objectives[n] for n in objectives] for t in front]
    assert keys == sorted(keys)
    values = np.array([[t.objectives[n] for n in objectives] for t in result.trials])
    assert {t.index for t in front} == set(np.flatnonzero(distinct_non_dominated(values)).tolist())


def test_summarize_by_hand() -> None:
    def trial(index, error, params):
        sub = SubNetworkConfig(layers=(0,), heads=(index + 1,), units=(1,))
        return Trial(index=index, config=sub, objectives={"error": error, "params": params}, validation={},
                     params={}, macs=0, latency_ms=0.0, elapsed_s=float(index))

    trials = [trial(0, 0.5, 10.0), trial(1, 0.2, 20.0), trial(2, 0.6, 15.0), trial(3, 0.1, 5.0)]
    front, volume, history = summarize(trials, ["error", "params"], ([0.0, 0.0], [1.0, 20.0]))
    assert [t.index for t in front] == [3]
    # normalised: (0.5, 0.5), (0.2, 1.0), (0.6, 0.75), (0.1, 0.25); reference 1.1
    assert history == pytest.approx([0.36, 0.36 + 0.3 * 0.1, 0.39, 1.0 * 0.85])
    assert volume == pytest.approx(0.85)
    assert summarize([], ["error", "params"], ([0.0, 0.0], [1.0, 1.0])) == ([], 0.0, [])


# ---------------------------------------------------------------------------------------------- records


def test_trial_round_trip() -> None:
    trial = Trial(index=7, config=SubNetworkConfig(layers=(0, 2), heads=(3, 0, 1), units=(12, 0, 48)),
                  objectives={"error": 0.25, "params": 1234.0, "latency": 0.5},
                  validation={"accuracy": 0.75, "f1": 0.6}, params={"encoder": 1234, "total": 5678},
                  macs=99999, latency_ms=0.5, elapsed_s=1.5)
    data = trial.to_dict()
    assert data["config"] == {"layers": [0, 2], "heads": [3, 0, 1], "units": [12, 0, 48]}
    again = Trial.from_dict(json.loads(json.dumps(data)))
    assert again == trial and again.config == trial.config and hash(again.config) == hash(trial.config)
    assert again.to_dict() == data
    assert isinstance(again.macs, int) and isinstance(again.latency_ms, float)
    with pytest.raises(KeyError):
        Trial.from_dict({k: v for k, v in data.items() if k != "objectives"})


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"objectives": ["error", "speed"]}, ValueError, "objectives.1\n  Input should be 'error', 'params'"),
    ({"objectives": ["error"]}, ValueError, "objectives\n  List should have at least 2 items"),
    ({"objectives": ["params", "params"]}, ValueError, "distinct"),
    ({"evaluations": 0}, ValueError, "evaluations"),
    ({"evaluations": -3}, ValueError, "evaluations"),
    ({"time_limit_s": 0}, ValueError, "time_limit_s"),
    ({"time_limit_s": -1.0}, ValueError, "time_limit_s"),
])
def test_search_config_validation(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        SearchConfig(**kwargs)


def test_search_config_defaults_and_unknown_optimizer(supernet, batches, tiny_latency_table) -> None:
    config = SearchConfig()
    assert config.objectives == ["error", "params"] and config.optimizer == "nsga2" and config.evaluations == 100
    with pytest.raises(ValueError, match="optimizer\n  Input should be .nsga2."):
        search(supernet, batches, tiny_latency_table, optimizer="annealing", evaluations=3)
    with pytest.raises(ValueError, match="does not take"):
        search(supernet, batches, tiny_latency_table, optimizer="local", evaluations=3,
               optimizer_options={"population_size": 3})
