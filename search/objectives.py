"""Objectives: plain functions of a sub-network configuration (and the supernet, for `error`).

Every objective is minimised. New objectives (expected exit depth, token keep-rate, ...) are added to
`OBJECTIVES` without touching the optimizers. `Measurements` computes everything a trial records once per
configuration, so an objective is a cheap lookup into it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from supernet.batching import token_counts
from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, count_params, expected_macs, kept_tokens
from supernet.evaluation import evaluate, metrics_at_threshold, predict_exits
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
    # with an exit threshold: where each validation example leaves (1-based kept-layer positions); not stored
    exit_positions: np.ndarray | None = field(default=None, repr=False, compare=False)


# Every exit's logits of the structures seen last, kept for the thresholds still to come: a structure's (E, N, C)
# float32 array is small (a few hundred kB for a BERT on a few thousand examples), and an optimizer proposes the
# thresholds of one structure close together, so a bounded cache loses nothing in practice.
EXIT_LOGITS_BUDGET_BYTES = 256 * 2**20


@dataclass
class ExitPasses:
    """Early exits scored without a forward pass per threshold (COST-EFF's exit rule on stored logits): one pass of
    a structure (its layers, widths and token schedule) records every exit's logits (supernet.evaluation.
    predict_exits), and any exit_threshold is then scored from them (metrics_at_threshold). Exiting never changes a
    later layer, so this is what the exiting forward measures, example by example."""

    supernet: Supernet
    batches: Sequence[Mapping[str, torch.Tensor]]
    task: TaskSpec
    dtype: torch.dtype = torch.float32
    budget_bytes: int = EXIT_LOGITS_BUDGET_BYTES
    passes: int = 0  # forward passes over `batches` so far: one per structure still or once cached
    _logits: OrderedDict[SubNetworkConfig, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=OrderedDict, init=False, repr=False)

    def exit_logits(self, sub: SubNetworkConfig) -> tuple[np.ndarray, np.ndarray]:
        """Every exit's logits (E, N, C) and the labels (N,) of `sub`'s structure, its threshold aside."""
        structure = sub.pass_structure()
        if structure in self._logits:
            self._logits.move_to_end(structure)
            return self._logits[structure]
        with self.supernet.use(structure):
            found = predict_exits(self.supernet, self.batches, dtype=self.dtype)
        self.passes += 1
        self._logits[structure] = found
        while len(self._logits) > 1 and sum(a.nbytes for a, _ in self._logits.values()) > self.budget_bytes:
            self._logits.popitem(last=False)
        return found

    def score(self, sub: SubNetworkConfig) -> tuple[dict[str, float], np.ndarray]:
        """The task's metrics of `sub` with its exit_threshold (None: full depth) and each example's exit, 1-based
        kept-layer positions (N,) in loader order."""
        logits, labels = self.exit_logits(sub)
        return metrics_at_threshold(self.task, logits, labels, sub.exit_threshold, sub.open_positions())


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
    # early exits searched (search.settings.DynamicConfig.exits): every sub-network is scored from its structure's
    # one pass over the exits (ExitPasses), so the thresholds of one structure share a single evaluation
    exits: bool = False
    _cache: dict[SubNetworkConfig, Figures] = field(default_factory=dict, repr=False)
    # derived from the validation batches: rebuilt (never carried over) when a copy measures other batches
    _expected: dict[SubNetworkConfig, float] = field(default_factory=dict, init=False, repr=False)
    # a static sub-network's cost is asked for by several objectives of one trial and by its figures
    _costs: dict[SubNetworkConfig, tuple[dict[str, int], int, float]] = field(default_factory=dict, init=False,
                                                                              repr=False)
    _passes: ExitPasses = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Collate the validation batches once: every evaluation reuses the same tensors.
        self.validation_batches = list(self.validation_batches)
        # the real (unpadded) length of every validation example the search ranks on: what a sub-network that
        # drops tokens costs depends on them, never on the padded width
        self.lengths = token_counts(self.validation_batches)
        if self.params_kind not in ("encoder", "total"):
            raise ObjectiveError(f"params_kind must be 'encoder' or 'total', not {self.params_kind!r}")
        self._passes = ExitPasses(self.supernet, self.validation_batches, self.task, self.dtype)

    @property
    def exit_passes(self) -> int:
        """Forward passes over the exits so far (one per structure while its logits are cached)."""
        return self._passes.passes

    def cost(self, sub: SubNetworkConfig) -> tuple[dict[str, int], int, float]:
        """Size and cost: params, MACs (one input of seq_len tokens through every kept layer) and predicted latency.
        Without evaluating, but for a sub-network with an exit_threshold, whose latency depends on where each
        validation example leaves."""
        if sub.exit_threshold is not None:
            figures = self.figures(sub)
            return figures.params, figures.macs, figures.latency_ms
        if sub not in self._costs:
            self._costs[sub] = self._cost(sub, None)
        return self._costs[sub]

    def _cost(self, sub: SubNetworkConfig, positions: np.ndarray | None) -> tuple[dict[str, int], int, float]:
        config = self.supernet.config
        lengths = self.lengths if self.latency_on_lengths else None
        if positions is None or sub.exit_threshold is None:
            timed, evaluations = sub.unrolled(config)  # a shared stack's steps priced as the layers they run
            latency = self.latency.predict(timed, lengths, evaluations=evaluations)
        else:  # where each example leaves prices it; the fixed shape is every example at seq_len tokens
            latency = self.latency.predict(sub, lengths or [self.seq_len] * len(positions), positions.tolist())
        return count_params(config, sub).to_dict(), count_macs(config, sub, seq_len=self.seq_len), latency

    def expected_macs(self, sub: SubNetworkConfig) -> float:
        """Mean MACs per validation example at its own length, token elimination and early exits included."""
        if sub.exit_threshold is not None:
            return self.figures(sub).dynamics["expected_macs"]
        if sub not in self._expected:
            self._expected[sub] = expected_macs(self.supernet.config, sub, self.lengths)
        return self._expected[sub]

    def dynamics(self, sub: SubNetworkConfig) -> dict[str, Any] | None:
        """What a sub-network that changes with its input costs over the validation examples: expected MACs, the
        mean tokens after each kept layer (token elimination) and the mean exit layer (early exits, 1-based kept
        layer positions); None for a static sub-network."""
        if sub.exit_threshold is not None:
            return self.figures(sub).dynamics
        return self._dynamics(sub, None)

    def _dynamics(self, sub: SubNetworkConfig, positions: np.ndarray | None) -> dict[str, Any] | None:
        if sub.is_static:
            return None
        data: dict[str, Any] = {}
        if positions is None or sub.exit_threshold is None:
            data["expected_macs"] = self.expected_macs(sub)
        else:
            data["expected_macs"] = expected_macs(self.supernet.config, sub, self.lengths,
                                                  exit_layers=positions.tolist())
        if sub.token_keep is not None:
            timed = sub.unrolled(self.supernet.config)[0]  # a shared stack: the tokens after each step
            kept = [kept_tokens(timed, n) for n in self.lengths]
            data["mean_tokens"] = [sum(layer) / len(kept) for layer in zip(*kept, strict=True)]
        if positions is not None and sub.exit_threshold is not None:
            data["mean_exit_layer"] = float(positions.mean())
        return data

    def figures(self, sub: SubNetworkConfig) -> Figures:
        if sub not in self._cache:
            positions = None
            if self.exits or sub.exit_threshold is not None:  # one pass per structure, every threshold from it
                metrics, positions = self._passes.score(sub)
            else:
                metrics = evaluate(self.supernet, self.validation_batches, self.task, sub=sub, dtype=self.dtype)
            # a static sub-network's cost as the objectives read it (cached); an exiting one's from its exits
            params, macs, latency = self.cost(sub) if sub.exit_threshold is None else self._cost(sub, positions)
            self._cache[sub] = Figures(validation=metrics, params=params, macs=macs, latency_ms=latency,
                                       dynamics=self._dynamics(sub, positions),
                                       exit_positions=positions if sub.exit_threshold is not None else None)
        return self._cache[sub]

    def opened(self, sub: SubNetworkConfig) -> SubNetworkConfig:
        """`sub` reading only the exits its validation examples leave at (SubNetworkConfig.open_exits): the others
        cost a check per input and let no one out. No example's exit changes, so neither do its metrics; where no
        example leaves early, the threshold goes too (the same answers at full depth)."""
        if sub.exit_threshold is None or sub.open_exits is not None:
            return sub
        positions = self.figures(sub).exit_positions
        last = len(sub.layers)
        left = sorted({int(p) for p in positions if p < last})
        if not left:
            return replace(sub, exit_threshold=None)
        return replace(sub, open_exits=tuple(sub.layers[p - 1] for p in left))

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
    return m.cost(sub)[2]  # with an exit_threshold: where each validation example leaves


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
