"""Multi-objective local search: mutate a random member of the current Pareto front.

A Pareto local search in the spirit of Paquete, Chiarandini & Stützle (2004): after the ``initial`` vectors
(and uniform samples until the first result), each ask picks a uniformly random non-dominated vector among
those told so far and changes 1..``max_changes`` of its free coordinates by a random step of 1..``max_step``
(default: a fifth of the dimension's range, at least 1), clipped to the bounds. Up to ``max_tries`` mutations
are drawn to find a vector never told before; failing that, the last mutation is asked anyway (so the search
never stalls on a small, exhausted space). With probability ``random_prob`` a uniform sample is asked instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..pareto import non_dominated
from .base import Optimizer, OptimizerConfigError, Vector


class LocalSearchOptimizer(Optimizer):
    """Pareto local search over integer vectors; deterministic given ``seed`` and the told values."""

    name = "local"

    def __init__(
        self,
        lower: Sequence[int],
        upper: Sequence[int],
        num_objectives: int,
        *,
        seed: int = 0,
        initial: Sequence[Sequence[int]] = (),
        max_changes: int = 2,
        max_step: int | None = None,
        max_tries: int = 50,
        random_prob: float = 0.0,
    ) -> None:
        super().__init__(lower, upper, num_objectives, seed=seed, initial=initial)
        if not isinstance(max_changes, int) or max_changes < 1:
            raise OptimizerConfigError(f"max_changes must be a positive integer, got {max_changes!r}")
        if max_step is not None and (not isinstance(max_step, int) or max_step < 1):
            raise OptimizerConfigError(f"max_step must be a positive integer or None, got {max_step!r}")
        if not isinstance(max_tries, int) or max_tries < 1:
            raise OptimizerConfigError(f"max_tries must be a positive integer, got {max_tries!r}")
        if not 0.0 <= float(random_prob) <= 1.0:
            raise OptimizerConfigError(f"random_prob must be in [0, 1], got {random_prob!r}")
        self.max_changes, self.max_tries, self.random_prob = max_changes, max_tries, float(random_prob)
        ranges = np.array(self.upper) - np.array(self.lower)
        self._max_steps = np.maximum(1, ranges // 5 if max_step is None else np.minimum(max_step, ranges))
        self._rng = np.random.default_rng(self.seed)
        self._queue = self._initial_queue()
        self._results: dict[Vector, tuple[float, ...]] = {}  # latest objectives of every told vector
        self._front: list[Vector] = []  # the non-dominated vectors among them, in the order they were told

    def _ask(self) -> Vector:
        if self._queue:
            return self._queue.popleft()
        if not self._results or (self.random_prob and self._rng.random() < self.random_prob):
            return self._random_vector(self._rng)
        free = self.free_dimensions
        candidate: Vector = self._front[0]
        for _ in range(self.max_tries):
            parent = self._front[int(self._rng.integers(len(self._front)))]
            candidate = self._mutate(parent, free)
            if candidate not in self._results:
                break
        return candidate

    def _mutate(self, parent: Vector, free: list[int]) -> Vector:
        child = np.array(parent)
        count = int(self._rng.integers(1, min(self.max_changes, len(free)) + 1))
        for i in self._rng.choice(free, size=count, replace=False):
            step = int(self._rng.integers(1, self._max_steps[i] + 1))
            sign = 1 if self._rng.random() < 0.5 else -1
            # at a bound a step outwards would be clipped to no change: step inwards instead
            if (sign > 0 and child[i] >= self.upper[i]) or (sign < 0 and child[i] <= self.lower[i]):
                sign = -sign
            child[i] = child[i] + sign * step
        return self._clip(child)

    def _tell(self, vector: Vector, objectives: tuple[float, ...]) -> None:
        previous = self._results.get(vector)
        self._results[vector] = objectives
        if previous == objectives:
            return
        # A point a former front member dominates stays dominated, so the front and the new point are enough,
        # unless a vector was told again with other values (its old values may have dominated others): then all.
        candidates = list(self._results) if previous is not None else [*self._front, vector]
        self._front = self._non_dominated(candidates)

    def _non_dominated(self, vectors: list[Vector]) -> list[Vector]:
        """The non-dominated vectors among `vectors`, in their order; copies of a front point all stay."""
        keep = non_dominated(np.array([self._results[v] for v in vectors]))
        return [v for v, kept in zip(vectors, keep, strict=True) if kept]

    @property
    def num_unique_told(self) -> int:
        return len(self._results)
