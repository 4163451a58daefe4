"""search.pareto: dominance, normalisation and exact hypervolumes on hand-made fronts and brute-force grids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from search.pareto import (
    DEFAULT_REFERENCE,
    ParetoError,
    distinct_non_dominated,
    first_layers,
    hypervolume,
    hypervolume_history,
    non_dominated,
    normalize,
    pareto_front_indices,
)


def _grid_hypervolume(F: np.ndarray, reference: np.ndarray) -> int:
    """Exact volume for integer points and an integer reference: count the dominated unit cells."""
    lows = F.min(axis=0).astype(int)
    count = 0
    for cell in itertools.product(*(range(lo, int(r)) for lo, r in zip(lows, reference, strict=True))):
        if np.any(np.all(F <= np.array(cell), axis=1)):
            count += 1
    return count


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def _ranks_by_definition(F: np.ndarray) -> list[int]:
    """Non-dominated sorting straight from the definition: peel off the points nothing left dominates."""
    ranks, left, rank = [-1] * len(F), set(range(len(F))), 0
    while left:
        layer = {i for i in left if not any(_dominates(F[j], F[i]) for j in left)}
        for i in layer:
            ranks[i] = rank
        left -= layer
        rank += 1
    return ranks


def test_non_dominated_keeps_every_copy_and_drops_weakly_dominated_points():
    F = [[1, 3], [2, 2], [3, 1], [3, 3], [2, 2], [1, 4]]
    assert non_dominated(F).tolist() == [True, True, True, False, True, False]
    assert pareto_front_indices(F).tolist() == [0, 1, 2, 4]
    assert non_dominated(np.array([[1.0, 1.0], [1.0, 1.0]])).tolist() == [True, True]


def test_non_dominated_in_three_objectives_and_on_empty_input():
    F = [[1, 2, 3], [3, 2, 1], [2, 2, 2], [2, 3, 3], [1, 2, 3]]
    assert non_dominated(F).tolist() == [True, True, True, False, True]
    assert non_dominated(np.empty((0, 2))).shape == (0,)
    assert pareto_front_indices([]).tolist() == []


def test_first_layers_peel_the_fronts_off_in_order():
    F = [[1, 3], [2, 2], [3, 3], [3, 1], [4, 4], [2, 4], [5, 5]]  # layers: {0, 1, 3}, {2, 5}, {4}, {6}
    assert first_layers(F, 1).tolist() == [0, 1, 3]
    assert first_layers(F, 2).tolist() == [0, 1, 2, 3, 5]
    assert first_layers(F, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert first_layers(F, 10).tolist() == list(range(7))
    assert first_layers(np.empty((0, 2)), 2).tolist() == []
    assert first_layers(F, 0).tolist() == []


def test_first_layers_by_group_peel_whole_groups_so_near_copies_crowd_out_nothing():
    # group a's near-copies would fill the first two layers point by point; by group, layer 2 is group c's
    F = [[1, 3], [1.01, 3.01], [1.02, 3.02], [3, 1], [2, 3.5], [5, 5]]
    groups = ["a", "a", "a", "b", "c", "d"]
    assert first_layers(F, 2).tolist() == [0, 1, 3]
    assert first_layers(F, 1, groups).tolist() == [0, 1, 2, 3]  # every point of a group on the front
    assert first_layers(F, 2, groups).tolist() == [0, 1, 2, 3, 4]
    assert first_layers(F, 9, groups).tolist() == list(range(6))
    assert first_layers(F, 2, list(range(6))).tolist() == first_layers(F, 2).tolist()  # one point per group
    with pytest.raises(ParetoError, match="5 groups for 6 points"):
        first_layers(F, 1, groups[:5])


def test_first_layers_give_copies_one_rank_in_three_objectives():
    F = [[1, 1, 3], [2, 2, 2], [1, 1, 3], [2, 2, 3], [3, 3, 3], [2, 2, 3]]  # layers: {0, 1, 2}, {3, 5}, {4}
    assert first_layers(F, 1).tolist() == [0, 1, 2]
    assert first_layers(F, 2).tolist() == [0, 1, 2, 3, 5]
    assert first_layers(F, 3).tolist() == list(range(6))


def test_the_distinct_front_keeps_the_first_of_identical_points():
    F = [[1, 1, 3], [2, 2, 2], [1, 1, 3], [2, 2, 3], [2, 2, 2]]
    assert non_dominated(F).tolist() == [True, True, True, False, True]  # every copy
    assert distinct_non_dominated(F).tolist() == [True, True, False, False, False]
    assert distinct_non_dominated(np.empty((0, 2))).tolist() == []


@pytest.mark.parametrize("m", [2, 3, 4])
def test_dominance_and_sorting_agree_with_the_definition_on_random_ties(m):
    rng = np.random.default_rng(10 + m)
    for _ in range(5):
        F = rng.integers(0, 4, size=(30, m)).astype(float)  # a small grid: many ties and copies
        ranks = np.array(_ranks_by_definition(F))
        assert non_dominated(F).tolist() == (ranks == 0).tolist()
        for count in (1, 2, 3):
            assert first_layers(F, count).tolist() == np.flatnonzero(ranks < count).tolist()


def test_bad_input_raises_a_value_error():
    with pytest.raises(ParetoError, match="NaN"):
        non_dominated([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="2-D"):
        hypervolume([1.0, 2.0], 3.0)
    with pytest.raises(ParetoError, match="reference"):
        hypervolume([[1.0, 2.0]], [3.0, 3.0, 3.0])


def test_hypervolume_of_a_2d_staircase():
    front = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(front, [4, 4]) == pytest.approx(6.0)
    assert hypervolume(front, 4) == pytest.approx(6.0)  # a scalar reference applies to every objective
    # dominated points, duplicates, points on or beyond the reference add nothing
    noisy = front + [[2, 2], [3, 3], [1, 3], [0, 5], [4, 0], [5, 5], [3.5, 4]]
    assert hypervolume(noisy, [4, 4]) == pytest.approx(6.0)
    assert hypervolume([[0, 5], [5, 0]], [4, 4]) == 0.0
    assert hypervolume(np.empty((0, 2)), [4, 4]) == 0.0


def test_hypervolume_in_one_and_three_objectives():
    assert hypervolume([[0.25], [0.5], [2.0]], 1.0) == pytest.approx(0.75)
    # boxes 2*2*1 and 1*1*2 overlapping in 1*1*1
    assert hypervolume([[1, 1, 2], [2, 2, 1]], [3, 3, 3]) == pytest.approx(5.0)
    assert hypervolume([[1, 1, 2], [2, 2, 1], [2, 2, 2], [1, 1, 2], [3, 0, 0]], [3, 3, 3]) == pytest.approx(5.0)


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_hypervolume_matches_a_brute_force_grid_count(m):
    rng = np.random.default_rng(m)
    side = 6 if m < 5 else 4
    reference = np.full(m, side)
    for _ in range(5):
        F = rng.integers(0, side + 1, size=(8, m)).astype(float)  # some on or beyond the reference
        assert hypervolume(F, reference) == pytest.approx(_grid_hypervolume(F, reference))


def test_normalize_uses_the_fixed_bounds_and_keeps_values_outside_them():
    F = [[0.2, 50.0], [1.0, 150.0], [0.0, 0.0]]
    np.testing.assert_allclose(normalize(F, [0.0, 0.0], [1.0, 100.0]), [[0.2, 0.5], [1.0, 1.5], [0.0, 0.0]])
    np.testing.assert_allclose(normalize([[3.0, 5.0]], 1.0, 5.0), [[0.5, 1.0]])
    with pytest.raises(ParetoError, match="upper > lower"):
        normalize(F, [0.0, 100.0], [1.0, 100.0])


def test_reference_convention_gives_a_front_touching_the_bounds_some_volume():
    assert DEFAULT_REFERENCE == 1.1
    corners = normalize([[0.0, 10.0], [1.0, 0.0]], [0.0, 0.0], [1.0, 10.0])  # (0, 1) and (1, 0)
    assert hypervolume(corners) == pytest.approx(1.1 * 0.1 + 0.1 * 1.1 - 0.1 * 0.1)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_history_is_non_decreasing_and_ends_at_the_final_volume(m):
    rng = np.random.default_rng(7)
    lower, upper = np.zeros(m), np.full(m, 10.0)
    F = rng.uniform(0.0, 12.0, size=(40, m))  # some points beyond the bounds and the reference
    history = hypervolume_history(F, DEFAULT_REFERENCE, lower, upper)
    assert len(history) == len(F)
    assert all(b >= a for a, b in itertools.pairwise(history))
    normalised = normalize(F, lower, upper)
    assert history[-1] == pytest.approx(hypervolume(normalised, DEFAULT_REFERENCE))
    for k in (1, 5, 17):  # the incremental update agrees with recomputing from scratch
        assert history[k - 1] == pytest.approx(hypervolume(normalised[:k], DEFAULT_REFERENCE))


def test_hypervolume_history_edge_cases():
    assert hypervolume_history(np.empty((0, 2)), 1.1, 0.0, 1.0) == []
    assert hypervolume_history([[0.5, 0.5], [2.0, 0.0], [0.5, 0.5]]) == pytest.approx([0.36, 0.36, 0.36])
    with pytest.raises(ParetoError, match="both"):
        hypervolume_history([[0.5, 0.5]], 1.1, 0.0, None)
