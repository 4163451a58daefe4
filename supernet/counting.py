"""Exact parameter and MAC counts of a sub-network, computed from its configuration alone.

The counts equal those of the model that `extract` builds (tests check it over random configurations).
MACs are multiply-accumulates of one example of `seq_len` tokens (no padding), matrix products only:
the Q/K/V and output projections, the two attention products (QKᵀ and AV), the FFN, and the
pooler/classifier on the first token. Embedding lookups, LayerNorm, softmax and activations are not MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SubNetworkConfig, SupernetConfig


@dataclass(frozen=True)
class ParamCounts:
    embeddings: int
    encoder: int
    head: int

    @property
    def total(self) -> int:
        return self.embeddings + self.encoder + self.head

    def to_dict(self) -> dict[str, int]:
        return {"encoder": self.encoder, "total": self.total}


def layer_params(config: SupernetConfig, heads: int, units: int) -> int:
    """Parameters of one kept layer with `heads` heads and `units` FFN units."""
    hidden, width = config.hidden_size, heads * config.head_size
    attention = 3 * (hidden * width + width) + width * hidden + hidden + 2 * hidden  # QKV, out, LayerNorm
    ffn = hidden * units + units + units * hidden + hidden + 2 * hidden  # up, down, LayerNorm
    return attention + ffn


def count_params(config: SupernetConfig, sub: SubNetworkConfig | None = None) -> ParamCounts:
    sub = (sub or SubNetworkConfig.full(config)).validate(config)
    hidden = config.hidden_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * hidden
    embeddings += 2 * hidden  # LayerNorm
    encoder = sum(layer_params(config, h, u) for h, u in zip(sub.kept_heads(), sub.kept_units(), strict=True))
    head = hidden * hidden + hidden + hidden * config.num_labels + config.num_labels
    return ParamCounts(embeddings=embeddings, encoder=encoder, head=head)


def layer_macs(config: SupernetConfig, heads: int, units: int, seq_len: int) -> int:
    hidden, width = config.hidden_size, heads * config.head_size
    projections = 4 * seq_len * hidden * width  # Q, K, V and output
    attention = 2 * heads * seq_len * seq_len * config.head_size  # QKᵀ and AV
    ffn = 2 * seq_len * hidden * units
    return projections + attention + ffn


def count_macs(config: SupernetConfig, sub: SubNetworkConfig | None = None, *, seq_len: int = 128,
               encoder_only: bool = False) -> int:
    sub = (sub or SubNetworkConfig.full(config)).validate(config)
    encoder = sum(layer_macs(config, h, u, seq_len) for h, u in zip(sub.kept_heads(), sub.kept_units(), strict=True))
    if encoder_only:
        return encoder
    return encoder + config.hidden_size * config.hidden_size + config.hidden_size * config.num_labels
