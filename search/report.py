"""The Pareto front as a table a person reads: size, speed-up and quality of each point against the full model.

The raw front (front.json, or the API's GET /searches/{id}/pareto, which has the same keys) stores absolute
figures: parameter counts, predicted latency in milliseconds, metrics. A reader choosing a point asks relative
questions ("how much smaller, how much faster, how much worse than what I have?"), so every column here is
relative to the full model (the front's `reference`), and the majority-class figure tells whether a metric means
anything at all (a front whose points all sit at the majority class has learnt nothing).

Torch-free and service-free, so the CLI (`nasprune search`), the service demo and notebooks share one table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["front_table", "metric_of", "relative_figures"]


def metric_of(metrics: Mapping[str, float] | None, name: str) -> float | None:
    """The metric `name` from a metrics dict, or None when it is absent.

    A test split may be keyed by split (MNLI: "matched/accuracy", "mismatched/accuracy"); the first split's value
    is the one shown, as the CLI has always done.
    """
    if not metrics:
        return None
    if name in metrics:
        return float(metrics[name])
    return next((float(v) for k, v in metrics.items() if k.endswith(f"/{name}")), None)


def _params(point: Mapping[str, Any], kind: str) -> float | None:
    params = point.get("params")
    if isinstance(params, Mapping):
        value = params.get(kind)
        return None if value is None else float(value)
    return None if params is None else float(params)


def _millions(count: float) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count / 1e3:.1f} k"


def _size(point: Mapping[str, Any], full: Mapping[str, Any], kind: str) -> str:
    mine, theirs = _params(point, kind), _params(full, kind)
    if mine is None:
        return "-"
    if not theirs:
        return _millions(mine)
    return f"{mine / theirs:4.0%} ({_millions(mine)})"


def _ratio(mine: Any, theirs: Any) -> float | None:
    """mine / theirs, or None where either is missing or not positive (a latency table extrapolated below zero for
    a tiny point has no honest ratio)."""
    if mine is None or theirs is None or float(mine) <= 0 or float(theirs) <= 0:
        return None
    return float(mine) / float(theirs)


def _speedup(point: Mapping[str, Any], full: Mapping[str, Any]) -> str:
    """Latency of the full model / the point's: a speed-up above 1 is a faster point."""
    ratio = _ratio(full.get("latency_ms"), point.get("latency_ms"))
    return "-" if ratio is None else f"{ratio:.2f}x"


def relative_figures(point: Mapping[str, Any], front: Mapping[str, Any], params_kind: str = "encoder"
                     ) -> dict[str, float | None]:
    """A point in human units, against the full model (the front's `reference`): its params, MACs and expected MACs
    as shares of the full model's, its predicted speed-up (the full model's predicted latency / its own) and the
    measured one where the search timed both models (static points, at the latency table's shape), its main
    metric on validation and test as a share of the full model's, and on test its normalised retention
    (metric - majority) / (full - majority), 0 at the majority class and 1 at the full model. None where a figure
    is not known (no test split, no latency, a static point's expected MACs)."""
    full, metric = front.get("reference") or {}, front.get("main_metric")
    expected = (point.get("dynamics") or {}).get("expected_macs")
    figures: dict[str, float | None] = {
        "params": _ratio(_params(point, params_kind), _params(full, params_kind)),
        "macs": _ratio(point.get("macs"), full.get("macs")),
        "expected_macs": _ratio(expected, full.get("macs")),
        "speedup": _ratio(full.get("latency_ms"), point.get("latency_ms")),
        "measured_speedup": _ratio(full.get("measured_latency_ms"), point.get("measured_latency_ms")),
    }
    for split in ("validation", "test"):
        mine, theirs = metric_of(point.get(split), metric or ""), metric_of(full.get(split), metric or "")
        figures[f"{split}_share"] = _ratio(mine, theirs)
    test, full_test = metric_of(point.get("test"), metric or ""), metric_of(full.get("test"), metric or "")
    majority = metric_of(front.get("majority_baseline"), metric or "")
    figures["normalised_retention"] = (None if None in (test, full_test, majority) or full_test == majority
                                       else (test - majority) / (full_test - majority))
    return figures


def _score(value: float | None, full: float | None, *, is_full: bool) -> str:
    if value is None:
        return "-"
    if is_full or full is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({value - full:+.3f})"


def _refined(point: Mapping[str, Any], metric: str) -> str:
    """The refined model's test metric, marked when downloads keep serving the slice (it was not better)."""
    refined = point.get("refined")
    if not isinstance(refined, Mapping):
        return "-"
    value = metric_of(refined.get("test"), metric)
    text = "-" if value is None else f"{value:.3f}"
    return text if refined.get("kept", True) else f"{text} (slice kept)"


def _exits(point: Mapping[str, Any]) -> str:
    """An exiting point's threshold and mean exit layer (of its kept layers); "full depth" without a threshold."""
    config = point.get("config") or {}
    if config.get("exit_threshold") is None:
        return "full depth"
    layer = (point.get("dynamics") or {}).get("mean_exit_layer")
    where = "" if layer is None else f", exit {float(layer):.2f}/{len(config.get('layers', ()))}"
    opened = config.get("open_exits")
    reads = "" if opened is None else f", reads {','.join(str(i) for i in opened)}"
    return f"τ {float(config['exit_threshold']):g}{where}{reads}"


def _format(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-align the first column (names), right-align the rest, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    cells = [[c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
             for row in rows]
    return ["  ".join(row).rstrip() for row in cells]


def front_table(front: Mapping[str, Any], positions: Sequence[int] | None = None,
                params_kind: str = "encoder") -> str:
    """The front as text: one line about the task, then a row for the full model and one per front point.

    Columns: params as a share of the full model's (`params_kind`: "encoder", what pruning removes, or
    "total"), speed-up (the full model's predicted latency / the point's), the main metric on validation and on
    test with its difference to the full model, the exit threshold and mean exit layer when any point exits early,
    and the refined model's test metric when any point was refined.
    `positions` picks points by their index in `front["points"]` (default: all).
    """
    for key in ("points", "reference", "main_metric"):
        if key not in front:
            raise ValueError(f"front_table: the front has no {key!r} (expected front.json or GET .../pareto)")
    metric, full = front["main_metric"], front["reference"]
    points = front["points"]
    chosen = range(len(points)) if positions is None else positions
    full_val, full_test = metric_of(full.get("validation"), metric), metric_of(full.get("test"), metric)
    refined = any(isinstance(points[k].get("refined"), Mapping) for k in chosen)
    exiting = any((points[k].get("config") or {}).get("exit_threshold") is not None for k in chosen)
    header = ["point", f"{params_kind} params", "speed-up", f"val {metric}", f"test {metric}"]
    rows = [header + (["exits"] if exiting else []) + (["refined test"] if refined else [])]
    for name, point in [("full", full)] + [(str(k), points[k]) for k in chosen]:
        is_full = name == "full"
        row = [name, _size(point, full, params_kind), "1.00x" if is_full else _speedup(point, full),
               _score(metric_of(point.get("validation"), metric), full_val, is_full=is_full),
               _score(metric_of(point.get("test"), metric), full_test, is_full=is_full)]
        rows.append(row + ([_exits(point)] if exiting else []) + ([_refined(point, metric)] if refined else []))
    return "\n".join([_title(front, metric, len(chosen))] + ["  " + line for line in _format(rows)])


def _title(front: Mapping[str, Any], metric: str, shown: int) -> str:
    task = front.get("task", "the task")
    parts = [f"Pareto front of {task}: {shown} of {len(front['points'])} points"]
    if front.get("hypervolume") is not None:
        parts.append(f"hypervolume {float(front['hypervolume']):.4f}")
    majority = metric_of(front.get("majority_baseline"), metric)
    if majority is not None:
        parts.append(f"majority class scores {metric} {majority:.3f} on test")
    return "; ".join(parts)
