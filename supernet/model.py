"""The supernet: an elastic BERT whose sub-networks are activated by slicing weight views."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .config import SubNetworkConfig, SupernetConfig
from .modules import ElasticBert


class Supernet(ElasticBert):
    """Weight-sharing supernet over layers, heads and FFN units (Cai et al., Once-for-All, 2020;
    Klein et al., TMLR 2024). `set_sub_network` picks which layers run and the first k heads/units
    of each, its runtime knobs (token keep schedule, exit threshold, open exits) and its steps (ODE compensation; on a
    parameter-shared model, ode_steps and ode_solver);
    `reset_super_network` returns to the full model with every knob off."""

    def __init__(self, config: SupernetConfig) -> None:
        super().__init__(config)
        self.config = config
        self.sub_network: SubNetworkConfig | None = None

    def set_sub_network(self, sub: SubNetworkConfig) -> None:
        sub.validate(self.config)  # refuses an exit_threshold without exits or on regression
        self.run_schedule(sub.schedule(self.config))
        for index, layer in enumerate(self.layers):  # a shared block is set once per layer, to the same widths
            layer.set_sub_network(sub.heads[index], sub.units[index])
        self.token_keep = None if sub.token_keep is None else list(sub.token_keep)
        self.exit_threshold = sub.exit_threshold
        self.open_exits = None if sub.open_exits is None else frozenset(sub.open_exits)
        self.ode_solver = sub.ode_solver
        self.sub_network = sub

    def reset_super_network(self) -> None:
        self.active_layers = list(range(len(self.layers)))
        self.keep_layers = None
        for layer in self.layers:
            layer.reset_super_network()
        self.token_keep = None
        self.exit_threshold = None
        self.open_exits = None
        self.layer_steps = None
        self.ode_solver = None
        self.sub_network = None

    @contextmanager
    def use(self, sub: SubNetworkConfig | None) -> Iterator[Supernet]:
        """Run a block of code on `sub` (None: the full network), then restore the full network."""
        if sub is None:
            self.reset_super_network()
        else:
            self.set_sub_network(sub)
        try:
            yield self
        finally:
            self.reset_super_network()

    def full_config(self) -> SubNetworkConfig:
        return SubNetworkConfig.full(self.config)
