"""Multi-objective optimizers over integer vectors, behind one ask/tell interface (see `base.Optimizer`).

``nsga2`` (pymoo NSGA-II, Deb et al. 2002), ``morea`` (syne-tune multi-objective regularized evolution, Real et
al. 2019), ``random`` (syne-tune random search), ``local`` (Pareto local search) and ``ehvi`` (syne-tune EHVI,
Daulton et al. 2020; needs ``pip install 'nasprune[ehvi]'``). Build one with `make_optimizer`::

    opt = make_optimizer("nsga2", space.lower, space.upper, num_objectives=2, seed=0, initial=[space.upper])
    for _ in range(100):
        x = opt.ask()
        opt.tell(x, evaluate(space.decode(x)))   # every objective minimised
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from ..names import OPTIMIZER_NAMES
from .base import (
    MissingDependencyError,
    Optimizer,
    OptimizerConfigError,
    OptimizerError,
    OptimizerStateError,
)
from .local import LocalSearchOptimizer
from .nsga2 import NSGA2Optimizer
from .synetune import EHVIOptimizer, MOREAOptimizer, RandomSearchOptimizer, botorch_available

OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls
    for cls in (NSGA2Optimizer, MOREAOptimizer, RandomSearchOptimizer, LocalSearchOptimizer, EHVIOptimizer)
}
if tuple(OPTIMIZERS) != OPTIMIZER_NAMES:  # the settings' choices (torch-free) must be exactly these optimizers
    raise ImportError(f"search.names.OPTIMIZER_NAMES {OPTIMIZER_NAMES} differs from the optimizers defined "
                      f"{tuple(OPTIMIZERS)}")

_COMMON = {"self", "lower", "upper", "num_objectives", "seed", "initial"}


def optimizer_options(name: str) -> list[str]:
    """Names of the extra keyword options the optimizer ``name`` accepts."""
    parameters = inspect.signature(_lookup(name).__init__).parameters.values()
    return [p.name for p in parameters if p.name not in _COMMON and p.kind is inspect.Parameter.KEYWORD_ONLY]


def _lookup(name: str) -> type[Optimizer]:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise OptimizerConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None


def make_optimizer(
    name: str,
    lower: Sequence[int],
    upper: Sequence[int],
    num_objectives: int,
    *,
    seed: int = 0,
    initial: Sequence[Sequence[int]] = (),
    **options: Any,
) -> Optimizer:
    """Build the optimizer registered as ``name``; unknown names and options raise `OptimizerConfigError`
    (a ValueError)."""
    cls = _lookup(name)
    signature = inspect.signature(cls.__init__)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(options) - set(signature.parameters) - _COMMON)
    if unknown and not takes_any:
        accepted = ", ".join(optimizer_options(name)) or "none"
        raise OptimizerConfigError(f"optimizer {name!r} does not take option(s) {', '.join(unknown)}; "
                                   f"it takes: {accepted}")
    return cls(lower, upper, num_objectives, seed=seed, initial=initial, **options)


__all__ = [
    "OPTIMIZERS",
    "EHVIOptimizer",
    "LocalSearchOptimizer",
    "MOREAOptimizer",
    "MissingDependencyError",
    "NSGA2Optimizer",
    "Optimizer",
    "OptimizerConfigError",
    "OptimizerError",
    "OptimizerStateError",
    "RandomSearchOptimizer",
    "botorch_available",
    "make_optimizer",
    "optimizer_options",
]
