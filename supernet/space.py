"""Search spaces over sub-networks, shared by supernet training (sampling) and `search/` (optimizers).

Each space maps a `SubNetworkConfig` to and from a vector of integers with inclusive bounds, samples
random members, and knows its smallest, largest and middle member. Spaces follow Klein et al.
(TMLR 2024): `uniform` (SMALL: layers, heads and units shared by all kept layers, keep the first k),
`per_layer` (MEDIUM: heads and units per layer) and `layers` (LAYER: keep or drop each layer); and
`importance`: how many heads and units the whole network keeps, placed by importance score across layers.
FFN units move in steps of `unit_step` (default: a 24th of the FFN width) to keep the grid small.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace

from .config import ODE_SOLVERS, ConfigError, SubNetworkConfig, SupernetConfig
from .schedules import tilted_schedule
from .settings import SPACE_NAMES


class SearchSpace(ABC):
    name: str

    def __init__(self, config: SupernetConfig, *, unit_step: int | None = None) -> None:
        self.config = config
        self.unit_step = unit_step or max(1, config.intermediate_size // 24)
        if config.intermediate_size % self.unit_step:
            raise ConfigError(f"unit_step {self.unit_step} does not divide {config.intermediate_size} units")
        self.max_unit_steps = config.intermediate_size // self.unit_step

    @property
    @abstractmethod
    def lower(self) -> list[int]: ...

    @property
    @abstractmethod
    def upper(self) -> list[int]: ...

    @abstractmethod
    def decode(self, vector: Sequence[int]) -> SubNetworkConfig: ...

    @abstractmethod
    def encode(self, sub: SubNetworkConfig) -> list[int]: ...

    @property
    def dimension(self) -> int:
        return len(self.lower)

    def _check(self, vector: Sequence[int]) -> list[int]:
        values = [int(v) for v in vector]
        if len(values) != self.dimension:
            raise ConfigError(f"{self.name} space expects {self.dimension} values, got {len(values)}")
        for i, (v, lo, hi) in enumerate(zip(values, self.lower, self.upper, strict=True)):
            if not lo <= v <= hi:
                raise ConfigError(f"{self.name} space: value {v} at position {i} outside [{lo}, {hi}]")
        return values

    def floor(self, fraction: float = 0.0) -> list[int]:
        """The lower bounds raised by `fraction` of each gene's range: supernet training can then skip members
        too small to be of use (see TrainingConfig.sample_floor); the search still spans the whole space."""
        if not 0 <= fraction <= 1:
            raise ConfigError(f"a sampling floor is a fraction in [0, 1], got {fraction}")
        return [lo + math.ceil(fraction * (hi - lo)) for lo, hi in zip(self.lower, self.upper, strict=True)]

    def sample(self, rng: random.Random, floor: float = 0.0) -> SubNetworkConfig:
        return self.decode([rng.randint(lo, hi) for lo, hi in zip(self.floor(floor), self.upper, strict=True)])

    def smallest(self, floor: float = 0.0) -> SubNetworkConfig:
        return self.decode(self.floor(floor))

    def largest(self) -> SubNetworkConfig:
        return self.decode(self.upper)

    def middle(self) -> SubNetworkConfig:
        return self.decode([(lo + hi + 1) // 2 for lo, hi in zip(self.lower, self.upper, strict=True)])

    def evaluation(self, sub: SubNetworkConfig) -> SubNetworkConfig:
        """What evaluating `sub` runs a forward pass of: `sub` itself, unless a gene is scored from another
        member's pass (ExitSpace). A search's budget counts these."""
        return sub

    def scored_alongside(self, sub: SubNetworkConfig) -> list[SubNetworkConfig]:
        """The other members that evaluating `sub` scores with no forward pass of their own: none, unless a gene
        is scored from another member's pass (ExitSpace)."""
        return []

    def _units_to_steps(self, units: int) -> int:
        if units % self.unit_step:
            raise ConfigError(f"{units} units is not a multiple of the unit step {self.unit_step}")
        return units // self.unit_step

    def _uniform_widths(self, config: SupernetConfig) -> None:
        if len(set(config.layer_heads)) > 1 or len(set(config.layer_units)) > 1:
            raise ConfigError(f"the {self.name} space needs a supernet whose layers all have the same width")


class UniformSpace(SearchSpace):
    """[kept layers, heads, unit steps], shared by all kept layers; the first n layers are kept."""

    name = "uniform"

    def __init__(self, config: SupernetConfig, *, unit_step: int | None = None) -> None:
        super().__init__(config, unit_step=unit_step)
        self._uniform_widths(config)

    @property
    def lower(self) -> list[int]:
        return [1, 1, 1]

    @property
    def upper(self) -> list[int]:
        return [self.config.num_layers, self.config.num_heads, self.max_unit_steps]

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        layers, heads, steps = self._check(vector)
        n = self.config.num_layers
        return SubNetworkConfig(layers=tuple(range(layers)), heads=(heads,) * n, units=(steps * self.unit_step,) * n)

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        kept = list(sub.layers)
        if kept != list(range(len(kept))) or len(set(sub.kept_heads())) > 1 or len(set(sub.kept_units())) > 1:
            raise ConfigError(f"{sub} is not in the uniform space (first n layers, equal widths)")
        return self._check([len(kept), sub.heads[0], self._units_to_steps(sub.units[0])])


class PerLayerSpace(SearchSpace):
    """[heads of layer 0..L-1, unit steps of layer 0..L-1]; every layer is kept.

    `min_heads` / `min_unit_steps` (default 1) set the lower bounds; 0 allows pruning a whole block.
    """

    name = "per_layer"

    def __init__(self, config: SupernetConfig, *, unit_step: int | None = None, min_heads: int = 1,
                 min_unit_steps: int = 1) -> None:
        super().__init__(config, unit_step=unit_step)
        self._uniform_widths(config)
        self.min_heads, self.min_unit_steps = min_heads, min_unit_steps

    @property
    def lower(self) -> list[int]:
        n = self.config.num_layers
        return [self.min_heads] * n + [self.min_unit_steps] * n

    @property
    def upper(self) -> list[int]:
        n = self.config.num_layers
        return [self.config.num_heads] * n + [self.max_unit_steps] * n

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        values = self._check(vector)
        n = self.config.num_layers
        return SubNetworkConfig(layers=tuple(range(n)), heads=tuple(values[:n]),
                                units=tuple(s * self.unit_step for s in values[n:]))

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        if len(sub.layers) != self.config.num_layers:
            raise ConfigError(f"{sub} drops layers; the per_layer space keeps all of them")
        return self._check(list(sub.heads) + [self._units_to_steps(u) for u in sub.units])


class LayerSpace(SearchSpace):
    """[keep layer 0?, ..., keep layer L-1?] as 0/1 with full widths. At least one layer is kept:
    a vector of zeros decodes to keeping layer 0 (optimizers may propose it)."""

    name = "layers"

    @property
    def lower(self) -> list[int]:
        return [0] * self.config.num_layers

    @property
    def upper(self) -> list[int]:
        return [1] * self.config.num_layers

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        bits = self._check(vector)
        kept = tuple(i for i, bit in enumerate(bits) if bit) or (0,)
        return SubNetworkConfig(layers=kept, heads=self.config.layer_heads, units=self.config.layer_units)

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        if sub.kept_heads() != [self.config.layer_heads[i] for i in sub.layers] or sub.kept_units() != [
            self.config.layer_units[i] for i in sub.layers
        ]:
            raise ConfigError(f"{sub} prunes heads or units; the layers space keeps full widths")
        return [int(i in sub.layers) for i in range(self.config.num_layers)]

    def floor(self, fraction: float = 0.0) -> list[int]:
        """Per-gene bounds cannot say "at least k layers" (every gene is 0/1, and a raised bound of 1 would keep
        every layer): this space's floor is a number of kept layers, which `smallest` and `sample` apply."""
        if 0 < fraction < 1:
            raise ConfigError("the layers space has no per-gene floor (its genes are 0/1): smallest(fraction) and "
                              "sample(rng, fraction) keep at least ceil(fraction x layers) layers")
        return super().floor(fraction)

    def smallest(self, floor: float = 0.0) -> SubNetworkConfig:
        kept = max(1, math.ceil(floor * self.config.num_layers))  # 0/1 genes: the floor is a number of layers
        return self.decode([1] * kept + [0] * (self.config.num_layers - kept))

    def sample(self, rng: random.Random, floor: float = 0.0) -> SubNetworkConfig:
        if not floor:
            return super().sample(rng)
        minimum = max(1, math.ceil(floor * self.config.num_layers))
        while True:  # rejection: keep at least `minimum` layers (a fraction >= 1/L of draws succeeds)
            bits = [rng.randint(0, 1) for _ in range(self.config.num_layers)]
            if sum(bits) >= minimum:
                return self.decode(bits)


class ImportanceSpace(SearchSpace):
    """[heads kept in the whole network, unit steps kept in the whole network]: the most important heads and FFN
    units across all layers, by the supernet's importance scores (Fisher, as it was ordered), so each layer keeps
    the first k of its own, k set by how its scores compare with the other layers'. Two genes reach the shapes
    Kwon et al.'s masks take (wide bottom layers, top FFNs nearly empty; bench/RESULTS.md), which the uniform space
    cannot express and the per_layer space holds among far too many others. All layers are kept (a layer may
    keep 0 heads or 0 units).

    The scores are the run's (`importance` with per-layer `heads` and `units`, sorted most important first, as
    the weights are); until they are set (`set_importance`, when the supernet is ordered) nothing decodes.
    """

    name = "importance"

    def __init__(self, config: SupernetConfig, *, unit_step: int | None = None, importance=None) -> None:
        super().__init__(config, unit_step=unit_step)
        self._heads: list[tuple[int, int]] | None = None
        self._units: list[tuple[int, int]] | None = None
        if importance is not None:
            self.set_importance(importance)

    def set_importance(self, importance) -> None:
        """Rank every head and unit of the network by score (ties: lower layer, then lower index first)."""
        heads = [[float(x) for x in layer] for layer in importance.heads]
        units = [[float(x) for x in layer] for layer in importance.units]
        if [len(h) for h in heads] != list(self.config.layer_heads) or [len(u) for u in units] != list(
                self.config.layer_units):
            raise ConfigError("importance scores do not match the supernet's layers, heads and units")
        for layer in heads + units:
            if any(a < b for a, b in zip(layer, layer[1:], strict=False)):
                raise ConfigError("importance scores must be sorted most important first, as the weights are")

        def ranking(scores: list[list[float]]) -> list[tuple[int, int]]:
            ranked = sorted((-score, layer, index) for layer, row in enumerate(scores) for index, score in
                            enumerate(row))
            return [(layer, index) for _, layer, index in ranked]

        self._heads, self._units = ranking(heads), ranking(units)

    @property
    def lower(self) -> list[int]:
        return [1, 1]

    @property
    def upper(self) -> list[int]:
        return [sum(self.config.layer_heads), sum(self.config.layer_units) // self.unit_step]

    def _ranked(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        if self._heads is None or self._units is None:
            raise ConfigError("the importance space needs the supernet's importance scores (importance 'fisher'); "
                              "they are set when the supernet is ordered")
        return self._heads, self._units

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        n_heads, steps = self._check(vector)
        ranked_heads, ranked_units = self._ranked()
        heads, units = [0] * self.config.num_layers, [0] * self.config.num_layers
        for layer, _ in ranked_heads[:n_heads]:
            heads[layer] += 1
        for layer, _ in ranked_units[:steps * self.unit_step]:
            units[layer] += 1
        return SubNetworkConfig(layers=tuple(range(self.config.num_layers)), heads=tuple(heads), units=tuple(units))

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        vector = [sum(sub.heads), sum(sub.units) // self.unit_step]
        if len(sub.layers) != self.config.num_layers or self.decode(vector) != sub:
            raise ConfigError(f"{sub} is not in the importance space (the globally most important heads and units)")
        return vector


# The keep-rate genes' values: the fraction of tokens each layer past the start drops (0: none). A coarse grid, so
# a search of a few hundred evaluations sees each step; steeper than half drops most of a sentence in two layers.
KEEP_RATES = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0)


class TokenEliminationSpace(SearchSpace):
    """Any space plus two genes for token elimination (TiltedBERT): the layer elimination starts at and how fast
    the kept fraction shrinks after it (supernet.schedules.tilted_schedule, with a fixed floor). Like the other
    genes, larger is bigger: the upper corner (start after the last layer, rate 0) eliminates nothing, so
    `largest()` is the base space's largest network, unchanged. Scoring a schedule needs no retraining: the
    schedule is applied to the trained supernet's attention (zero-shot)."""

    def __init__(self, base: SearchSpace, *, floor: float = 0.1) -> None:
        super().__init__(base.config, unit_step=base.unit_step)
        if not 0.0 < floor <= 1.0:
            raise ConfigError(f"a keep floor is a fraction in (0, 1], got {floor}")
        self.base, self.floor_fraction = base, floor
        self.name = f"{base.name}+tokens"

    @property
    def lower(self) -> list[int]:
        return [*self.base.lower, 1, 0]  # elimination never starts before the first layer's attention

    @property
    def upper(self) -> list[int]:
        return [*self.base.upper, self.config.num_layers, len(KEEP_RATES) - 1]

    def schedule(self, start: int, rate_gene: int) -> tuple[float, ...] | None:
        keep = tilted_schedule(self.config.num_layers, start, KEEP_RATES[rate_gene], self.floor_fraction)
        return None if keep is None else tuple(keep)

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        values = self._check(vector)
        sub = self.base.decode(values[:-2])
        return replace(sub, token_keep=self.schedule(values[-2], values[-1]))

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        static = self.base.encode(sub.static())
        if sub.token_keep is None:
            return [*static, self.config.num_layers, len(KEEP_RATES) - 1]
        for start in range(1, self.config.num_layers + 1):
            for gene in range(len(KEEP_RATES)):
                if replace(sub.static(), token_keep=self.schedule(start, gene)) == sub:
                    return [*static, start, gene]
        raise ConfigError(f"token_keep {list(sub.token_keep)} is not a schedule of the {self.name} space")


class ExitSpace(SearchSpace):
    """Any space (TokenEliminationSpace included: a point may have a schedule and a threshold) plus one gene for
    early exiting (COST-EFF): an index into a grid of exit thresholds τ, "off" (0) among them. Like the other genes,
    larger is bigger: the largest index is the smallest τ, 0, which runs every example through every kept layer, so
    `largest()` is the base space's largest network, unchanged. A threshold needs no retraining of its own: the
    exit heads are trained with the supernet, and every τ is scored from one pass over the exits."""

    def __init__(self, base: SearchSpace, thresholds: Sequence[float]) -> None:
        super().__init__(base.config, unit_step=base.unit_step)
        grid = sorted({float(t) for t in thresholds})
        if not grid or grid[0] != 0.0 or grid[-1] > 1.0 or not all(math.isfinite(t) for t in grid):
            raise ConfigError(f"exit thresholds are normalised entropies in [0, 1] with 0 (off) among them, got "
                              f"{list(thresholds)}")
        self.base, self.thresholds = base, tuple(grid)
        self.name = f"{base.name}+exits"

    @property
    def lower(self) -> list[int]:
        return [*self.base.lower, 0]

    @property
    def upper(self) -> list[int]:
        return [*self.base.upper, len(self.thresholds) - 1]

    def threshold(self, gene: int) -> float:
        """τ of a gene value: the grid read from its largest threshold (gene 0) down to 0 (the largest gene)."""
        return self.thresholds[len(self.thresholds) - 1 - gene]

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        values = self._check(vector)
        return replace(self.base.decode(values[:-1]), exit_threshold=self.threshold(values[-1]))

    def evaluation(self, sub: SubNetworkConfig) -> SubNetworkConfig:
        """The structure: its one pass over the exits scores every threshold (search.objectives.ExitPasses)."""
        return self.base.evaluation(sub).pass_structure()

    def scored_alongside(self, sub: SubNetworkConfig) -> list[SubNetworkConfig]:
        """Every other threshold of the grid on `sub`'s structure: scoring them costs no forward pass, so a search
        keeps them all and the front gets each structure's best thresholds (COST-EFF picks the threshold after
        training, per budget)."""
        structure = self.evaluation(sub)
        members = dict.fromkeys(replace(structure, exit_threshold=tau) for tau in self.thresholds)
        return [member for member in members if member != sub]

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        structure = self.base.encode(replace(sub, exit_threshold=None))
        tau = 0.0 if sub.exit_threshold is None else sub.exit_threshold
        if tau not in self.thresholds:
            raise ConfigError(f"exit_threshold {tau} is not in the {self.name} space's grid {list(self.thresholds)}")
        return [*structure, len(self.thresholds) - 1 - self.thresholds.index(tau)]


class OdeCompensationSpace(SearchSpace):
    """Any space plus one 0/1 gene: whether a kept layer stands in for the dropped layers after it by one larger
    Euler step along its residual branch (ODE-compensated layer dropping; SubNetworkConfig.ode_compensation, the
    ODE view of Chen et al., Findings of EMNLP 2023). Both values have the same size and cost, so `largest()` is
    the base space's; like the dynamic genes it is scored on the trained supernet without retraining."""

    def __init__(self, base: SearchSpace) -> None:
        super().__init__(base.config, unit_step=base.unit_step)
        self.base = base
        self.name = f"{base.name}+ode"

    @property
    def lower(self) -> list[int]:
        return [*self.base.lower, 0]

    @property
    def upper(self) -> list[int]:
        return [*self.base.upper, 1]

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        values = self._check(vector)
        return replace(self.base.decode(values[:-1]), ode_compensation=bool(values[-1]))

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        return [*self.base.encode(replace(sub, ode_compensation=False)), int(sub.ode_compensation)]


class SharedSpace(SearchSpace):
    """A parameter-shared model's space (Chen et al., Findings of EMNLP 2023): [heads of block 0..G-1, unit steps
    of block 0..G-1, step count, solver]. Every layer is kept and runs its block's widths; the stack is
    integrated in K steps, the s-th of SupernetConfig.ode_step_counts (with equal blocks K = G·s, s from 1 to
    L / G: fewer, larger steps instead of dropped layers) by Euler (0) or
    Heun (1, two evaluations a step). Heads and units are the first k of each block: importance reordering in
    training puts the best first."""

    name = "shared"

    def __init__(self, config: SupernetConfig, *, unit_step: int | None = None, min_heads: int = 1,
                 min_unit_steps: int = 1, solvers: tuple[str, ...] = ODE_SOLVERS) -> None:
        super().__init__(config, unit_step=unit_step)
        if not solvers or any(s not in ODE_SOLVERS for s in solvers):
            raise ConfigError(f"solvers must be among {ODE_SOLVERS}, got {solvers}")
        self.solvers = tuple(solvers)
        if not config.shared:
            raise ConfigError("the shared space needs a parameter-shared model (layer_groups)")
        self.blocks = config.group_members()
        self.min_heads, self.min_unit_steps = min_heads, min_unit_steps
        self.block_heads = [config.layer_heads[members[0]] for members in self.blocks]
        self.block_steps = [self._units_to_steps(config.layer_units[members[0]]) for members in self.blocks]
        self.step_counts = config.ode_step_counts()

    @property
    def lower(self) -> list[int]:
        g = len(self.blocks)
        return [self.min_heads] * g + [self.min_unit_steps] * g + [1, 0]

    @property
    def upper(self) -> list[int]:
        return [*self.block_heads, *self.block_steps, len(self.step_counts), len(self.solvers) - 1]

    def decode(self, vector: Sequence[int]) -> SubNetworkConfig:
        values = self._check(vector)
        g, groups = len(self.blocks), self.config.layer_groups
        heads, units = values[:g], values[g:2 * g]
        return SubNetworkConfig(layers=tuple(range(self.config.num_layers)), heads=tuple(heads[b] for b in groups),
                                units=tuple(units[b] * self.unit_step for b in groups),
                                ode_steps=self.step_counts[values[2 * g] - 1],
                                ode_solver=self.solvers[values[2 * g + 1]])

    def encode(self, sub: SubNetworkConfig) -> list[int]:
        sub.validate(self.config)
        firsts = [members[0] for members in self.blocks]
        steps = self.step_counts.index(sub.ode_steps or self.config.num_layers) + 1
        return self._check([*(sub.heads[i] for i in firsts), *(self._units_to_steps(sub.units[i]) for i in firsts),
                            steps, self.solvers.index(sub.ode_solver or "euler")])

    def with_solvers(self, solvers: tuple[str, ...]) -> SharedSpace:
        """This space with the solver gene over `solvers` only (token elimination runs with Euler's)."""
        return SharedSpace(self.config, unit_step=self.unit_step, min_heads=self.min_heads,
                           min_unit_steps=self.min_unit_steps, solvers=solvers)


SPACES: dict[str, type[SearchSpace]] = {cls.name: cls for cls in (UniformSpace, PerLayerSpace, LayerSpace,
                                                                  ImportanceSpace)}
if tuple(SPACES) != SPACE_NAMES:  # the settings' choices (torch-free) must be exactly the spaces that exist
    raise ImportError(f"supernet.settings.SPACE_NAMES {SPACE_NAMES} differs from the spaces defined {tuple(SPACES)}")


def make_space(name: str, config: SupernetConfig, **kwargs) -> SearchSpace:
    """The space `name` over `config`; on a parameter-shared model the per-width spaces (importance, the default,
    and per_layer) are its SharedSpace, whose step and solver genes come with sharing, and the spaces that drop
    layers or tie every layer's width do not apply."""
    try:
        cls = SPACES[name]
    except KeyError:
        raise ConfigError(f"unknown search space {name!r}; choose one of {', '.join(SPACES)}") from None
    if config.shared:
        if name not in ("importance", "per_layer"):
            raise ConfigError(f"the {name} space does not apply to a parameter-shared model (it keeps every layer "
                              "and searches each shared block's widths and the ODE steps): use importance or "
                              "per_layer")
        kwargs.pop("importance", None)  # the blocks' own order: training reorders each block by importance
        return SharedSpace(config, **kwargs)
    return cls(config, **kwargs)
