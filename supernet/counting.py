"""Exact parameter and MAC counts of a sub-network, computed from its configuration alone.

The counts equal those of the model that `extract` builds (tests check it over random configurations).
MACs are multiply-accumulates of one example of `seq_len` tokens (no padding), matrix products only:
the Q/K/V and output projections, the two attention products (QKᵀ and AV), the FFN, the
pooler/classifier on the first token, the exit heads an exiting example evaluates (H·C each) and ALBERT's
embedding projection (E·H a token). Embedding lookups, LayerNorm, softmax, activations and the exit entropies are
not MACs. A parameter-shared model counts each shared block's parameters once and its MACs once per function
evaluation (`ode_steps`, twice a step under Heun).

`compression` (supernet/factors.py) counts the compressed model built from the sub-network's extract: factorised
encoder matrices (and word embeddings, whose R x H projection then costs MACs per token).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from . import factors, schedules
from .config import SubNetworkConfig, SupernetConfig
from .factors import Compression


@dataclass(frozen=True)
class ParamCounts:
    embeddings: int
    encoder: int
    head: int
    exits: int = 0  # the exit heads of the kept layers but the last

    @property
    def total(self) -> int:
        return self.embeddings + self.encoder + self.head + self.exits

    def to_dict(self) -> dict[str, int]:
        data = {"encoder": self.encoder, "total": self.total}
        if self.exits:  # only when there are exit heads, so a static network's record never changes
            data["exits"] = self.exits
        return data


def layer_params(config: SupernetConfig, heads: int, units: int) -> int:
    """Parameters of one kept layer with `heads` heads and `units` FFN units."""
    hidden, width = config.hidden_size, heads * config.head_size
    attention = 3 * (hidden * width + width) + width * hidden + hidden + 2 * hidden  # QKV, out, LayerNorm
    ffn = hidden * units + units + units * hidden + hidden + 2 * hidden  # up, down, LayerNorm
    return attention + ffn


def compressed_layout(config: SupernetConfig, sub: SubNetworkConfig, compression: Compression) -> list[factors.Matrix]:
    """The matrices a compressed model of `sub` factorises, its ranks checked against them."""
    if config.shared:
        raise factors.CompressionError(
            "a parameter-shared model cannot be compressed yet: each shared block serves several layers, and the "
            "decomposition is fitted per layer; compress a front point of an unshared model's search")
    matrices = factors.layout(config.hidden_size, config.head_size, sub.kept_heads(), sub.kept_units())
    compression.check(config.hidden_size, factors.block_count(matrices))
    return matrices


def count_params(config: SupernetConfig, sub: SubNetworkConfig | None = None,
                 compression: Compression | None = None) -> ParamCounts:
    sub = (sub or SubNetworkConfig.full(config)).validate(config)
    hidden, width = config.hidden_size, config.embedding_size or config.hidden_size
    embeddings = factors.embedding_params(compression, config.vocab_size, width)
    embeddings += (config.max_position_embeddings + config.type_vocab_size) * width + 2 * width  # LayerNorm
    if config.embedding_size is not None:  # ALBERT's projection of the E-wide embeddings to the hidden size
        embeddings += width * hidden + hidden
    if config.shared:  # each shared block once, however many steps run it
        encoder = sum(layer_params(config, sub.heads[members[0]], sub.units[members[0]])
                      for members in config.group_members())
    else:
        encoder = sum(layer_params(config, h, u) for h, u in zip(sub.kept_heads(), sub.kept_units(), strict=True))
    if compression is not None:  # biases and LayerNorms as they were, the six weight matrices factorised
        matrices = compressed_layout(config, sub, compression)
        encoder += factors.factor_params(compression, hidden, matrices) - sum(hidden * m.width for m in matrices)
    head = hidden * hidden + hidden + hidden * config.num_labels + config.num_labels
    exits = max(0, len(sub.layers) - 1) * (hidden * config.num_labels + config.num_labels) if config.exits else 0
    return ParamCounts(embeddings=embeddings, encoder=encoder, head=head, exits=exits)


def layer_macs(config: SupernetConfig, heads: int, units: int, seq_len: int, kept: int | None = None,
               compression: Compression | None = None) -> int:
    """MACs of one kept layer that reads `seq_len` tokens and passes on `kept` of them (default: all); the
    formula and why is in supernet.schedules.layer_macs (and supernet.factors.projection_macs compressed)."""
    if compression is None:
        return schedules.layer_macs(config.hidden_size, heads, config.head_size, units, seq_len, kept)
    kept = seq_len if kept is None else kept
    return (factors.projection_macs(compression, config.hidden_size, heads, config.head_size, units, seq_len, kept)
            + schedules.attention_macs(heads, config.head_size, seq_len, kept))


def kept_tokens(sub: SubNetworkConfig, length: int) -> list[int]:
    """Tokens present after each kept layer for an example of `length` tokens: ⌈r_l · length⌉ for the layer's
    keep fraction r_l, never fewer than one ([CLS] always stays). A shared stack's steps: of `sub.unrolled`."""
    if sub.token_keep is None:
        return [length] * len(sub.layers)
    return [schedules.kept_count(sub.token_keep[i], length) for i in sub.layers]


def answers(sub: SubNetworkConfig) -> int:
    """How many heads can answer: one per kept layer (exits, then the main head after the last), at least the
    main head of a network without layers. Exit positions run from 1 to this."""
    return max(1, len(sub.layers))


def count_macs(config: SupernetConfig, sub: SubNetworkConfig | None = None, *, seq_len: int = 128,
               encoder_only: bool = False, exit_after: int | None = None,
               compression: Compression | None = None) -> int:
    """MACs of one example of `seq_len` tokens, token elimination included.

    `exit_after`: the example leaves after its `exit_after`-th kept layer (1-based; None: it runs them all).
    With an exit_threshold the example evaluates the open exit head (SubNetworkConfig.open_exits) of every layer
    it runs but the last kept one (H·C each), and the main head only when it reaches the end; without one no exit
    head runs and it cannot leave early. Which exit an example takes is a matter of the data: see expected_macs."""
    sub = (sub or SubNetworkConfig.full(config)).validate(config)
    last = answers(sub)
    exit_after = last if exit_after is None else exit_after
    if isinstance(exit_after, bool) or not isinstance(exit_after, int) or not 1 <= exit_after <= last:
        raise ValueError(f"exit_after is a kept layer's position from 1 to {last}, got {exit_after!r}")
    if exit_after < last and sub.exit_threshold is None:
        raise ValueError("an example leaves before the last kept layer only under an exit_threshold")
    if compression is not None:
        compressed_layout(config, sub, compression)
    reads, encoder = seq_len, 0
    timed, evaluations = sub.unrolled(config)  # a shared stack's steps as the layers they run (2 each under Heun)
    ran = zip(timed.kept_heads(), timed.kept_units(), kept_tokens(timed, seq_len), strict=True)
    for position, (h, u, kept) in enumerate(ran, start=1):
        if position > exit_after:
            break
        encoder += evaluations * layer_macs(config, h, u, reads, kept, compression)
        reads = kept
    if encoder_only:
        return encoder
    words = factors.embedding_macs(compression, config.hidden_size, seq_len)
    if config.embedding_size is not None:  # ALBERT's projection, per token
        words += seq_len * config.embedding_size * config.hidden_size
    hidden, labels = config.hidden_size, config.num_labels
    opened = sub.open_positions()
    if sub.exit_threshold is None:
        exit_heads = 0
    elif opened is None:
        exit_heads = min(exit_after, last - 1)
    else:
        exit_heads = sum(1 for p in opened if p <= exit_after)
    main = hidden * hidden + hidden * labels if exit_after == last else 0
    return words + encoder + exit_heads * hidden * labels + main


def expected_macs(config: SupernetConfig, sub: SubNetworkConfig, lengths: Sequence[int], *,
                  encoder_only: bool = False, exit_layers: Sequence[int] | None = None,
                  compression: Compression | None = None) -> float:
    """Mean MACs per example over real input lengths (a task's validation examples, unpadded): the cost that
    token elimination and early exits change with each input, which one `seq_len` cannot describe.

    `exit_layers`: where each example leaves (same order as `lengths`; positions as in count_macs, e.g. the
    forward's `last_exit_layers` or supernet.evaluation.exit_positions); None: every example runs every kept
    layer."""
    if not lengths:
        raise ValueError("expected_macs needs at least one input length")
    if exit_layers is None:
        pairs = Counter((int(n), None) for n in lengths)
    else:
        if len(exit_layers) != len(lengths):
            raise ValueError(f"expected_macs needs one exit layer per length: {len(exit_layers)} exit layers for "
                             f"{len(lengths)} lengths")
        pairs = Counter((int(n), int(k)) for n, k in zip(lengths, exit_layers, strict=True))
    total = sum(count * count_macs(config, sub, seq_len=n, encoder_only=encoder_only, exit_after=k,
                                   compression=compression)
                for (n, k), count in pairs.items())
    return total / len(lengths)
