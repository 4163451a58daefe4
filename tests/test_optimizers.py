"""search.optimizers: one ask/tell contract for every optimizer, plus input checks and the EHVI extra."""

from __future__ import annotations

import numpy as np
import pytest

from search.optimizers import (
    OPTIMIZERS,
    MissingDependencyError,
    OptimizerConfigError,
    OptimizerStateError,
    botorch_available,
    make_optimizer,
    optimizer_options,
)
from search.pareto import hypervolume, normalize

LOWER, UPPER = [0, 0, 0, 0], [5, 5, 5, 5]
INITIAL = [[5, 5, 5, 5], [0, 0, 0, 0], [2, 3, 2, 3]]
BOUNDS = ([0.0, 0.0], [20.0, 100.0])  # normalisation bounds of the toy objectives

needs_botorch = pytest.mark.skipif(not botorch_available(), reason="botorch/gpytorch not installed (nasprune[ehvi])")
# EHVI fits GPs on every ask (seconds each with syne-tune's defaults): cheaper settings, and marked slow
NAMES = [pytest.param(name, marks=[needs_botorch, pytest.mark.slow]) if name == "ehvi" else name
         for name in sorted(OPTIMIZERS)]
TEST_OPTIONS = {"ehvi": {"optimization_strategy": "random", "num_raw_samples": 32}}


def toy(x: list[int]) -> list[float]:
    """Two conflicting objectives; among vectors with the same sum, balanced ones are better in f2."""
    v = np.asarray(x, dtype=float)
    return [float(v.sum()), float(((5.0 - v) ** 2).sum() + 0.5 * np.sin(3.0 * v).sum())]


def run(name: str, seed: int, steps: int, *, perturb: bool = False, lower=LOWER, upper=UPPER, initial=INITIAL,
        **options) -> tuple[list[list[int]], list[list[float]]]:
    opt = make_optimizer(name, lower, upper, 2, seed=seed, initial=initial, **(TEST_OPTIONS.get(name, {}) | options))
    asked, values = [], []
    for step in range(steps):
        if perturb:  # the caller's own use of numpy's global generator must not change the search
            np.random.seed(1000 + step)
            np.random.random(step % 3 + 1)
        x = opt.ask()
        y = toy(x)
        opt.tell(x, y)
        asked.append(x)
        values.append(y)
    return asked, values


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_contract(name):
    steps = 60
    asked, values = run(name, seed=3, steps=steps)
    assert len(asked) == steps
    for x in asked:
        assert len(x) == len(LOWER) and all(type(v) is int for v in x)
        assert all(lo <= v <= hi for v, lo, hi in zip(x, LOWER, UPPER, strict=True))
    assert asked[: len(INITIAL)] == INITIAL  # the initial vectors come first, in order

    # determinism: same seed and same told values give the same asks, whatever the caller does with numpy
    assert run(name, seed=3, steps=steps, perturb=True)[0] == asked
    assert run(name, seed=4, steps=steps)[0] != asked

    # progress: the search improves on the initial vectors' hypervolume
    F = normalize(values, *BOUNDS)
    assert hypervolume(F) > hypervolume(F[: len(INITIAL)]) + 0.05
    assert len({tuple(x) for x in asked}) > steps // 2  # it does not keep asking the same few vectors


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_survives_a_tiny_exhausted_space(name):
    asked, _ = run(name, seed=0, steps=300, lower=[0, 0], upper=[1, 1], initial=[[1, 1]])
    assert len(asked) == 300 and asked[0] == [1, 1]
    assert {tuple(x) for x in asked} <= {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert len({tuple(x) for x in asked}) == 4


@pytest.mark.parametrize("name", NAMES)
def test_constant_dimensions_and_one_point_spaces(name):
    asked, _ = run(name, seed=1, steps=25, lower=[0, 2, 0], upper=[3, 2, 3], initial=[])
    assert all(x[1] == 2 for x in asked) and len({tuple(x) for x in asked}) > 3
    asked, _ = run(name, seed=1, steps=5, lower=[1, 2], upper=[1, 2], initial=[[1, 2]])
    assert asked == [[1, 2]] * 5


@pytest.mark.parametrize("name", NAMES)
def test_optimizers_leave_the_global_random_state_alone(name):
    torch = pytest.importorskip("torch")
    np.random.seed(123)
    torch.manual_seed(123)
    expected = np.random.random(3), torch.rand(3)
    np.random.seed(123)
    torch.manual_seed(123)
    run(name, seed=0, steps=12)
    np.testing.assert_array_equal(np.random.random(3), expected[0])
    assert torch.equal(torch.rand(3), expected[1])


def test_ask_and_tell_must_alternate_with_the_asked_vector():
    opt = make_optimizer("local", LOWER, UPPER, 2, initial=INITIAL)
    with pytest.raises(OptimizerStateError, match="without an outstanding"):
        opt.tell(INITIAL[0], [1.0, 2.0])
    x = opt.ask()
    with pytest.raises(OptimizerStateError, match="before tell"):
        opt.ask()
    with pytest.raises(OptimizerStateError, match="outstanding vector"):
        opt.tell(INITIAL[1], [1.0, 2.0])
    with pytest.raises(OptimizerConfigError, match="2 objective"):
        opt.tell(x, [1.0])
    with pytest.raises(OptimizerConfigError, match="finite"):
        opt.tell(x, [1.0, float("nan")])
    opt.tell(np.array(x), (np.float32(1.0), 2))  # numpy values are fine
    assert opt.told == [(tuple(INITIAL[0]), (1.0, 2.0))]
    assert opt.ask() == INITIAL[1]


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="nsga2"):
        make_optimizer("nope", LOWER, UPPER, 2)
    with pytest.raises(OptimizerConfigError, match="population_size"):
        make_optimizer("morea", LOWER, UPPER, 2, pop_size=10)
    with pytest.raises(OptimizerConfigError, match="outside"):
        make_optimizer("nsga2", LOWER, UPPER, 2, initial=[[0, 0, 0, 6]])
    with pytest.raises(OptimizerConfigError, match="integer"):
        make_optimizer("random", LOWER, UPPER, 2, initial=[[0, 0, 0, 1.5]])
    with pytest.raises(OptimizerConfigError, match="above upper"):
        make_optimizer("local", [0, 3], [5, 2], 2)
    with pytest.raises(OptimizerConfigError, match="population_size"):
        make_optimizer("nsga2", LOWER, UPPER, 2, population_size=1)
    assert "population_size" in optimizer_options("nsga2")


def test_duplicate_initial_vectors_are_asked_once():
    asked, _ = run("nsga2", seed=0, steps=4, initial=[[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2]])
    assert asked[:2] == [[1, 1, 1, 1], [2, 2, 2, 2]] and asked[2] != [1, 1, 1, 1]


@pytest.mark.skipif(botorch_available(), reason="botorch is installed")
def test_ehvi_without_botorch_says_how_to_install_it():
    with pytest.raises(MissingDependencyError, match=r"pip install 'nasprune\[ehvi\]'") as info:
        make_optimizer("ehvi", LOWER, UPPER, 2)
    assert isinstance(info.value, ImportError)
