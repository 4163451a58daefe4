"""search.report.front_table on hand-made fronts: relative columns, refined column, odd inputs."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest

from search.report import front_table, metric_of, relative_figures


def _point(encoder: int, latency: float, val: float, test: float, **extra) -> dict:
    return {"config": {}, "params": {"encoder": encoder, "total": encoder + 1000}, "macs": encoder * 10,
            "latency_ms": latency, "validation": {"accuracy": val}, "test": {"accuracy": test}, **extra}


FRONT = {
    "task": "glue/sst2", "main_metric": "accuracy", "objectives": ["error", "params", "latency"],
    "hypervolume": 0.61234, "majority_baseline": {"accuracy": 0.509},
    "reference": _point(10_000_000, 40.0, 0.90, 0.893),
    "points": [_point(8_000_000, 32.0, 0.905, 0.874), _point(2_500_000, 10.0, 0.70, 0.66)],
}


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows keyed by their first cell; cells split on runs of two or more spaces."""
    lines = text.splitlines()[1:]
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in lines)}


def test_columns_are_relative_to_the_full_model() -> None:
    text = front_table(FRONT)
    title = text.splitlines()[0]
    assert "glue/sst2" in title and "2 of 2 points" in title and "0.6123" in title and "0.509" in title
    rows = _rows(text)
    assert rows["point"] == ["point", "encoder params", "speed-up", "val accuracy", "test accuracy"]
    assert rows["full"] == ["full", "100% (10.0 M)", "1.00x", "0.900", "0.893"]
    assert rows["0"] == ["0", "80% (8.0 M)", "1.25x", "0.905 (+0.005)", "0.874 (-0.019)"]
    assert rows["1"] == ["1", "25% (2.5 M)", "4.00x", "0.700 (-0.200)", "0.660 (-0.233)"]


def test_relative_figures_are_shares_of_the_full_model_and_retention_above_the_majority() -> None:
    dynamic = _point(2_500_000, 10.0, 0.70, 0.66, dynamics={"expected_macs": 5e6})
    figures = relative_figures(dynamic, FRONT)
    assert figures["params"] == 0.25 and figures["macs"] == 0.25 and figures["expected_macs"] == 0.05
    assert figures["speedup"] == 4.0 and figures["validation_share"] == pytest.approx(0.70 / 0.90)
    assert figures["test_share"] == pytest.approx(0.66 / 0.893)
    assert figures["normalised_retention"] == pytest.approx((0.66 - 0.509) / (0.893 - 0.509))
    assert relative_figures(FRONT["reference"], FRONT)["normalised_retention"] == pytest.approx(1.0)
    assert relative_figures(_point(10, 40.0, 0.5, 0.5), FRONT, "total")["params"] == pytest.approx(1010 / 10_001_000)
    timed = FRONT | {"reference": FRONT["reference"] | {"measured_latency_ms": 30.0}}
    assert relative_figures(dynamic | {"measured_latency_ms": 12.0}, timed)["measured_speedup"] == 2.5
    assert figures["measured_speedup"] is None  # not timed
    bare = relative_figures(_point(8, -1.0, 0.5, 0.5) | {"test": {}}, FRONT)
    assert bare["speedup"] is None and bare["test_share"] is None and bare["normalised_retention"] is None
    assert bare["expected_macs"] is None


def test_total_params_and_chosen_positions() -> None:
    rows = _rows(front_table(FRONT, positions=[1], params_kind="total"))
    assert rows["point"][1] == "total params"
    assert rows["1"][1] == "25% (2.5 M)"
    assert "0" not in rows


def test_refined_column_marks_a_slice_that_was_kept() -> None:
    front = copy.deepcopy(FRONT)
    front["points"][0]["refined"] = {"validation": {"accuracy": 0.89}, "test": {"accuracy": 0.87}, "kept": False}
    front["points"][1]["refined"] = {"validation": {"accuracy": 0.80}, "test": {"accuracy": 0.79}, "kept": True}
    rows = _rows(front_table(front))
    assert rows["point"][-1] == "refined test"
    assert rows["full"][-1] == "-"
    assert rows["0"][-1] == "0.870 (slice kept)"
    assert rows["1"][-1] == "0.790"


def test_missing_or_negative_latency_shows_no_speed_up() -> None:
    front = copy.deepcopy(FRONT)
    front["points"][0]["latency_ms"] = None
    front["points"][1]["latency_ms"] = -3.0
    rows = _rows(front_table(front))
    assert rows["0"][2] == "-" and rows["1"][2] == "-"


def test_split_keyed_test_metrics_show_the_first_split() -> None:
    metrics = {"matched/accuracy": 0.81, "mismatched/accuracy": 0.82}
    assert metric_of(metrics, "accuracy") == 0.81
    assert metric_of({}, "accuracy") is None
    front = copy.deepcopy(FRONT)
    front["reference"]["test"] = {"matched/accuracy": 0.8}
    front["points"][0]["test"] = {"matched/accuracy": 0.75}
    assert _rows(front_table(front))["0"][4] == "0.750 (-0.050)"


def test_a_dict_that_is_not_a_front_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'reference'"):
        front_table({"points": [], "main_metric": "accuracy"})


def test_the_demo_downloads_the_best_point_within_its_budget() -> None:
    """examples/service_demo.py picks what a user after a model half the size would download."""
    path = Path(__file__).resolve().parents[1] / "examples" / "service_demo.py"
    spec = importlib.util.spec_from_file_location("service_demo", path)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    front = copy.deepcopy(FRONT)
    front["points"].append(_point(4_000_000, 20.0, 0.80, 0.78))  # within half the params, better than point 1
    assert demo.pick_point(front, 0.5) == 2
    assert demo.pick_point(front, 0.3) == 1
    assert demo.pick_point(front, 0.1) == 1  # none within: the smallest point
