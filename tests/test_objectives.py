"""search.objectives: names, what each objective computes, normalisation bounds and the per-config cache."""

from __future__ import annotations

import random

import pytest
from conftest import TOY_SPEC, hand_latency_table, toy_batches

from search.objectives import (
    OBJECTIVES,
    Measurements,
    ObjectiveError,
    figures_dict,
    normalisation_bounds,
    objective_values,
    resolve_objectives,
)
from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, count_params
from supernet.evaluation import evaluate
from supernet.space import make_space


@pytest.fixture
def measurements(tiny_supernet) -> Measurements:
    return Measurements(supernet=tiny_supernet, validation_batches=toy_batches(), task=TOY_SPEC,
                        latency=hand_latency_table(tiny_supernet.config), seq_len=8)


def _subs(config, count: int = 6) -> list[SubNetworkConfig]:
    rng = random.Random(0)
    spaces = [make_space(name, config) for name in ("uniform", "per_layer", "layers")]
    return [SubNetworkConfig.full(config)] + [spaces[i % 3].sample(rng) for i in range(count - 1)]


def test_resolve_objectives() -> None:
    assert [o.name for o in resolve_objectives(["error", "params"])] == ["error", "params"]
    assert [o.name for o in resolve_objectives([" latency", "macs ", ""])] == ["latency", "macs"]
    assert [o.name for o in resolve_objectives(OBJECTIVES)] == list(OBJECTIVES)
    assert resolve_objectives(["params", "error"])[0] is OBJECTIVES["params"]


@pytest.mark.parametrize(("names", "message"), [
    (["error", "speed"], "unknown objective"),
    (["accuracy", "params"], "unknown objective"),
    (["error"], "at least two"),
    ([], "at least two"),
    (["error", "error"], "distinct"),
    (["params", " params"], "distinct"),
])
def test_resolve_objectives_errors(names, message: str) -> None:
    with pytest.raises(ObjectiveError, match=message):
        resolve_objectives(names)
    assert issubclass(ObjectiveError, ValueError)


def test_unknown_params_kind(tiny_supernet) -> None:
    with pytest.raises(ObjectiveError, match="params_kind"):
        Measurements(supernet=tiny_supernet, validation_batches=toy_batches(), task=TOY_SPEC,
                     latency=hand_latency_table(tiny_supernet.config), params_kind="embeddings")


@pytest.mark.parametrize("kind", ["encoder", "total"])
def test_params_objective(tiny_supernet, kind: str) -> None:
    config = tiny_supernet.config
    m = Measurements(supernet=tiny_supernet, validation_batches=toy_batches(), task=TOY_SPEC,
                     latency=hand_latency_table(config), params_kind=kind)
    for sub in _subs(config):
        counts = count_params(config, sub)
        value = OBJECTIVES["params"].fn(sub, m)
        assert value == float(counts.encoder if kind == "encoder" else counts.total)
        assert isinstance(value, float)
    assert count_params(config).total > count_params(config).encoder  # the two kinds really differ


def test_cost_objectives(measurements) -> None:
    config = measurements.supernet.config
    for sub in _subs(config):
        assert OBJECTIVES["macs"].fn(sub, measurements) == float(count_macs(config, sub, seq_len=8))
        assert OBJECTIVES["latency"].fn(sub, measurements) == measurements.latency.predict(sub)
        params, macs, latency = measurements.cost(sub)
        assert params == count_params(config, sub).to_dict()
        assert macs == count_macs(config, sub, seq_len=8) and latency == measurements.latency.predict(sub)
    # seq_len is the one the MACs are counted at
    sub = _subs(config)[1]
    longer = Measurements(supernet=measurements.supernet, validation_batches=[], task=TOY_SPEC,
                          latency=measurements.latency, seq_len=32)
    assert OBJECTIVES["macs"].fn(sub, longer) == float(count_macs(config, sub, seq_len=32))
    assert OBJECTIVES["macs"].fn(sub, longer) > OBJECTIVES["macs"].fn(sub, measurements)


def test_error_objective_is_one_minus_the_main_metric(measurements) -> None:
    errors = []
    for sub in _subs(measurements.supernet.config):
        metrics = evaluate(measurements.supernet, measurements.validation_batches, TOY_SPEC, sub=sub)
        error = OBJECTIVES["error"].fn(sub, measurements)
        assert error == pytest.approx(1.0 - metrics["accuracy"], abs=1e-12)
        assert measurements.figures(sub).validation == metrics
        errors.append(error)
    assert all(0.0 <= e <= 1.0 for e in errors)


def test_objective_values_and_figures(measurements) -> None:
    names = ["error", "params", "macs", "latency"]
    sub = _subs(measurements.supernet.config)[2]
    values = objective_values(resolve_objectives(names), sub, measurements)
    assert list(values) == names
    assert values == {name: OBJECTIVES[name].fn(sub, measurements) for name in names}
    record = figures_dict(measurements.figures(sub))
    assert set(record) == {"validation", "params", "macs", "latency_ms"}
    assert record["params"] == count_params(measurements.supernet.config, sub).to_dict()
    assert record["macs"] == int(values["macs"]) and record["latency_ms"] == values["latency"]


@pytest.mark.parametrize("kind", ["encoder", "total"])
def test_normalisation_bounds(tiny_supernet, kind: str) -> None:
    config = tiny_supernet.config
    m = Measurements(supernet=tiny_supernet, validation_batches=toy_batches(), task=TOY_SPEC,
                     latency=hand_latency_table(config), seq_len=8, params_kind=kind)
    names = ["error", "params", "macs", "latency"]
    lower, upper = normalisation_bounds(resolve_objectives(names), m)
    full = SubNetworkConfig.full(config)
    params = count_params(config)
    assert lower == [0.0, 0.0, 0.0, 0.0]
    assert upper == [1.0, float(params.encoder if kind == "encoder" else params.total),
                     float(count_macs(config, full, seq_len=8)), m.latency.predict(full)]
    lower, upper = normalisation_bounds(resolve_objectives(["latency", "error"]), m)
    assert upper == [m.latency.predict(full), 1.0]


def test_reference_is_the_full_model(measurements) -> None:
    reference = measurements.reference()
    full = SubNetworkConfig.full(measurements.supernet.config)
    assert reference is measurements.figures(full)
    assert reference.validation == evaluate(measurements.supernet, measurements.validation_batches, TOY_SPEC)


def test_measurements_evaluate_each_config_once(measurements, evaluated) -> None:
    subs = _subs(measurements.supernet.config)
    everything = resolve_objectives(["error", "params", "macs", "latency"])
    for _ in range(3):
        for sub in subs:
            measurements.figures(sub)
            objective_values(everything, sub, measurements)
    measurements.reference()
    assert len(evaluated) == len(subs) == len(set(subs))
    assert set(evaluated) == set(subs)
    # equal configurations built separately share the cache entry
    again = SubNetworkConfig(layers=subs[1].layers, heads=subs[1].heads, units=subs[1].units)
    assert measurements.figures(again) is measurements.figures(subs[1])
    assert len(evaluated) == len(subs)


def test_cost_objectives_need_no_evaluation(measurements, evaluated) -> None:
    costs = resolve_objectives(["params", "macs", "latency"])
    for sub in _subs(measurements.supernet.config):
        objective_values(costs, sub, measurements)
    normalisation_bounds(costs, measurements)
    assert evaluated == []


def test_remembered_figures_are_not_measured_again(measurements, evaluated) -> None:
    subs = _subs(measurements.supernet.config, 3)
    figures = {sub: measurements.figures(sub) for sub in subs}
    assert measurements.known() == figures
    measurements.known().clear()  # a copy: the cache itself is untouched
    assert len(measurements.known()) == 3
    other = Measurements(supernet=measurements.supernet, validation_batches=measurements.validation_batches,
                         task=TOY_SPEC, latency=measurements.latency, seq_len=8)
    for sub, value in figures.items():
        other.remember(sub, value)
    evaluated.clear()
    assert all(other.figures(sub) is figures[sub] for sub in subs)
    assert OBJECTIVES["error"].fn(subs[1], other) == OBJECTIVES["error"].fn(subs[1], measurements)
    assert evaluated == []
