"""Objectives: plain functions of a sub-network configuration (and the supernet, for `error`).

Every objective is minimised. New objectives (expected exit depth, token keep-rate, ...) are added to
`OBJECTIVES` without touching the optimizers. `Measurements` computes everything a trial records once per
configuration, so an objective is a cheap lookup into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, count_params, expected_macs, kept_tokens
from supernet.evaluation import evaluate
from supernet.metrics import error_from_metrics
from supernet.model import Supernet
from supernet.tasks import TaskSpec

from .latency import LatencyTable


class ObjectiveError(ValueError):
    """An unknown objective or option."""


@dataclass
class Figures:
    """What one sub-network measures: validation metrics, size and cost."""

    validation: dict[str, float]
    params: dict[str, int]  # {"encoder": ..., "total": ...}
    macs: int
    latency_ms: float
    # what a sub-network that changes with its input costs on the real validation inputs (None: static)
    dynamics: dict[str, Any] | None = None


@dataclass
class Measurements:
    """Computes and caches the figures of sub-networks of one supernet on one task."""

    supernet: Supernet
    validation_batches: Iterable[Mapping[str, torch.Tensor]]
    task: TaskSpec
    latency: LatencyTable
    seq_len: int = 128
    params_kind: str = "encoder"  # which parameter count the `params` objective uses: encoder or total
    # the precision validation runs in while the search ranks sub-networks (supernet/evaluation.py); the front is
    # evaluated again in float32 (search.job.write_front)
    dtype: torch.dtype = torch.float32
    # latency over the validation examples' own lengths (batched by length) instead of full seq_len batches
    latency_on_lengths: bool = False
    _cache: dict[SubNetworkConfig, Figures] = field(default_factory=dict, repr=False)
    _expected: dict[SubNetworkConfig, float] = field(default_factory=dict, repr=False)
    # cost is asked for by several objectives of one trial (params, macs, latency) and by its figures
    _costs: dict[SubNetworkConfig, tuple[dict[str, int], int, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Collate the validation batches once: every evaluation reuses the same tensors.
        self.validation_batches = list(self.validation_batches)
        # the real (unpadded) length of every validation example the search ranks on: what a sub-network that
        # drops tokens costs depends on them, never on the padded width
        self.lengths = [int(n) for batch in self.validation_batches for n in batch["attention_mask"].sum(dim=1)]
        if self.params_kind not in ("encoder", "total"):
            raise ObjectiveError(f"params_kind must be 'encoder' or 'total', not {self.params_kind!r}")

    def cost(self, sub: SubNetworkConfig) -> tuple[dict[str, int], int, float]:
        """Size and cost without evaluating: params, MACs and predicted latency."""
        if sub not in self._costs:
            config = self.supernet.config
            self._costs[sub] = (count_params(config, sub).to_dict(), count_macs(config, sub, seq_len=self.seq_len),
                                self.latency.predict(sub, self.lengths if self.latency_on_lengths else None))
        return self._costs[sub]

    def expected_macs(self, sub: SubNetworkConfig) -> float:
        """Mean MACs per validation example at its own length, token elimination included."""
        if sub not in self._expected:
            self._expected[sub] = expected_macs(self.supernet.config, sub, self.lengths)
        return self._expected[sub]

    def dynamics(self, sub: SubNetworkConfig) -> dict[str, Any] | None:
        """Expected MACs and the mean tokens after each kept layer, over the validation lengths; None for a
        static sub-network."""
        if sub.is_static:
            return None
        kept = [kept_tokens(sub, n) for n in self.lengths]
        return {"expected_macs": self.expected_macs(sub),
                "mean_tokens": [sum(layer) / len(kept) for layer in zip(*kept, strict=True)]}

    def figures(self, sub: SubNetworkConfig) -> Figures:
        if sub not in self._cache:
            metrics = evaluate(self.supernet, self.validation_batches, self.task, sub=sub, dtype=self.dtype)
            params, macs, latency = self.cost(sub)
            self._cache[sub] = Figures(validation=metrics, params=params, macs=macs, latency_ms=latency,
                                       dynamics=self.dynamics(sub))
        return self._cache[sub]

    def remember(self, sub: SubNetworkConfig, figures: Figures) -> None:
        """Seed the cache with figures measured earlier (e.g. by another search on the same supernet)."""
        self._cache[sub] = figures

    def known(self) -> dict[SubNetworkConfig, Figures]:
        return dict(self._cache)

    def reference(self) -> Figures:
        """The full model's figures, the scale for normalised objectives."""
        return self.figures(self.supernet.full_config())


ObjectiveFn = Callable[[SubNetworkConfig, Measurements], float]


def _error(sub: SubNetworkConfig, m: Measurements) -> float:
    return error_from_metrics(m.task, m.figures(sub).validation)


def _params(sub: SubNetworkConfig, m: Measurements) -> float:
    return float(m.cost(sub)[0][m.params_kind])


def _macs(sub: SubNetworkConfig, m: Measurements) -> float:
    return float(m.cost(sub)[1])


def _latency(sub: SubNetworkConfig, m: Measurements) -> float:
    return m.cost(sub)[2]


def _expected_macs(sub: SubNetworkConfig, m: Measurements) -> float:
    return m.expected_macs(sub)


@dataclass(frozen=True)
class Objective:
    name: str
    fn: ObjectiveFn
    # Normalisation for hypervolume: error is already in [0, 1]; costs are divided by the full model's.
    relative_to_full: bool


OBJECTIVES: dict[str, Objective] = {
    "error": Objective("error", _error, relative_to_full=False),
    "params": Objective("params", _params, relative_to_full=True),
    "macs": Objective("macs", _macs, relative_to_full=True),
    "latency": Objective("latency", _latency, relative_to_full=True),
    "expected_macs": Objective("expected_macs", _expected_macs, relative_to_full=True),
}


def resolve_objectives(names: Iterable[str]) -> list[Objective]:
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ObjectiveError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ObjectiveError(f"need at least two distinct objectives, got {names}")
    return [OBJECTIVES[n] for n in names]


def objective_values(objectives: list[Objective], sub: SubNetworkConfig, m: Measurements) -> dict[str, float]:
    return {o.name: o.fn(sub, m) for o in objectives}


def normalisation_bounds(objectives: list[Objective], m: Measurements) -> tuple[list[float], list[float]]:
    """Lower and upper bounds that map each objective to [0, 1] for hypervolume: error stays as it
    is; params, MACs and latency become fractions of the full model's value."""
    full = m.supernet.full_config()
    upper = [o.fn(full, m) if o.relative_to_full else 1.0 for o in objectives]
    return [0.0] * len(objectives), upper


def figures_dict(figures: Figures) -> dict[str, Any]:
    """The figures as a trial or front point records them ("dynamics" only where there are some, so a static
    sub-network's record is what it always was)."""
    data = {"validation": figures.validation, "params": figures.params, "macs": figures.macs,
            "latency_ms": figures.latency_ms}
    return data | ({"dynamics": figures.dynamics} if figures.dynamics is not None else {})
