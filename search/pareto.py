"""Pareto fronts and hypervolume for minimised objectives, on moocore's exact algorithms.

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

The hypervolume (Zitzler & Thiele, 1998) is exact: moocore's ``hypervolume`` (Fonseca, Paquete & López-Ibáñez,
2006; HV3D+/HV4D+ of Guerreiro & Fonseca, 2017), the same C code pymoo's ``HV`` indicator calls. Dominance
checks and non-dominated sorting are moocore's too; this module only fixes nasprune's conventions (minimise,
fixed normalisation bounds, one reference point) and checks the input.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import moocore
import numpy as np

__all__ = [
    "DEFAULT_REFERENCE",
    "ParetoError",
    "first_layers",
    "hypervolume",
    "hypervolume_history",
    "distinct_non_dominated",
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
    not dominate each other, so **every copy** of a non-dominated point is kept (moocore's ``keep_weakly``).
    moocore uses Kung, Luccio & Preparata's (1975) dimension sweep: O(n log n) for up to three objectives.
    """
    array = _as_matrix(F)
    if array.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(array, keep_weakly=True), dtype=bool)


def distinct_non_dominated(F: ArrayLike) -> np.ndarray:
    """`non_dominated` keeping only the first of identical points: the front a user reads, where copies (one
    structure at exit thresholds no example reaches, say) would be the same trade-off listed twice."""
    array = _as_matrix(F)
    mask = non_dominated(array)
    seen: set[bytes] = set()
    for i in np.flatnonzero(mask):
        key = array[i].tobytes()
        if key in seen:
            mask[i] = False
        seen.add(key)
    return mask


def pareto_front_indices(F: ArrayLike) -> np.ndarray:
    """Indices (ascending) of the non-dominated points of ``F``; all copies of duplicates are included."""
    return np.flatnonzero(non_dominated(F))


def first_layers(F: ArrayLike, count: int, groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """Indices (ascending) of the points of ``F`` in its first ``count`` non-dominated layers: the front, then the
    front of what is left, and so on (NSGA-II's non-dominated sorting, Deb et al. 2002, stopped after ``count``
    ranks). Copies of a point share its rank.

    With ``groups`` (one key per point) whole groups are peeled: a layer takes every point of each group with a
    point on the front of what is left. So near-copies of one group (the exit thresholds of one structure) cannot
    fill the layers and crowd out other groups; every point of a chosen group is returned."""
    array = _as_matrix(F)
    if array.shape[0] == 0 or count < 1:
        return np.array([], dtype=int)
    if groups is None:
        return np.flatnonzero(np.asarray(moocore.pareto_rank(array)) < count)
    if len(groups) != array.shape[0]:
        raise ParetoError(f"{len(groups)} groups for {array.shape[0]} points")
    keys = list(groups)
    chosen: set[Hashable] = set()
    for _ in range(count):
        left = [i for i, key in enumerate(keys) if key not in chosen]
        if not left:
            break
        front = np.asarray(moocore.pareto_rank(array[left])) == 0
        chosen |= {keys[i] for i, on in zip(left, front, strict=True) if on}
    return np.array([i for i, key in enumerate(keys) if key in chosen], dtype=int)


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


def _volume(points: np.ndarray, reference: np.ndarray) -> float:
    """moocore's exact hypervolume of checked points (no validation: the history calls it once per new front)."""
    return float(moocore.hypervolume(points, ref=reference))


def hypervolume(F: ArrayLike, reference: float | Sequence[float] = DEFAULT_REFERENCE) -> float:
    """Exact volume of the region dominated by ``F`` (n, m) and bounded by ``reference`` (minimisation).

    ``reference`` is a scalar (the same in every objective) or one value per objective. Points that do not
    strictly dominate the reference point are ignored; an empty set has volume 0.
    """
    array = _as_matrix(F)
    if array.shape[0] == 0:
        return 0.0
    ref = _as_vector(reference, array.shape[1], name="reference")
    points = array[np.all(array < ref, axis=1)]
    return _volume(points, ref) if points.shape[0] else 0.0


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
            volume = _volume(front, ref)
        history.append(volume)
    return history
