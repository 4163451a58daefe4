"""Exact parameter and MAC counts of a sub-network, computed from its configuration alone.

The counts equal those of the model that `extract` builds (tests check it over random configurations).
MACs are multiply-accumulates of one example of `seq_len` tokens (no padding), matrix products only:
the Q/K/V and output projections, the two attention products (QKᵀ and AV), the FFN, and the
pooler/classifier on the first token. Embedding lookups, LayerNorm, softmax and activations are not MACs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from . import schedules
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


def layer_macs(config: SupernetConfig, heads: int, units: int, seq_len: int, kept: int | None = None) -> int:
    """MACs of one kept layer that reads `seq_len` tokens and passes on `kept` of them (default: all); the
    formula and why is in supernet.schedules.layer_macs."""
    return schedules.layer_macs(config.hidden_size, heads, config.head_size, units, seq_len, kept)


def kept_tokens(sub: SubNetworkConfig, length: int) -> list[int]:
    """Tokens present after each kept layer for an example of `length` tokens: ⌈r_l · length⌉ for the layer's
    keep fraction r_l, never fewer than one ([CLS] always stays)."""
    if sub.token_keep is None:
        return [length] * len(sub.layers)
    return [schedules.kept_count(sub.token_keep[i], length) for i in sub.layers]


def count_macs(config: SupernetConfig, sub: SubNetworkConfig | None = None, *, seq_len: int = 128,
               encoder_only: bool = False) -> int:
    """MACs of one example of `seq_len` tokens, token elimination included (exits are a matter of the data:
    see expected_macs)."""
    sub = (sub or SubNetworkConfig.full(config)).validate(config)
    reads, encoder = seq_len, 0
    for h, u, kept in zip(sub.kept_heads(), sub.kept_units(), kept_tokens(sub, seq_len), strict=True):
        encoder += layer_macs(config, h, u, reads, kept)
        reads = kept
    if encoder_only:
        return encoder
    return encoder + config.hidden_size * config.hidden_size + config.hidden_size * config.num_labels


def expected_macs(config: SupernetConfig, sub: SubNetworkConfig, lengths: Sequence[int], *,
                  encoder_only: bool = False) -> float:
    """Mean MACs per example over real input lengths (a task's validation examples, unpadded): the cost that
    token elimination changes with each input, which one `seq_len` cannot describe."""
    if not lengths:
        raise ValueError("expected_macs needs at least one input length")
    counts = Counter(int(n) for n in lengths)
    total = sum(count * count_macs(config, sub, seq_len=n, encoder_only=encoder_only) for n, count in counts.items())
    return total / len(lengths)
