"""NSGA-II (Deb, Pratap, Agarwal & Meyarivan, IEEE TEVC 2002) on integer vectors, through pymoo's ask/tell.

pymoo asks a whole generation at a time; this wrapper hands its members out one by one and calls
``algorithm.tell(infills=population)`` once all of them are told. Integer handling follows pymoo's guide:
SBX crossover and polynomial mutation on floats, rounded back by ``RoundingRepair``, duplicates eliminated.
The initial population is the ``initial`` vectors followed by seeded uniform samples (``IntegerRandomSampling``)
up to ``population_size`` (capped at the size of the space). When mating cannot produce a single new vector
(a small, exhausted space) a generation of seeded random vectors, preferring never-told ones, stands in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .base import Optimizer, OptimizerConfigError, Vector

logger = logging.getLogger(__name__)


class NSGA2Optimizer(Optimizer):
    """pymoo NSGA-II with rank-and-crowding survival; deterministic given ``seed`` and the told values."""

    name = "nsga2"

    def __init__(
        self,
        lower: Sequence[int],
        upper: Sequence[int],
        num_objectives: int,
        *,
        seed: int = 0,
        initial: Sequence[Sequence[int]] = (),
        population_size: int = 20,
        crossover_prob: float = 0.9,
        crossover_eta: float = 3.0,
        mutation_eta: float = 3.0,
    ) -> None:
        super().__init__(lower, upper, num_objectives, seed=seed, initial=initial)
        if not isinstance(population_size, int) or population_size < 2:
            raise OptimizerConfigError(f"population_size must be an integer >= 2, got {population_size!r}")
        if not 0.0 <= crossover_prob <= 1.0:
            raise OptimizerConfigError(f"crossover_prob must be in [0, 1], got {crossover_prob!r}")
        if crossover_eta <= 0 or mutation_eta <= 0:
            raise OptimizerConfigError("crossover_eta and mutation_eta must be positive")
        self.population_size = population_size
        self._told_set: set[Vector] = set()
        self._batch: list[Vector] = []
        self._batch_F: list[tuple[float, ...]] = []
        self._population = None
        self._rng = np.random.default_rng([self.seed, 2002])  # fills and fallbacks; pymoo has its own stream
        if self.space_size == 1:
            return  # the base class answers every ask

        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair

        # the generation size is the population size (n_offsprings defaults to it); at most the whole space
        self._effective_size = max(2, min(population_size, self.space_size))
        self._problem = Problem(n_var=self.dimension, n_obj=self.num_objectives, xl=np.array(self.lower, float),
                                xu=np.array(self.upper, float), vtype=int)
        self._algorithm = NSGA2(
            pop_size=self._effective_size,
            sampling=self._initial_population(),
            crossover=SBX(prob=crossover_prob, eta=crossover_eta, vtype=float, repair=RoundingRepair()),
            mutation=PM(prob=1.0, eta=mutation_eta, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        self._algorithm.setup(self._problem, termination=NoTermination(), seed=self.seed, verbose=False)

    def _initial_population(self) -> np.ndarray:
        """The ``initial`` vectors, then distinct seeded uniform samples up to the generation size."""
        from pymoo.operators.sampling.rnd import IntegerRandomSampling

        chosen: dict[Vector, None] = dict.fromkeys(self.initial)
        sampling = IntegerRandomSampling()
        for _ in range(20):
            missing = self._effective_size - len(chosen)
            if missing <= 0:
                break
            X = sampling(self._problem, max(4 * missing, 16), random_state=self._rng).get("X")
            for row in X:
                chosen.setdefault(self._clip(row), None)
                if len(chosen) >= self._effective_size:
                    break
        return np.array(list(chosen), dtype=float)

    def _next_generation(self):
        from pymoo.core.population import Population

        population = None
        if len(self._told_set) < self.space_size:
            population = self._algorithm.ask()
        if population is None or len(population) == 0:
            # mating produced nothing new (pymoo then forces termination): stand in with random vectors
            self._algorithm.termination.force_termination = False
            logger.debug("nsga2: no new offspring; asking %d random vectors instead", self._effective_size)
            population = Population.new(X=np.array([self._fallback_vector() for _ in range(self._effective_size)],
                                                   dtype=float))
        return population

    def _fallback_vector(self) -> Vector:
        candidate = self._random_vector(self._rng)
        for _ in range(50):
            if candidate not in self._told_set:
                break
            candidate = self._random_vector(self._rng)
        return candidate

    def _ask(self) -> Vector:
        if not self._batch:
            self._population = self._next_generation()
            self._batch = [self._clip(x) for x in self._population.get("X")]
            self._batch.reverse()  # pop() from the end hands them out in order
            self._batch_F = []
        return self._batch[-1]

    def _tell(self, vector: Vector, objectives: tuple[float, ...]) -> None:
        self._batch.pop()
        self._batch_F.append(objectives)
        self._told_set.add(vector)
        if not self._batch:
            self._population.set("F", np.array(self._batch_F, dtype=float))
            self._algorithm.tell(infills=self._population)
            self._population, self._batch_F = None, []
