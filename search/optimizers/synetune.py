"""syne-tune searchers behind the ask/tell interface: multi-objective regularized evolution, random search, EHVI.

Each wraps ``SingleFidelityScheduler(config_space, metrics, do_minimize=True, searcher=...)`` in
``syne_tune.optimizer.schedulers.ask_tell_scheduler.AskTellScheduler`` (syne-tune 0.16; no backend). The config
space has one ``randint(lower, upper)`` (inclusive) per dimension, named ``x0 .. x{d-1}``; a dimension with
``lower == upper`` is a constant. Objectives are told as metrics ``y0 .. y{m-1}``. The ``initial`` vectors go
to the searcher's ``points_to_evaluate``, which it returns first, in order.

Determinism: ``SingleFidelityScheduler`` does not hand its ``random_seed`` to a searcher built from a name, so
the seed is passed in ``searcher_kwargs``; and syne-tune samples random configurations with numpy's *global*
generator (``Domain.sample()`` without a ``random_state``, in random search, in the random phase of regularized
evolution and of EHVI). Every call into syne-tune therefore runs with numpy's global state swapped for this
optimizer's own (seeded) state, restored afterwards, so the caller's global state neither perturbs nor is
perturbed by the search. EHVI does the same with torch's global generator (botorch draws from it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..names import botorch_available
from ..pareto import non_dominated
from .base import MissingDependencyError, Optimizer, OptimizerConfigError, Vector

logger = logging.getLogger(__name__)

EHVI_INSTALL_HINT = "pip install 'nasprune[ehvi]'  (botorch 0.15.1 + gpytorch 1.14)"


class SyneTuneOptimizer(Optimizer):
    """Base of the syne-tune wrappers; subclasses build the searcher in `_make_searcher`."""

    def __init__(
        self,
        lower: Sequence[int],
        upper: Sequence[int],
        num_objectives: int,
        *,
        seed: int = 0,
        initial: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__(lower, upper, num_objectives, seed=seed, initial=initial)
        self._numpy_state = np.random.RandomState(self.seed).get_state()
        self._trial = None
        self._ask_tell = None
        if self.space_size == 1:
            return  # the base class answers every ask; syne-tune refuses one-point spaces
        from syne_tune.config_space import randint
        from syne_tune.optimizer.schedulers.ask_tell_scheduler import AskTellScheduler
        from syne_tune.optimizer.schedulers.single_fidelity_scheduler import SingleFidelityScheduler

        self._keys = [f"x{i}" for i in range(self.dimension)]
        self._metrics = [f"y{j}" for j in range(self.num_objectives)]
        config_space: dict[str, Any] = {
            key: randint(lo, hi) if lo < hi else lo
            for key, lo, hi in zip(self._keys, self.lower, self.upper, strict=True)
        }
        points = [dict(zip(self._keys, vector, strict=True)) for vector in self.initial]
        with self._private_random_state():
            searcher = self._make_searcher(config_space, points)
            scheduler = SingleFidelityScheduler(config_space, metrics=self._metrics, do_minimize=True,
                                                searcher=searcher, random_seed=self.seed,
                                                searcher_kwargs=self._searcher_kwargs(points))
            self._ask_tell = AskTellScheduler(base_scheduler=scheduler)

    # -- subclasses ------------------------------------------------------------------------------------------
    def _make_searcher(self, config_space: dict[str, Any], points: list[dict[str, int]]) -> Any:
        """A searcher object, or its syne-tune name (then `_searcher_kwargs` are passed to the factory)."""
        raise NotImplementedError

    def _searcher_kwargs(self, points: list[dict[str, int]]) -> dict[str, Any] | None:
        return {"points_to_evaluate": points, "random_seed": self.seed}

    # -- random state ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _private_random_state(self) -> Iterator[None]:
        """Run with numpy's global generator set to this optimizer's state; restore the caller's afterwards."""
        saved = np.random.get_state()
        np.random.set_state(self._numpy_state)
        try:
            yield
        finally:
            self._numpy_state = np.random.get_state()
            np.random.set_state(saved)

    # -- ask/tell --------------------------------------------------------------------------------------------
    def _ask(self) -> Vector:
        with self._private_random_state():
            self._trial = self._ask_tell.ask()
        config = self._trial.config
        return tuple(int(config[key]) for key in self._keys)

    def _tell(self, vector: Vector, objectives: tuple[float, ...]) -> None:
        with self._private_random_state():
            self._ask_tell.tell(self._trial, dict(zip(self._metrics, objectives, strict=True)))
        self._trial = None


class MOREAOptimizer(SyneTuneOptimizer):
    """Multi-objective regularized evolution (Real et al., AAAI 2019; MO variant as in syne-tune).

    syne-tune's ``MultiObjectiveRegularizedEvolution``: random samples until ``population_size`` results exist,
    then each ask mutates one coordinate of the best (non-dominated sort with an epsilon-net tie break) of
    ``sample_size`` random population members; the oldest member leaves when the population is full.
    """

    name = "morea"

    def __init__(
        self,
        lower: Sequence[int],
        upper: Sequence[int],
        num_objectives: int,
        *,
        seed: int = 0,
        initial: Sequence[Sequence[int]] = (),
        population_size: int = 20,
        sample_size: int = 10,
    ) -> None:
        if not isinstance(population_size, int) or population_size < 1:
            raise OptimizerConfigError(f"population_size must be a positive integer, got {population_size!r}")
        if not isinstance(sample_size, int) or sample_size < 1:
            raise OptimizerConfigError(f"sample_size must be a positive integer, got {sample_size!r}")
        self.population_size, self.sample_size = population_size, sample_size
        super().__init__(lower, upper, num_objectives, seed=seed, initial=initial)

    def _make_searcher(self, config_space: dict[str, Any], points: list[dict[str, int]]) -> Any:
        return "regularized_evolution"

    def _searcher_kwargs(self, points: list[dict[str, int]]) -> dict[str, Any]:
        return {**super()._searcher_kwargs(points), "population_size": self.population_size,
                "sample_size": self.sample_size}


class RandomSearchOptimizer(SyneTuneOptimizer):
    """Uniform random search (syne-tune's ``random_search`` searcher); repeats are possible."""

    name = "random"

    def _make_searcher(self, config_space: dict[str, Any], points: list[dict[str, int]]) -> Any:
        return "random_search"


class EHVIOptimizer(SyneTuneOptimizer):
    """Expected hypervolume improvement (Daulton, Balandat & Bakshy, NeurIPS 2020), syne-tune's botorch searcher.

    Needs the ``ehvi`` extra: ``pip install 'nasprune[ehvi]'`` (botorch 0.15.1 + gpytorch 1.14; botorch 0.18
    fails inside syne-tune 0.16 with a dtype error). After the initial vectors, the first ``num_init_random``
    asks are random; then a GP per objective is fitted and qLogEHVI maximised. Other keyword options go to
    syne-tune's ``ExpectedHyperVolumeImprovement`` (e.g. ``num_restarts``, ``num_raw_samples``,
    ``optimization_strategy="random"`` for cheaper asks).

    Reference point: syne-tune hard-codes it at -2 in the objectives it is told (2 after its negation), whatever
    their scale, so raw objectives >= 0 would leave every point outside the hypervolume box. This wrapper
    therefore tells syne-tune ``f - reference - 2``: ``reference`` (the caller's units; e.g. the value of
    nasprune's normalised reference 1.1 in them) lands exactly on syne-tune's. With ``reference=None``
    (default) it is inferred after every tell like botorch's ``infer_reference_point``: the nadir of the current
    Pareto front plus 10 % of the front's range, and all stored observations are shifted again.
    """

    name = "ehvi"

    def __init__(
        self,
        lower: Sequence[int],
        upper: Sequence[int],
        num_objectives: int,
        *,
        seed: int = 0,
        initial: Sequence[Sequence[int]] = (),
        num_init_random: int = 5,
        reference: float | Sequence[float] | None = None,
        **searcher_options: Any,
    ) -> None:
        if not botorch_available():
            raise MissingDependencyError(f"the 'ehvi' optimizer needs botorch and gpytorch: {EHVI_INSTALL_HINT}")
        if not isinstance(num_init_random, int) or num_init_random < 2:
            raise OptimizerConfigError(f"num_init_random must be an integer >= 2, got {num_init_random!r}")
        self.num_init_random = num_init_random
        self._searcher_options = searcher_options
        self._torch_state = None  # set from the seed on first use
        self._raw: dict[int, tuple[float, ...]] = {}  # trial id -> objectives as told, in order
        super().__init__(lower, upper, num_objectives, seed=seed, initial=initial)
        self.reference: np.ndarray | None = None
        if reference is not None:
            try:
                self.reference = np.broadcast_to(np.asarray(reference, dtype=float), (self.num_objectives,)).copy()
            except ValueError:
                raise OptimizerConfigError(f"reference must be a number or have {self.num_objectives} entries, "
                                           f"got {reference!r}") from None

    def _make_searcher(self, config_space: dict[str, Any], points: list[dict[str, int]]) -> Any:
        from syne_tune.optimizer.schedulers.multiobjective.expected_hyper_volume_improvement import (
            ExpectedHyperVolumeImprovement,
        )

        try:
            return ExpectedHyperVolumeImprovement(config_space, points_to_evaluate=points,
                                                  num_init_random=self.num_init_random, random_seed=self.seed,
                                                  **self._searcher_options)
        except TypeError as exc:
            raise OptimizerConfigError(f"bad option for the 'ehvi' optimizer: {exc}") from None

    def _searcher_kwargs(self, points: list[dict[str, int]]) -> None:
        return None

    @contextlib.contextmanager
    def _private_random_state(self) -> Iterator[None]:
        """numpy's and torch's global generators both swapped for this optimizer's own states."""
        import torch

        if self._torch_state is None:
            self._torch_state = torch.Generator().manual_seed(self.seed).get_state()
        saved = torch.random.get_rng_state()
        torch.random.set_rng_state(self._torch_state)
        try:
            with super()._private_random_state():
                yield
        finally:
            self._torch_state = torch.random.get_rng_state()
            torch.random.set_rng_state(saved)

    def _current_reference(self) -> np.ndarray:
        if self.reference is not None:
            return self.reference
        F = np.array(list(self._raw.values()))
        front = F[non_dominated(F)]
        nadir, ideal = front.max(axis=0), front.min(axis=0)
        span = np.where(nadir > ideal, nadir - ideal, np.maximum(np.abs(nadir), 1.0))
        return nadir + 0.1 * span

    def _tell(self, vector: Vector, objectives: tuple[float, ...]) -> None:
        trial_id = self._trial.trial_id
        self._raw[trial_id] = objectives
        shift = self._current_reference() + 2.0  # f = reference  ->  syne-tune's -2
        super()._tell(vector, tuple(float(v) for v in np.asarray(objectives) - shift))
        # the searcher stores what it was told: re-shift every observation to the current reference
        searcher = self._ask_tell.base_scheduler.searcher
        searcher.trial_observations = {tid: list(np.asarray(raw) - shift) for tid, raw in self._raw.items()}
