"""How the benchmark scores a method's points: one hypervolume normalisation and one rule for the best point
under a parameter budget, shared by bench/prove_report.py and bench/search_budget.py so their figures agree.

A point is a dict with "params_fraction" (encoder params / the full encoder's), "validation_error" and
"test_error"; a point without the field a score reads is refused with its name (a score of missing figures
would be a score of something else).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search.pareto import hypervolume

BUDGETS = (0.75, 0.5, 0.33)  # the parameter budgets the issue reports
PARAMS_REF = 1.1  # the hypervolume's reference point on params: 1.1 x the full encoder


def require_fields(points: Sequence[dict[str, Any]], *fields: str) -> None:
    """ValueError naming the first point and field missing or not a number."""
    for k, point in enumerate(points):
        for name in fields:
            if not isinstance(point.get(name), int | float):
                raise ValueError(f"point {k} has no numeric {name!r}: {point.get(name)!r}")


def test_error_hypervolume(points: Sequence[dict[str, Any]], chance_error: float) -> float:
    """Hypervolume of (params fraction / 1.1, test error / majority-class error) under the reference (1, 1): a
    point counts only where it is smaller than 1.1 x the full encoder and better than the majority class."""
    require_fields(points, "params_fraction", "test_error")
    if not chance_error > 0:
        raise ValueError(f"chance_error must be > 0, got {chance_error}")
    return hypervolume([[p["params_fraction"] / PARAMS_REF, p["test_error"] / chance_error] for p in points],
                       reference=[1.0, 1.0])


def best_under(points: Sequence[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The point with at most `budget` of the encoder's params that is best on validation (smaller on ties)."""
    require_fields(points, "params_fraction", "validation_error")
    candidates = [p for p in points if p["params_fraction"] <= budget + 1e-9]
    return min(candidates, key=lambda p: (p["validation_error"], p["params_fraction"])) if candidates else None
