"""A front point's runtime knobs turned after the search (search/knobs.py): every exit threshold of the grid, token
keep schedules scaled, every ODE step count of a shared stack, each measured as the search measures a trial."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import TOY_SPEC, hand_latency_table, make_supernet, supernet_config, toy_batches

from search.knobs import TOKEN_KEEP_SCALES, knob_table
from search.latency import LatencyTable
from search.objectives import Measurements
from supernet.config import SubNetworkConfig
from supernet.counting import count_macs


def _measurements(supernet, **overrides) -> Measurements:
    return Measurements(supernet=supernet, validation_batches=toy_batches(), task=TOY_SPEC,
                        **({"latency": hand_latency_table(supernet.config), "seq_len": 8} | overrides))


def test_a_static_point_has_no_knob() -> None:
    net = make_supernet(supernet_config()).eval()
    assert knob_table(SubNetworkConfig.full(net.config), _measurements(net), exit_thresholds=(0.0, 0.5)) == {}


def test_every_threshold_of_the_grid_is_scored_from_one_pass_over_the_exits() -> None:
    net = make_supernet(supernet_config(exits=True, num_layers=4)).eval()
    measurements = _measurements(net, exits=True)
    sub = dataclasses.replace(SubNetworkConfig.full(net.config), exit_threshold=0.4)
    table = knob_table(sub, measurements, exit_thresholds=(0.0, 0.2, 0.6))
    assert [s["value"] for s in table["exit_threshold"]] == [0.0, 0.2, 0.4, 0.6]
    assert measurements.exit_passes == 1  # one structure: every threshold from its stored exit logits
    full_depth = table["exit_threshold"][0]
    static = dataclasses.replace(sub, exit_threshold=None)  # τ = 0: full depth, no exit head run
    assert "dynamics" not in full_depth and full_depth["macs"] == count_macs(net.config, static, seq_len=8)
    layers = [s["dynamics"]["mean_exit_layer"] for s in table["exit_threshold"][1:]]
    assert layers == sorted(layers, reverse=True) and all(1 <= x <= 4 for x in layers)  # higher τ: earlier exits
    assert table["exit_threshold"][2] | {"value": None} == {"value": None, **_figures(measurements, sub)}


def _figures(measurements, sub):
    from search.objectives import figures_dict

    return figures_dict(measurements.figures(sub))


def _token_table() -> LatencyTable:
    """The tiny config's layers (4 heads, 48 units) timed at 4 and 8 tokens, entries proportional to tokens."""
    heads = range(5)
    return LatencyTable(device="hand", batch_size=1, seq_len=8, tokens=[4, 8], overhead_ms=[1.0, 2.0],
                        attention_ms=[[0.5 * h, 1.0 * h] for h in heads], ffn_units=[0, 48],
                        ffn_ms=[[0.0, 0.0], [2.0, 4.0]], eliminating_ms=[[0.75 * h, 1.5 * h] for h in heads],
                        eliminating_quarter_ms=[[0.6 * h, 1.25 * h] for h in heads])


def test_token_keep_scales_move_the_schedule_between_the_floor_and_one() -> None:
    net = make_supernet(supernet_config(num_layers=3)).eval()
    sub = dataclasses.replace(SubNetworkConfig.full(net.config), token_keep=(0.8, 0.4, 0.2))
    measurements = _measurements(net, latency=_token_table())
    table = knob_table(sub, measurements, keep_floor=0.25)
    settings = table["token_keep_scale"]
    assert [s["value"] for s in settings] == list(TOKEN_KEEP_SCALES)
    expected = [s["dynamics"]["expected_macs"] for s in settings]
    assert expected == sorted(expected)  # keeping more tokens costs more
    at_one = settings[TOKEN_KEEP_SCALES.index(1.0)]
    assert at_one["dynamics"] == _figures(measurements, sub)["dynamics"]
    assert min(min(s["dynamics"]["mean_tokens"]) for s in settings) > 0


def test_a_shared_stack_is_scored_at_every_step_count() -> None:
    config = dataclasses.replace(supernet_config(num_layers=4), layer_groups=(0, 0, 1, 1))
    net = make_supernet(config).eval()
    sub = dataclasses.replace(SubNetworkConfig.full(config), ode_steps=2, ode_solver="heun")
    table = knob_table(sub, _measurements(net))
    settings = table["ode_steps"]
    assert [s["value"] for s in settings] == [2, 4]
    assert settings[0]["macs"] == count_macs(config, sub, seq_len=8)  # the point itself: 2 Heun steps
    assert settings[1]["macs"] == count_macs(config, dataclasses.replace(sub, ode_steps=None), seq_len=8)
    assert json.loads(json.dumps(table)) == table  # stored as JSON in front.json and the database


@pytest.mark.slow
def test_the_front_carries_knobs_and_measured_latencies(workspace, tmp_path, monkeypatch) -> None:
    """A whole search with token elimination: its front points with a keep schedule carry knobs in front.json, the
    static ones and the full model the latency the search measured."""
    from conftest import cli, task_args

    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = [*task_args(workspace), "--max-length", "16", "--epochs", "1", "--evaluations", "8",
            "--objectives", "error,expected_macs", "--token-elimination", "--latency-batch-size", "2"]
    assert cli(["search", *args, "--out", str(out)]) == 0
    front = json.loads((out / "front.json").read_text())
    points = front["points"]
    dynamic = [p for p in points if p["config"].get("token_keep")]
    # the search times the static points' models and the full one on its machine; random tokens say nothing of a
    # point that drops tokens, so it has none
    assert front["reference"]["measured_latency_ms"] > 0
    assert all(("measured_latency_ms" in p) == (not p["config"].get("token_keep")) for p in points)
    assert dynamic, points
    for point in dynamic:
        assert [s["value"] for s in point["knobs"]["token_keep_scale"]] == list(TOKEN_KEEP_SCALES)
    assert all("knobs" not in p for p in points if not p["config"].get("token_keep"))
