"""The ask/tell interface every multi-objective optimizer of nasprune implements.

An optimizer proposes integer vectors within inclusive bounds (the encoding of a `supernet.space.SearchSpace`)
and learns from their objective values, all minimised. `ask()` and `tell()` strictly alternate: one vector is
outstanding at a time and the caller tells exactly the vector it was asked (it may take the values from a cache
instead of evaluating again). The ``initial`` vectors (duplicates dropped) are asked first, in order. Same seed
and same told values give the same sequence of asks; nothing reads global random state the caller can perturb.
"""

from __future__ import annotations

import logging
import math
import operator
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

logger = logging.getLogger(__name__)

Vector = tuple[int, ...]


class OptimizerError(Exception):
    """Base class of the errors raised by `search.optimizers`."""


class OptimizerConfigError(OptimizerError, ValueError):
    """Bad bounds, initial vectors, objectives or options."""


class OptimizerStateError(OptimizerError, RuntimeError):
    """`ask()`/`tell()` called out of turn, or with a vector that was not the one asked."""


class MissingDependencyError(OptimizerError, ImportError):
    """An optional dependency of an optimizer is not installed."""


def _as_int(value: object, what: str) -> int:
    """An integral value as int; floats are accepted only when integral (2.0), bools never."""
    if isinstance(value, bool):
        raise OptimizerConfigError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # int, numpy integers
    except TypeError:
        pass
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise OptimizerConfigError(f"{what} must be an integer, got {value!r}")


class Optimizer(ABC):
    """Ask/tell optimizer over integer vectors ``lower <= x <= upper`` (inclusive), all objectives minimised.

    Subclasses implement `_ask` and `_tell`; this class validates inputs and outputs, enforces the alternation
    and answers on its own when the space has a single point (subclasses then never see an ask). `told` is the
    list of ``(vector, objectives)`` told so far, in order.
    """

    name: ClassVar[str]

    def __init__(
        self,
        lower: Sequence[int],
        upper: Sequence[int],
        num_objectives: int,
        *,
        seed: int = 0,
        initial: Sequence[Sequence[int]] = (),
    ) -> None:
        self.lower: Vector = tuple(_as_int(v, f"lower[{i}]") for i, v in enumerate(lower))
        self.upper: Vector = tuple(_as_int(v, f"upper[{i}]") for i, v in enumerate(upper))
        if not self.lower:
            raise OptimizerConfigError("the search space needs at least one dimension")
        if len(self.lower) != len(self.upper):
            raise OptimizerConfigError(f"lower has {len(self.lower)} entries but upper has {len(self.upper)}")
        for i, (lo, hi) in enumerate(zip(self.lower, self.upper, strict=True)):
            if lo > hi:
                raise OptimizerConfigError(f"dimension {i}: lower bound {lo} is above upper bound {hi}")
        self.num_objectives = _as_int(num_objectives, "num_objectives")
        if self.num_objectives < 1:
            raise OptimizerConfigError(f"num_objectives must be at least 1, got {self.num_objectives}")
        self.seed = _as_int(seed, "seed")
        if self.seed < 0:
            raise OptimizerConfigError(f"seed must be non-negative, got {self.seed}")
        unique: dict[Vector, None] = {}
        for k, vector in enumerate(initial):
            unique.setdefault(self._check_vector(vector, f"initial[{k}]"), None)
        if len(unique) < len(initial):
            logger.warning("%s: dropped %d duplicate initial vector(s)", type(self).__name__,
                           len(initial) - len(unique))
        self.initial: tuple[Vector, ...] = tuple(unique)
        self.told: list[tuple[Vector, tuple[float, ...]]] = []
        self._pending: Vector | None = None

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return len(self.lower)

    @property
    def space_size(self) -> int:
        """Number of distinct vectors in the space (an exact Python int)."""
        return math.prod(hi - lo + 1 for lo, hi in zip(self.lower, self.upper, strict=True))

    @property
    def free_dimensions(self) -> list[int]:
        """Indices of the dimensions whose lower and upper bounds differ."""
        return [i for i, (lo, hi) in enumerate(zip(self.lower, self.upper, strict=True)) if lo < hi]

    # -- public interface ------------------------------------------------------------------------------------
    def ask(self) -> list[int]:
        """The next vector to evaluate (the ``initial`` vectors first, in order)."""
        if self._pending is not None:
            raise OptimizerStateError(f"ask() called again before tell() of {list(self._pending)}")
        if self.space_size == 1:
            vector = self.lower
        else:
            vector = self._check_vector(self._ask(), "proposed vector", internal=True)
        self._pending = vector
        return list(vector)

    def tell(self, vector: Sequence[int], objectives: Sequence[float]) -> None:
        """Report the objectives (all minimised, finite) of the vector the last `ask()` returned."""
        if self._pending is None:
            raise OptimizerStateError("tell() called without an outstanding ask()")
        told = self._check_vector(vector, "told vector")
        if told != self._pending:
            raise OptimizerStateError(f"told {list(told)} but the outstanding vector is {list(self._pending)}")
        values = self._check_objectives(objectives)
        if self.space_size > 1:
            self._tell(told, values)
        self._pending = None
        self.told.append((told, values))

    # -- for subclasses --------------------------------------------------------------------------------------
    @abstractmethod
    def _ask(self) -> Sequence[int]:
        """Propose a vector; called only when no vector is outstanding and the space has 2+ points."""

    @abstractmethod
    def _tell(self, vector: Vector, objectives: tuple[float, ...]) -> None:
        """Learn from the objectives of the vector the last `_ask` proposed."""

    def _initial_queue(self) -> deque[Vector]:
        return deque(self.initial)

    def _random_vector(self, rng: np.random.Generator) -> Vector:
        """A uniform random vector within bounds."""
        return tuple(int(v) for v in rng.integers(self.lower, self.upper, endpoint=True))

    def _clip(self, values: Sequence[float]) -> Vector:
        """Round to the nearest integer and clip to the bounds."""
        rounded = np.clip(np.rint(np.asarray(values, dtype=float)), self.lower, self.upper)
        return tuple(int(v) for v in rounded)

    # -- validation ------------------------------------------------------------------------------------------
    def _check_vector(self, vector: Sequence[int], what: str, *, internal: bool = False) -> Vector:
        error = OptimizerError if internal else OptimizerConfigError
        try:
            values = tuple(_as_int(v, f"{what}[{i}]") for i, v in enumerate(vector))
        except OptimizerConfigError as exc:
            raise error(str(exc)) from None
        if len(values) != self.dimension:
            raise error(f"{what} has {len(values)} entries, the space has {self.dimension}")
        for i, (v, lo, hi) in enumerate(zip(values, self.lower, self.upper, strict=True)):
            if not lo <= v <= hi:
                raise error(f"{what}: value {v} at position {i} outside [{lo}, {hi}]")
        return values

    def _check_objectives(self, objectives: Sequence[float]) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in objectives)
        except (TypeError, ValueError):
            raise OptimizerConfigError(f"objectives must be a sequence of numbers, got {objectives!r}") from None
        if len(values) != self.num_objectives:
            raise OptimizerConfigError(f"expected {self.num_objectives} objective(s), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise OptimizerConfigError(f"objectives must be finite, got {values}")
        return values

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dimension={self.dimension}, num_objectives={self.num_objectives}, "
                f"seed={self.seed}, told={len(self.told)})")
