"""The supernet: an elastic BERT whose sub-networks are activated by slicing weight views."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .config import ConfigError, SubNetworkConfig, SupernetConfig
from .modules import ElasticBert


class Supernet(ElasticBert):
    """Weight-sharing supernet over layers, heads and FFN units (Cai et al., Once-for-All, 2020;
    Klein et al., TMLR 2024). `set_sub_network` picks which layers run and the first k heads/units
    of each; `reset_super_network` returns to the full model."""

    def __init__(self, config: SupernetConfig) -> None:
        super().__init__(config)
        self.config = config
        self.sub_network: SubNetworkConfig | None = None

    def set_sub_network(self, sub: SubNetworkConfig) -> None:
        sub.validate(self.config)
        if sub.exit_threshold is not None:  # running it at full depth would report figures it does not have
            raise ConfigError("this supernet has no exits yet: exit_threshold needs the early-exit forward pass")
        self.active_layers = list(sub.layers)
        for index, layer in enumerate(self.layers):
            layer.set_sub_network(sub.heads[index], sub.units[index])
        self.token_keep = None if sub.token_keep is None else list(sub.token_keep)
        self.sub_network = sub

    def reset_super_network(self) -> None:
        self.active_layers = list(range(len(self.layers)))
        for layer in self.layers:
            layer.reset_super_network()
        self.token_keep = None
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
