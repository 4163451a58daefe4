"""Pareto fronts and hypervolume for minimised objectives (pure numpy; pymoo's exact HV for 3+ objectives).

Every objective is **minimised** (turn accuracy into error before calling anything here).

Normalisation and reference point, the convention nasprune uses to compare searches:

* each objective is min-max normalised with **fixed bounds given by the caller**, never with the bounds of the
  points seen so far (those move during a search and would make hypervolumes of different runs incomparable):
  ``(f - lower) / (upper - lower)``. Typical bounds: error in ``[0, 1]``; parameter count, MACs and latency as a
  fraction of the full model, i.e. ``[0, full_model_value]``. Normalised values may exceed 1 (a sub-network
  slower than the full model); they are kept, not clipped;
* the reference point is ``DEFAULT_REFERENCE = 1.1`` in every normalised objective, so a front that touches
  the bounds (the full model at 1.0, an error of 1.0) still gets some volume. Points that do not strictly
  dominate the reference point add no volume and are ignored.

The hypervolume (Zitzler & Thiele, 1998) is exact: a sort-and-sweep for two objectives, pymoo's
``pymoo.indicators.hv.HV`` (moocore's exact algorithms) for three or more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_REFERENCE",
    "ParetoError",
    "hypervolume",
    "hypervolume_history",
    "non_dominated",
    "normalize",
    "pareto_front_indices",
]

#: Reference point, in every normalised objective, used for all nasprune hypervolumes.
DEFAULT_REFERENCE = 1.1

ArrayLike = np.ndarray | Sequence[Sequence[float]]


class ParetoError(ValueError):
    """Bad input to a Pareto or hypervolume function (shape, NaN, bounds)."""


def _as_matrix(F: ArrayLike, *, name: str = "F") -> np.ndarray:
    """F as a float (n, m) array; an empty input becomes shape (0, 0) unless it already has columns."""
    array = np.asarray(F, dtype=float)
    if array.size == 0:
        return array.reshape(0, array.shape[1] if array.ndim == 2 else 0)
    if array.ndim != 2:
        raise ParetoError(f"{name} must be a 2-D array of shape (points, objectives), got shape {array.shape}")
    if np.isnan(array).any():
        raise ParetoError(f"{name} contains NaN")
    return array


def _as_vector(value: float | Sequence[float] | np.ndarray, m: int, *, name: str) -> np.ndarray:
    """A scalar or a length-m vector as a float vector of length m."""
    array = np.asarray(value, dtype=float)
    if array.ndim == 0:
        array = np.full(m, float(array))
    if array.shape != (m,):
        raise ParetoError(f"{name} must be a scalar or have {m} entries, got shape {array.shape}")
    if np.isnan(array).any():
        raise ParetoError(f"{name} contains NaN")
    return array


def non_dominated(F: ArrayLike) -> np.ndarray:
    """Boolean mask of the points of ``F`` (n, m) that no other point dominates (all objectives minimised).

    ``a`` dominates ``b`` when ``a <= b`` in every objective and ``a < b`` in at least one. Identical points do
    not dominate each other, so **every copy** of a non-dominated point is kept. O(n^2 m) time, O(n m) memory.
    """
    array = _as_matrix(F)
    n = array.shape[0]
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        point = array[i]
        dominators = np.all(array <= point, axis=1) & np.any(array < point, axis=1)
        mask[i] = not dominators.any()
    return mask


def pareto_front_indices(F: ArrayLike) -> np.ndarray:
    """Indices (ascending) of the non-dominated points of ``F``; all copies of duplicates are included."""
    return np.flatnonzero(non_dominated(F))


def first_layers(F: ArrayLike, count: int) -> np.ndarray:
    """Indices (ascending) of the points of ``F`` in its first ``count`` non-dominated layers: the front, then the
    front of what is left, and so on (NSGA-II's non-dominated sorting, stopped after ``count`` ranks)."""
    array = _as_matrix(F)
    left, chosen = np.arange(array.shape[0]), []
    for _ in range(count):
        if not len(left):
            break
        mask = non_dominated(array[left])
        chosen.append(left[mask])
        left = left[~mask]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def normalize(F: ArrayLike, lower: float | Sequence[float], upper: float | Sequence[float]) -> np.ndarray:
    """Per-objective min-max normalisation ``(F - lower) / (upper - lower)`` with fixed bounds.

    ``lower``/``upper`` are scalars or one value per objective, with ``upper > lower``. Values outside the
    bounds map outside ``[0, 1]`` and are kept as they are (not clipped).
    """
    array = _as_matrix(F)
    m = array.shape[1]
    lo = _as_vector(lower, m, name="lower")
    hi = _as_vector(upper, m, name="upper")
    if not np.all(hi > lo):
        raise ParetoError(f"normalisation bounds need upper > lower in every objective, got {lo} and {hi}")
    return (array - lo) / (hi - lo)


def _hypervolume_2d(points: np.ndarray, reference: np.ndarray) -> float:
    """Sweep over points sorted by the first objective; dominated points (and copies) add nothing."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    volume, best_second = 0.0, reference[1]
    for f1, f2 in points[order]:
        if f2 < best_second:
            volume += (reference[0] - f1) * (best_second - f2)
            best_second = f2
    return float(volume)


def hypervolume(F: ArrayLike, reference: float | Sequence[float] = DEFAULT_REFERENCE) -> float:
    """Exact volume of the region dominated by ``F`` (n, m) and bounded by ``reference`` (minimisation).

    ``reference`` is a scalar (the same in every objective) or one value per objective. Points that do not
    strictly dominate the reference point are ignored; an empty set has volume 0.
    """
    array = _as_matrix(F)
    if array.shape[0] == 0:
        return 0.0
    m = array.shape[1]
    ref = _as_vector(reference, m, name="reference")
    points = array[np.all(array < ref, axis=1)]
    if points.shape[0] == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:
        return _hypervolume_2d(points, ref)
    from pymoo.indicators.hv import HV

    points = np.unique(points[non_dominated(points)], axis=0)
    return float(HV(ref_point=ref)(points))


def hypervolume_history(
    F_in_order: ArrayLike,
    reference: float | Sequence[float] = DEFAULT_REFERENCE,
    lower: float | Sequence[float] | None = None,
    upper: float | Sequence[float] | None = None,
) -> list[float]:
    """Hypervolume of the normalised points seen so far, after each evaluation (one value per row).

    Rows are normalised with ``normalize(F, lower, upper)`` (skipped when both bounds are ``None``, i.e. the
    objectives are already normalised) and measured against ``reference``. The result is non-decreasing and
    its last value equals ``hypervolume`` of all normalised points. Incremental: the volume is recomputed
    only when a new point enters the current front.
    """
    array = _as_matrix(F_in_order, name="F_in_order")
    if (lower is None) != (upper is None):
        raise ParetoError("give both lower and upper bounds, or neither")
    if lower is not None and array.shape[0]:
        array = normalize(array, lower, upper)
    if array.shape[0] == 0:
        return []
    ref = _as_vector(reference, array.shape[1], name="reference")
    history: list[float] = []
    front = np.empty((0, array.shape[1]))
    volume = 0.0
    for point in array:
        inside = bool(np.all(point < ref))
        weakly_dominated = front.shape[0] > 0 and bool(np.any(np.all(front <= point, axis=1)))
        if inside and not weakly_dominated:
            keep = ~np.all(point <= front, axis=1)  # drop front members the new point weakly dominates
            front = np.vstack([front[keep], point])
            volume = hypervolume(front, ref)
        history.append(volume)
    return history
