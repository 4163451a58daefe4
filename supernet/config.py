"""Configurations: the supernet's dimensions and a sub-network inside it.

Both are torch-free so that `search/`, the database and the API can pass them around as JSON.
`SubNetworkConfig` is the one name for one thing: what the sampler draws, the optimizer decodes,
the database stores, the API returns and the exporter reads.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Any

from . import schedules

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "albert", "nasprune_bert")
ODE_SOLVERS = ("euler", "heun")


def tied_groups(layers: int, groups: int, mapping: list[int] | tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The shared block of each of `layers` layers when `nasprune share` ties them: `mapping` as given (contiguous
    blocks in order, of any sizes), else `groups` contiguous equal blocks (layer i runs block i // (L / G)).
    ValueError naming the field unless the tying shares something (torch-free, so the API checks a request with it)."""
    if mapping is not None:
        values = tuple(mapping)
        if len(values) != layers:
            raise ValueError(f"mapping: {len(values)} entries for the model's {layers} layers (one block per layer)")
        problem = contiguity_problem(values)
        if problem:
            raise ValueError(f"mapping: {problem}")
        if values[-1] + 1 >= layers:
            raise ValueError(f"mapping: {values[-1] + 1} shared blocks for {layers} layers share nothing")
        return values
    if groups >= layers:
        raise ValueError(f"groups: {groups} shared blocks for {layers} layers share nothing; use fewer (1: one block "
                         "for every layer)")
    if layers % groups:
        raise ValueError(f"groups: {groups} shared blocks do not divide the model's {layers} layers evenly; give "
                         "`mapping` (the block of each layer) for blocks of unequal sizes")
    return tuple(i // (layers // groups) for i in range(layers))


def shares_layers(hf_config: dict[str, Any]) -> bool:
    """Whether a model's config.json (as a dict) describes a parameter-shared encoder: ALBERT with fewer layer
    groups than layers, or a folder this project wrote with `layer_groups` (torch-free, for the API)."""
    if hf_config.get("model_type") == "albert":
        return hf_config.get("num_hidden_groups", 1) != hf_config.get("num_hidden_layers", 12)
    groups = hf_config.get("layer_groups")
    return isinstance(groups, list) and len(set(map(str, groups))) < len(groups)


def contiguity_problem(groups: tuple[int, ...]) -> str | None:
    """Why `groups` (the block of each layer) is not contiguous blocks numbered from 0 in order; None if it is."""
    if not groups or groups[0] != 0 or any(b - a not in (0, 1) for a, b in zip(groups, groups[1:], strict=False)):
        return (f"{list(groups)} is not contiguous blocks numbered from 0 in order (e.g. [0, 0, 1, 1, 1, 2]: each "
                "block's layers next to each other)")
    return None


class ConfigError(ValueError):
    """A configuration that does not fit the model it is meant for."""


def _fraction(value: Any, what: str) -> float:
    """A finite float from JSON or code; bools are refused like in `_as_int`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _canonical_keep(keep: Any, layers: tuple[int, ...], heads: tuple[int, ...]) -> tuple[float, ...] | None:
    """Per-layer keep fractions in canonical form (see SubNetworkConfig), or None when nothing is eliminated."""
    if keep is None:
        return None
    values = [_fraction(r, "a token keep fraction") for r in keep]
    if len(values) != len(heads):
        raise ConfigError(f"token_keep has {len(values)} entries; the supernet has {len(heads)} layers")
    bad = [r for r in values if not 0.0 < r <= 1.0]
    if bad:
        raise ConfigError(f"token keep fractions must lie in (0, 1], got {bad}")
    kept, current, canonical = set(layers), 1.0, []
    for i, r in enumerate(values):
        if i in kept and heads[i] > 0:  # ranking needs the layer's attention: without heads, nothing is dropped
            current = min(current, r)
        canonical.append(current)
    return None if current == 1.0 else tuple(canonical)


def _canonical_threshold(threshold: Any, layers: tuple[int, ...]) -> float | None:
    """The threshold in canonical form: None for 0 (full depth) and when fewer than two layers are kept (the only
    answer is the main head's, so the threshold changes nothing)."""
    if threshold is None:
        return None
    value = _fraction(threshold, "exit_threshold")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"exit_threshold is a normalised entropy in [0, 1], got {value}")
    return None if value == 0.0 or len(layers) < 2 else value


def _canonical_open_exits(open_exits: Any, layers: tuple[int, ...], threshold: float | None) -> tuple[int, ...] | None:
    """The exits checked, in canonical form: sorted kept layers but the last (which answers with the main head);
    None when every such exit is open, or when no threshold is set (no exit is read then). An empty set opens no
    exit: refused, since full depth is said by no threshold."""
    if open_exits is None or threshold is None:
        return None
    if isinstance(open_exits, (str, bytes)) or not isinstance(open_exits, (list, tuple)):
        raise ConfigError(f"open_exits is a list of kept layers, got {open_exits!r}")
    opened = tuple(sorted({_as_int(i, "an open exit's layer") for i in open_exits}))
    if not opened:
        raise ConfigError("open_exits is empty: no exit would be read; leave exit_threshold unset for full depth")
    with_exits = layers[:-1]
    if any(i not in with_exits for i in opened):
        raise ConfigError(f"open_exits {list(opened)}: each must be a kept layer other than the last kept one "
                          f"({list(with_exits)}; the last answers with the main head)")
    return None if opened == with_exits else opened


def _canonical_compensation(flag: Any, layers: tuple[int, ...], num_layers: int) -> bool:
    """ODE compensation in canonical form: off when no kept layer has a dropped one after it (every step is 1)."""
    if not isinstance(flag, bool):
        raise ConfigError(f"ode_compensation must be true or false, got {flag!r}")
    return flag and bool(layers) and num_layers - layers[0] > len(layers)


def _canonical_groups(groups: Any, num_layers: int) -> tuple[int, ...] | None:
    """Which shared block each layer runs, in canonical form: contiguous blocks numbered from 0 in order, of any
    sizes (ALBERT's mapping, layer i -> block int(i / (L / G)), is one); None when every layer has its own block."""
    if groups is None:
        return None
    values = tuple(_as_int(g, "a layer group") for g in groups)
    if len(values) != num_layers:
        raise ConfigError(f"layer_groups has {len(values)} entries; the model has {num_layers} layers")
    problem = contiguity_problem(values)
    if problem:
        raise ConfigError(f"layer_groups: {problem}")
    return None if values[-1] + 1 == num_layers else values


def _canonical_steps(steps: Any, layers: tuple[int, ...]) -> int | None:
    """ODE steps in canonical form: None for one step per kept layer (the plain stack)."""
    if steps is None:
        return None
    value = _as_int(steps, "ode_steps")
    if not 1 <= value <= max(1, len(layers)):
        raise ConfigError(f"ode_steps must lie between 1 and the {len(layers)} layers it integrates, got {value}")
    return None if value == len(layers) else value


def _canonical_solver(solver: Any) -> str | None:
    """The ODE solver in canonical form: None for Euler (what a residual stack computes)."""
    if solver is None:
        return None
    if solver not in ODE_SOLVERS:
        raise ConfigError(f"ode_solver must be one of {', '.join(ODE_SOLVERS)}, got {solver!r}")
    return None if solver == "euler" else solver


def _as_int(value: Any, what: str) -> int:
    """An integer, or an integral float such as 2.0; anything else is a ConfigError (never truncated)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{what} must be an integer, got {value!r}")


@dataclass(frozen=True)
class SupernetConfig:
    """Dimensions of the full network, read from a Hugging Face config."""

    num_layers: int
    hidden_size: int
    num_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    num_labels: int
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    pad_token_id: int = 0
    # RoBERTa counts positions from padding_idx + 1 and skips padding; BERT counts from 0.
    position_offset: bool = False
    model_type: str = "bert"
    # Per-layer widths; None means every layer has `num_heads` heads and `intermediate_size` units.
    layer_heads: tuple[int, ...] | None = None
    layer_units: tuple[int, ...] | None = None
    # Early exits (COST-EFF): an exit head after every layer but the last (modules.ExitHead).
    exits: bool = False
    # ALBERT's factorised embeddings: word, position and token-type tables of this width, normalised, then
    # projected to hidden_size (a projection even at equal widths, as ALBERT has); None: hidden_size, no projection.
    embedding_size: int | None = None
    # Parameter sharing (ALBERT): per layer, the shared block it runs (see _canonical_groups); None: unshared.
    layer_groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.layer_heads is None:
            object.__setattr__(self, "layer_heads", (self.num_heads,) * self.num_layers)
        if self.layer_units is None:
            object.__setattr__(self, "layer_units", (self.intermediate_size,) * self.num_layers)
        object.__setattr__(self, "layer_heads", tuple(int(h) for h in self.layer_heads))
        object.__setattr__(self, "layer_units", tuple(int(u) for u in self.layer_units))
        if len(self.layer_heads) != self.num_layers or len(self.layer_units) != self.num_layers:
            raise ConfigError("layer_heads and layer_units need one entry per layer")
        groups = _canonical_groups(self.layer_groups, self.num_layers)
        object.__setattr__(self, "layer_groups", groups)
        for members in self.group_members():
            if len({(self.layer_heads[i], self.layer_units[i]) for i in members}) > 1:
                raise ConfigError(f"layers {members} share one block, so they need the same heads and units")

    @property
    def shared(self) -> bool:
        """Whether layers share blocks (an ODE's vector field: ode_steps and ode_solver apply)."""
        return self.layer_groups is not None

    def group_members(self) -> list[list[int]]:
        """The layers of each shared block, in order; one layer per block when nothing is shared."""
        return schedules.block_members(self.layer_groups, self.num_layers)

    def ode_step_counts(self) -> list[int]:
        """The step counts a shared stack can be integrated in (schedules.ode_step_counts): with blocks of equal
        size, the multiples of their count up to the layers."""
        return schedules.ode_step_counts(self.layer_groups, self.num_layers)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @classmethod
    def from_hf(cls, hf_config: Any) -> SupernetConfig:
        """Read the dimensions of a BERT-architecture Hugging Face config."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        heads = hf_config.num_attention_heads
        if hf_config.hidden_size % heads:
            raise ConfigError(f"hidden size {hf_config.hidden_size} is not divisible by {heads} heads")
        if getattr(hf_config, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise ConfigError("only absolute position embeddings are supported")
        groups = getattr(hf_config, "layer_groups", None)
        classifier_dropout = getattr(hf_config, "classifier_dropout", None)
        if model_type == "albert":
            layers, count = hf_config.num_hidden_layers, hf_config.num_hidden_groups
            if hf_config.inner_group_num != 1:
                raise ConfigError(f"ALBERT with {hf_config.inner_group_num} layers per group (inner_group_num) is not "
                                  "supported: one layer per shared block")
            if not 1 <= count <= layers:
                raise ConfigError(f"ALBERT's {count} layer groups (num_hidden_groups) for its {layers} layers: "
                                  "between 1 and the layers")
            groups = [int(i / (layers / count)) for i in range(layers)]  # AlbertTransformer's own mapping
            classifier_dropout = hf_config.classifier_dropout_prob
        return cls(
            num_layers=hf_config.num_hidden_layers,
            hidden_size=hf_config.hidden_size,
            num_heads=heads,
            head_size=getattr(hf_config, "head_size", None) or hf_config.hidden_size // heads,
            intermediate_size=hf_config.intermediate_size,
            vocab_size=hf_config.vocab_size,
            max_position_embeddings=hf_config.max_position_embeddings,
            type_vocab_size=hf_config.type_vocab_size,
            num_labels=hf_config.num_labels,
            layer_norm_eps=hf_config.layer_norm_eps,
            hidden_act=hf_config.hidden_act,
            hidden_dropout=hf_config.hidden_dropout_prob,
            attention_dropout=hf_config.attention_probs_dropout_prob,
            classifier_dropout=classifier_dropout,
            pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
            position_offset=model_type == "roberta" or bool(getattr(hf_config, "position_offset", False)),
            model_type=model_type,
            layer_heads=getattr(hf_config, "layer_heads", None),
            layer_units=getattr(hf_config, "layer_units", None),
            exits=bool(getattr(hf_config, "exits", False)),
            embedding_size=getattr(hf_config, "embedding_size", None),
            layer_groups=None if groups is None else tuple(groups),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layer_heads"] = list(self.layer_heads)
        data["layer_units"] = list(self.layer_units)
        for key in ("embedding_size", "layer_groups"):  # only when set, so an unshared model's record never changes
            if data[key] is None:
                del data[key]
        if self.layer_groups is not None:
            data["layer_groups"] = list(self.layer_groups)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupernetConfig:
        data = dict(data)
        for key in ("layer_heads", "layer_units", "layer_groups"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class SubNetworkConfig:
    """Which layers are kept, and how many heads and FFN units each layer keeps.

    `heads` and `units` have one entry per layer of the supernet. A dropped layer is stored with
    0 heads and 0 units (canonical form, so equal networks compare and hash equal). A kept layer may
    have 0 heads or 0 units: its attention or FFN block then adds only its output bias.
    The first k heads/units are kept; importance ordering makes those the best k.

    Runtime fields change what the network computes per input, not its weights; each is None when off and is
    written to JSON only when set, so a static network's stored key never changes:

    - `token_keep`: per supernet layer, the fraction of each example's own length still present after that
      layer (attention-based token elimination, TiltedBERT / PoWER-BERT). Canonical: elimination cannot be
      undone, so each entry is at most the previous one; a dropped layer or one without heads keeps what it
      reads; all ones is None (the same computation as no elimination).
    - `exit_threshold`: the normalised prediction entropy below which an example leaves at an exit (COST-EFF,
      DeeBERT); 0 is None (full depth), and so is any threshold with fewer than two kept layers. It needs a
      supernet with exits and a classification task (`validate`).
    - `open_exits`: with a threshold, the kept layers whose exits are read (None: every kept layer's but the
      last). An exit no example leaves at costs its check and saves nothing; a search opens only the exits its
      validation examples left at (search.objectives.Measurements.opened), which changes no example's exit.

    `ode_compensation` is a structural choice, not a runtime one (every input runs the same computation): a kept
    layer followed by m dropped layers takes one Euler step of size 1 + m along its residual branch (the ODE view
    of residual networks, Chen et al., Findings of EMNLP 2023) instead of 1 (`step_sizes`); False when nothing
    after a kept layer is dropped, and written to JSON only when True.

    On a parameter-shared model (`SupernetConfig.layer_groups`) the stack is an ODE whose vector field is each shared
    block's residual branch (Chen et al., Findings of EMNLP 2023): every layer is kept, and `ode_steps` K integrates
    it in K steps of size L / K instead of one per layer (each block of n layers in n·K / L steps; K one of
    SupernetConfig.ode_step_counts), `ode_solver` "heun" with Heun's method (two evaluations a step) instead of
    Euler's. Both are structural like ode_compensation; None is one step per layer and Euler, and neither is
    written to JSON then.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    units: tuple[int, ...]
    token_keep: tuple[float, ...] | None = None
    exit_threshold: float | None = None
    open_exits: tuple[int, ...] | None = None
    ode_compensation: bool = False
    ode_steps: int | None = None
    ode_solver: str | None = None

    def __post_init__(self) -> None:
        layers = tuple(sorted({_as_int(i, "a layer index") for i in self.layers}))
        heads = tuple(_as_int(h, "a head count") for h in self.heads)
        units = tuple(_as_int(u, "a unit count") for u in self.units)
        if len(heads) != len(units):
            raise ConfigError(f"heads ({len(heads)}) and units ({len(units)}) must have one entry per layer")
        if any(i < 0 or i >= len(heads) for i in layers):
            raise ConfigError(f"layer indices {list(layers)} out of range for {len(heads)} layers")
        if any(h < 0 for h in heads) or any(u < 0 for u in units):
            raise ConfigError("head and unit counts must be >= 0")
        kept = set(layers)
        heads = tuple(h if i in kept else 0 for i, h in enumerate(heads))
        units = tuple(u if i in kept else 0 for i, u in enumerate(units))
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "token_keep", _canonical_keep(self.token_keep, layers, heads))
        object.__setattr__(self, "exit_threshold", _canonical_threshold(self.exit_threshold, layers))
        object.__setattr__(self, "open_exits", _canonical_open_exits(self.open_exits, layers, self.exit_threshold))
        object.__setattr__(self, "ode_compensation", _canonical_compensation(self.ode_compensation, layers,
                                                                             len(heads)))
        object.__setattr__(self, "ode_steps", _canonical_steps(self.ode_steps, layers))
        object.__setattr__(self, "ode_solver", _canonical_solver(self.ode_solver))

    @property
    def num_layers(self) -> int:
        """Number of layers of the supernet this configuration indexes into."""
        return len(self.heads)

    @classmethod
    def full(cls, config: SupernetConfig) -> SubNetworkConfig:
        return cls(
            layers=tuple(range(config.num_layers)), heads=config.layer_heads, units=config.layer_units
        )

    def validate(self, config: SupernetConfig) -> SubNetworkConfig:
        """Raise ConfigError unless this sub-network fits inside `config`; return self."""
        if self.num_layers != config.num_layers:
            raise ConfigError(
                f"sub-network has {self.num_layers} layers, the supernet {config.num_layers}"
            )
        for i in self.layers:
            if self.heads[i] > config.layer_heads[i]:
                raise ConfigError(f"layer {i}: {self.heads[i]} heads > {config.layer_heads[i]}")
            if self.units[i] > config.layer_units[i]:
                raise ConfigError(f"layer {i}: {self.units[i]} units > {config.layer_units[i]}")
        if self.exit_threshold is not None and not config.exits:
            raise ConfigError("exit_threshold needs exit heads, and this supernet has no exits (train it with "
                              "exits on)")
        if self.exit_threshold is not None and config.is_regression:
            raise ConfigError("early exiting needs a classification task: a regression output has no prediction "
                              "entropy to compare with exit_threshold")
        if not config.shared:
            if self.ode_steps is not None or self.ode_solver is not None:
                raise ConfigError("ode_steps and ode_solver need a parameter-shared model (its layers one block's "
                                  "steps); this one shares nothing: ode_compensation is its ODE knob")
            return self
        if len(self.layers) != config.num_layers or self.ode_compensation:
            raise ConfigError("a parameter-shared model keeps every layer: fewer, larger steps (ode_steps) take the "
                              "place of dropped layers")
        blocks = config.group_members()
        for members in blocks:
            if len({(self.heads[i], self.units[i]) for i in members}) > 1:
                raise ConfigError(f"layers {members} share one block, so they keep the same heads and units")
        if self.ode_steps is not None and self.ode_steps not in config.ode_step_counts():
            raise ConfigError(f"ode_steps must be one of {config.ode_step_counts()} (the step counts whose steps end "
                              f"on every shared block's boundary), got {self.ode_steps}")
        if self.exit_threshold is not None and (self.ode_steps is not None or self.ode_solver is not None):
            raise ConfigError("early exits do not run with ode_steps or ode_solver yet: a shared stack exits at one "
                              "step per layer (Euler)")
        if self.token_keep is not None and self.ode_solver == "heun":
            raise ConfigError("token elimination runs with Euler steps (ode_solver euler): Heun's second evaluation "
                              "would read the tokens its first one dropped")
        return self

    def kept_heads(self) -> list[int]:
        return [self.heads[i] for i in self.layers]

    def kept_units(self) -> list[int]:
        return [self.units[i] for i in self.layers]

    @property
    def is_static(self) -> bool:
        """Whether every input runs the same computation (no runtime field is set)."""
        return self.token_keep is None and self.exit_threshold is None

    def open_rows(self) -> tuple[int, ...] | None:
        """The open exits as 0-based positions among the kept layers: the layer indices an exported model's
        `open_exits` holds; None: every exit a threshold reads."""
        return None if self.open_exits is None else tuple(self.layers.index(i) for i in self.open_exits)

    def open_positions(self) -> tuple[int, ...] | None:
        """The open exits as 1-based positions among the kept layers (as exit positions count them); None: every
        exit a threshold reads."""
        rows = self.open_rows()
        return None if rows is None else tuple(row + 1 for row in rows)

    def pass_structure(self) -> SubNetworkConfig:
        """This sub-network without its exit threshold and open exits: what one pass over the exits runs, and scores
        every threshold of (exiting never changes a later layer)."""
        return replace(self, exit_threshold=None, open_exits=None)

    def static(self) -> SubNetworkConfig:
        """The same structure with every runtime field off: the weights this network slices, and its steps."""
        return SubNetworkConfig(layers=self.layers, heads=self.heads, units=self.units,
                                ode_compensation=self.ode_compensation, ode_steps=self.ode_steps,
                                ode_solver=self.ode_solver)

    def schedule(self, config: SupernetConfig) -> tuple[tuple[int, float], ...]:
        """What the forward runs, in order: (layer index, Euler step size) per step, every step one evaluation of
        that layer's block (two under Heun). Unshared: each kept layer with its `step_sizes` entry. Shared: K steps of
        size L / K, n·K / L of them over each block's n layers, run as the first of those layers (one block, so any
        of them)."""
        if not config.shared:
            return tuple(zip(self.layers, self.step_sizes(), strict=True))
        return tuple(schedules.ode_schedule(config.layer_groups, config.num_layers, self.ode_steps))

    def step_sizes(self) -> tuple[float, ...]:
        """Per kept layer, its Euler step: 1, or with ode_compensation the distance to the next kept layer (the
        end of the stack after the last), so that the kept steps still add up to the depth they stand for."""
        if not self.ode_compensation:
            return (1.0,) * len(self.layers)
        ends = (*self.layers[1:], self.num_layers)
        return tuple(float(end - index) for index, end in zip(self.layers, ends, strict=True))

    def unrolled(self, config: SupernetConfig) -> tuple[SubNetworkConfig, int]:
        """An unshared network of the same compute, for what prices and counts layers one by one (the latency
        table, MACs, tokens): the layers a shared stack's steps run, at their widths, each keeping the tokens of
        the layer its step ends in (schedules.step_keep_layers), and the evaluations each takes (2 under Heun);
        this network and 1 where no ODE setting is on."""
        if self.ode_steps is None and self.ode_solver is None:
            return self, 1
        schedule = self.schedule(config)
        ran = tuple(index for index, _ in schedule)
        keep = None
        if self.token_keep is not None:
            keep = [1.0] * len(self.heads)
            for index, layer in zip(ran, schedules.step_keep_layers(schedule), strict=True):
                keep[index] = self.token_keep[layer]
        return (SubNetworkConfig(layers=ran, heads=self.heads, units=self.units, token_keep=keep),
                2 if self.ode_solver == "heun" else 1)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"layers": list(self.layers), "heads": list(self.heads), "units": list(self.units)}
        if self.token_keep is not None:
            data["token_keep"] = list(self.token_keep)
        if self.exit_threshold is not None:
            data["exit_threshold"] = self.exit_threshold
        if self.open_exits is not None:
            data["open_exits"] = list(self.open_exits)
        if self.ode_compensation:
            data["ode_compensation"] = True
        if self.ode_steps is not None:
            data["ode_steps"] = self.ode_steps
        if self.ode_solver is not None:
            data["ode_solver"] = self.ode_solver
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubNetworkConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a sub-network config is a JSON object, got {type(data).__name__}")
        try:
            keep = data.get("token_keep")
            return cls(layers=tuple(data["layers"]), heads=tuple(data["heads"]), units=tuple(data["units"]),
                       token_keep=None if keep is None else tuple(keep), exit_threshold=data.get("exit_threshold"),
                       open_exits=data.get("open_exits"), ode_compensation=data.get("ode_compensation", False),
                       ode_steps=data.get("ode_steps"),
                       ode_solver=data.get("ode_solver"))
        except KeyError as exc:
            raise ConfigError(f"sub-network config is missing {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ConfigError(f"malformed sub-network config: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> SubNetworkConfig:
        return cls.from_dict(json.loads(text))
