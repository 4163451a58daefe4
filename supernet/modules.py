"""Elastic BERT building blocks: one implementation for the supernet and for exported models.

Every block owns full-size weights and can run a sub-network by *slicing weight views* (the first k
heads, the first k FFN units), so a small sub-network really costs less: masking would cost the full
forward pass. An exported model is the same classes built at the smaller widths, so supernet and
export share one forward implementation. This file imports only torch and transformers.activations:
it is copied verbatim into every exported model folder (see `modeling_nasprune.py`).

Shapes: B batch, T tokens, H hidden size, k active heads, d head size, u active units.
"""

from __future__ import annotations

import math
import numbers
import warnings
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from . import schedules
from .factorised import BiasOnly, LowRankLinear, MatrixBank
from .factors import Compression, block_count, layout, lowrank_rank


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear that accepts a width of 0 (a block pruned to 0 heads or units) without warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(in_features, out_features)


def _check_width(name: str, value: int, maximum: int) -> int:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be between 0 and {maximum}, got {value}")
    return int(value)


class ElasticSelfAttention(nn.Module):
    """BERT's attention block: multi-head self-attention, output projection, residual, LayerNorm."""

    def __init__(self, hidden_size: int, num_heads: int, head_size: int, attention_dropout: float,
                 hidden_dropout: float, layer_norm_eps: float) -> None:
        super().__init__()
        width = num_heads * head_size
        self.num_heads = num_heads
        self.head_size = head_size
        self.active_heads = num_heads
        self.attention_dropout = attention_dropout
        self._build_projections(hidden_size, width)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout)

    def _build_projections(self, hidden_size: int, width: int) -> None:
        self.query = _linear(hidden_size, width)
        self.key = _linear(hidden_size, width)
        self.value = _linear(hidden_size, width)
        self.dense = _linear(width, hidden_size)

    def _qkv(self, x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K and V of the first `width` columns: (B, T, H) -> three (B, T, width)."""
        return tuple(F.linear(x, linear.weight[:width], linear.bias[:width])  # type: ignore[return-value]
                     for linear in (self.query, self.key, self.value))

    def _output(self, context: torch.Tensor, width: int) -> torch.Tensor:
        """The output projection of the first `width` context columns: (B, T, width) -> (B, T, H)."""
        return F.linear(context, self.dense.weight[:, :width], self.dense.bias)

    def set_sub_network(self, heads: int) -> None:
        self.active_heads = _check_width("heads", heads, self.num_heads)

    def reset_super_network(self) -> None:
        self.active_heads = self.num_heads

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, T, H); mask: bool (B, 1, 1, T), True where a key may be attended, or None."""
        k, d = self.active_heads, self.head_size
        if k == 0:  # no heads: the block adds only the projection's bias
            out = self.dense.bias.expand_as(x)
        else:
            width = k * d
            batch, tokens, _ = x.shape
            q, key, value = (y.view(batch, tokens, k, d).transpose(1, 2) for y in self._qkv(x, width))  # (B, k, T, d)
            context = F.scaled_dot_product_attention(
                q, key, value, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0,
            )  # (B, k, T, d)
            context = context.transpose(1, 2).reshape(batch, tokens, width)
            out = self._output(context, width)  # (B, T, H)
        return self.norm(x + self.dropout(out))

    def forward_eliminating(self, x: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, *,
                            with_index: bool = False) -> tuple[torch.Tensor, ...]:
        """The block on every token read, then only the `keep[b]` most attended tokens of example b go on.

        x: (B, T, H); valid: bool (B, T), the real tokens; keep: long (B,), 1 <= keep <= valid tokens, at least
        one head active. Returns the kept tokens in their original order, re-padded to K = max(keep): (B, K, H),
        and their validity (B, K); `with_index`: also where each came from in x (B, K).

        Ranking (PoWER-BERT's significance score, the "attention context contribution" of TiltedBERT): token j
        scores the attention it receives, summed over the active heads and the example's valid queries other
        than itself, from this layer's softmax probabilities (before dropout). [CLS] (position 0) always stays
        first: the head reads it. The ranking needs the whole attention matrix, so Q, K, V and QKᵀ run on every
        token read; the context, the output projection (and the FFN after this block) only on the kept ones.
        """
        k, d = self.active_heads, self.head_size
        width = k * d
        batch, tokens, hidden = x.shape
        q, key, value = (y.view(batch, tokens, k, d).transpose(1, 2) for y in self._qkv(x, width))  # (B, k, T, d)
        scores = torch.matmul(q, key.transpose(-1, -2)) * (d ** -0.5)  # (B, k, T, T)
        padded = not bool(valid.all())  # a batch of one, or of equal lengths, has no padding to mask
        if padded:
            scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        if padded:
            queries = valid[:, None, :, None].to(probs.dtype)
            received = (probs * queries).sum(dim=(1, 2)) - (probs.diagonal(dim1=-2, dim2=-1) * queries[..., 0]).sum(1)
            received = received.masked_fill(~valid, float("-inf"))
        else:
            received = probs.sum(dim=(1, 2)) - probs.diagonal(dim1=-2, dim2=-1).sum(1)
        received[:, 0] = float("inf")
        most = int(keep.max())
        ranked = received.topk(most, dim=1).indices  # (B, K), best first
        chosen = torch.arange(most, device=x.device)[None, :] < keep[:, None]
        index = torch.where(chosen, ranked, tokens).sort(dim=1).values  # original order; unused slots last
        index = index.clamp(max=tokens - 1)
        rows = probs.gather(2, index[:, None, :, None].expand(batch, k, most, tokens))  # (B, k, K, T)
        if self.training and self.attention_dropout > 0:
            rows = F.dropout(rows, self.attention_dropout)
        context = torch.matmul(rows, value).transpose(1, 2).reshape(batch, most, width)
        out = self._output(context, width)  # (B, K, H)
        residual = x.gather(1, index[:, :, None].expand(batch, most, hidden))
        out = self.norm(residual + self.dropout(out))
        return (out, chosen, index) if with_index else (out, chosen)


class ElasticFeedForward(nn.Module):
    """BERT's FFN block: up-projection, activation, down-projection, residual, LayerNorm."""

    def __init__(self, hidden_size: int, units: int, hidden_act: str, hidden_dropout: float,
                 layer_norm_eps: float) -> None:
        super().__init__()
        self.units = units
        self.active_units = units
        self._build_projections(hidden_size, units)
        self.act = ACT2FN[hidden_act]
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout)

    def _build_projections(self, hidden_size: int, units: int) -> None:
        self.intermediate = _linear(hidden_size, units)
        self.output = _linear(units, hidden_size)

    def _up(self, x: torch.Tensor, units: int) -> torch.Tensor:
        """(B, T, H) -> (B, T, units), before the activation."""
        return F.linear(x, self.intermediate.weight[:units], self.intermediate.bias[:units])

    def _down(self, h: torch.Tensor, units: int) -> torch.Tensor:
        """(B, T, units) -> (B, T, H)."""
        return F.linear(h, self.output.weight[:, :units], self.output.bias)

    def set_sub_network(self, units: int) -> None:
        self.active_units = _check_width("units", units, self.units)

    def reset_super_network(self) -> None:
        self.active_units = self.units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.active_units
        if u == 0:
            out = self.output.bias.expand_as(x)
        else:
            out = self._down(self.act(self._up(x, u)), u)  # (B, T, u) inside, (B, T, H) out
        return self.norm(x + self.dropout(out))


class _Factorised:
    """What a compressed block computes with (supernet/factors.py): its protocol and, for the bank protocols, the
    model's one MatrixBank and where this layer's blocks start in it. A compressed model is built at its widths
    and never slices them."""

    def __init__(self, compression: Compression, bank: MatrixBank | None, firsts: dict[str, int]) -> None:
        self.compression, self.bank, self.firsts = compression, bank, firsts

    def fixed(self, name: str, value: int, width: int) -> int:
        if value != width:
            raise ValueError(f"a compressed model runs at the widths it was compressed at: {name} {value} != {width}")
        return value


class FactorisedSelfAttention(ElasticSelfAttention):
    """The attention block of a compressed model: Q, K, V and the output projection factorised (low rank, or
    blocks of the model's matrix bank, Q, K and V expanded from one x·U)."""

    def __init__(self, factorised: _Factorised, *args: Any) -> None:
        object.__setattr__(self, "factorised", factorised)  # not a submodule: the bank belongs to the model once
        super().__init__(*args)

    def _build_projections(self, hidden_size: int, width: int) -> None:
        if self.factorised.bank is None:
            rank = lowrank_rank(self.factorised.compression, hidden_size, width)
            self.query, self.key, self.value = (LowRankLinear(hidden_size, width, rank) for _ in range(3))
            self.dense = LowRankLinear(width, hidden_size, rank)
        else:
            self.query, self.key, self.value = BiasOnly(width), BiasOnly(width), BiasOnly(width)
            self.dense = BiasOnly(hidden_size)

    def _qkv(self, x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bank = self.factorised.bank
        if bank is None:
            return self.query(x), self.key(x), self.value(x)
        q, k, v = bank.expand(bank.reduce(x), self.factorised.firsts["query"], width, groups=3)
        return q + self.query.bias, k + self.key.bias, v + self.value.bias

    def _output(self, context: torch.Tensor, width: int) -> torch.Tensor:
        bank = self.factorised.bank
        if bank is None:
            return self.dense(context)
        return bank.contract(context, self.factorised.firsts["dense"]) + self.dense.bias

    def set_sub_network(self, heads: int) -> None:
        self.active_heads = self.factorised.fixed("heads", heads, self.num_heads)


class FactorisedFeedForward(ElasticFeedForward):
    """The FFN block of a compressed model: both projections factorised."""

    def __init__(self, factorised: _Factorised, *args: Any) -> None:
        object.__setattr__(self, "factorised", factorised)
        super().__init__(*args)

    def _build_projections(self, hidden_size: int, units: int) -> None:
        if self.factorised.bank is None:
            rank = lowrank_rank(self.factorised.compression, hidden_size, units)
            self.intermediate = LowRankLinear(hidden_size, units, rank)
            self.output = LowRankLinear(units, hidden_size, rank)
        else:
            self.intermediate, self.output = BiasOnly(units), BiasOnly(hidden_size)

    def _up(self, x: torch.Tensor, units: int) -> torch.Tensor:
        bank = self.factorised.bank
        if bank is None:
            return self.intermediate(x)
        return bank.expand(bank.reduce(x), self.factorised.firsts["intermediate"], units)[0] + self.intermediate.bias

    def _down(self, h: torch.Tensor, units: int) -> torch.Tensor:
        bank = self.factorised.bank
        if bank is None:
            return self.output(h)
        return bank.contract(h, self.factorised.firsts["output"]) + self.output.bias

    def set_sub_network(self, units: int) -> None:
        self.active_units = self.factorised.fixed("units", units, self.units)


class ElasticLayer(nn.Module):
    def __init__(self, cfg: Any, heads: int, units: int, factorised: _Factorised | None = None) -> None:
        super().__init__()
        attention = ElasticSelfAttention if factorised is None else partial(FactorisedSelfAttention, factorised)
        ffn = ElasticFeedForward if factorised is None else partial(FactorisedFeedForward, factorised)
        self.attention = attention(cfg.hidden_size, heads, cfg.head_size, cfg.attention_dropout, cfg.hidden_dropout,
                                   cfg.layer_norm_eps)
        self.ffn = ffn(cfg.hidden_size, units, cfg.hidden_act, cfg.hidden_dropout, cfg.layer_norm_eps)

    def set_sub_network(self, heads: int, units: int) -> None:
        self.attention.set_sub_network(heads)
        self.ffn.set_sub_network(units)

    def reset_super_network(self) -> None:
        self.attention.reset_super_network()
        self.ffn.reset_super_network()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, step: float = 1.0) -> torch.Tensor:
        """The layer; with `step` h != 1, one Euler step of size h along its residual branch instead:
        x + h·(Layer(x) − x). Seen as an ODE (Chen et al., Findings of EMNLP 2023), a residual layer is the step of
        size 1 of dx/dt = f(x) with f(x) = Layer(x) − x (post-LayerNorm too: f is defined by the difference), so
        a layer standing in for m dropped ones after it can take a step of 1 + m."""
        out = self.ffn(self.attention(x, mask))
        return out if step == 1.0 else x + step * (out - x)

    def forward_eliminating(self, x: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor,
                            step: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer with token elimination between its attention and its FFN (see ElasticSelfAttention); a
        `step` as in `forward`, over the tokens kept."""
        if step == 1.0:
            x, valid = self.attention.forward_eliminating(x, valid, keep)
            return self.ffn(x), valid
        kept, valid, index = self.attention.forward_eliminating(x, valid, keep, with_index=True)
        start = x.gather(1, index[:, :, None].expand(*index.shape, x.shape[-1]))
        return start + step * (self.ffn(kept) - start), valid


class Embeddings(nn.Module):
    """Word + position + token-type embeddings (never pruned). RoBERTa offsets positions past padding. ALBERT's
    are `cfg.embedding_size` E wide, normalised at that width, then projected to the hidden size (`projection`)."""

    def __init__(self, cfg: Any, rank: int | None = None) -> None:
        super().__init__()
        width = getattr(cfg, "embedding_size", None) or cfg.hidden_size
        if rank is not None and getattr(cfg, "embedding_size", None) is not None:
            raise ValueError("a compressed word embedding (embedding_rank) on factorised embeddings (embedding_size) "
                             "is not supported")
        # `rank` R (a compressed model's embedding_rank) factorises the word embeddings: vocab x R, then R x H
        self.word_embeddings = nn.Embedding(cfg.vocab_size, rank or width, padding_idx=cfg.pad_token_id)
        self.word_projection = None if rank is None else nn.Linear(rank, width, bias=False)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, width)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, width)
        self.norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.projection = None if getattr(cfg, "embedding_size", None) is None else nn.Linear(width, cfg.hidden_size)
        self.pad_token_id = cfg.pad_token_id
        self.position_offset = bool(cfg.position_offset)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        tokens = input_ids.shape[1]
        if self.position_offset:
            not_pad = input_ids.ne(self.pad_token_id).long()
            positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id
        else:
            positions = torch.arange(tokens, device=input_ids.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        words = self.word_embeddings(input_ids)
        if self.word_projection is not None:
            words = self.word_projection(words)
        x = (words + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(positions))
        x = self.dropout(self.norm(x))
        return x if self.projection is None else self.projection(x)  # (B, T, H)


class ClassificationHead(nn.Module):
    """Dense + tanh on the first token, then a linear classifier (BERT's pooler + classifier,
    RoBERTa's classification head). One output for regression."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        dropout = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.dense(hidden[:, 0]))  # (B, H)
        return self.out(self.dropout(pooled))  # (B, num_labels)


class ExitHead(nn.Module):
    """An early exit after a layer (COST-EFF, Shen et al., EMNLP 2022): tanh of the layer's first-token state,
    dropout, one linear classifier. No pooler dense: H·C + C parameters, a few hundred, so that exits stay slender
    and their cost tiny next to a layer's (the paper's choice); the last kept layer answers with the main head."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        dropout = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        first = torch.tanh(hidden[:, 0])
        # in eval the dropout is the identity: skipping its call matters where an exit is checked per layer at batch 1
        return self.out(self.dropout(first) if self.training else first)  # (B, num_labels)


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis ÷ ln C, in [0, 1], as float32: (..., C) -> (...).

    The exiting forward and the offline scoring of stored logits (supernet.evaluation.exit_positions) call this one
    function on the same float32 values (the logits are rounded to float32 first, whatever dtype computed them),
    so they take the same decisions. It computes in float64 and rounds once: an element-wise kernel may treat a
    tensor's vectorised body and its tail an ulp apart, and the tail depends on the batch's shape."""
    probs = logits.float().double().softmax(dim=-1)
    return (torch.special.entr(probs).sum(dim=-1) / math.log(logits.shape[-1])).float()


def check_open_exits(layers: Any, *, exits: bool, num_layers: int) -> list[int] | None:
    """Open exits in canonical form: sorted layer indices, each with an exit (every layer but the last); None for
    all of them. ValueError, naming open_exits, for a model without exit heads, an empty list or an index without
    an exit."""
    if layers is None:
        return None
    if not exits:
        raise ValueError("open_exits needs exit heads, and this model has none")
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)):
        raise ValueError(f"open_exits is a list of layer indices, got {layers!r}")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
        raise ValueError(f"open_exits holds layer indices (integers), got {layers!r}")
    opened = sorted(set(layers))
    if not opened:
        raise ValueError("open_exits is empty: no exit would be read (set the exit threshold to None instead)")
    if opened[0] < 0 or opened[-1] > num_layers - 2:
        raise ValueError(f"open_exits {opened}: each must be a layer from 0 to {num_layers - 2} (the last layer "
                         "answers with the main head)")
    return None if len(opened) == num_layers - 1 else opened


def check_exit_threshold(threshold: Any, *, exits: bool, num_labels: int) -> float | None:
    """A usable exit threshold: a normalised entropy in [0, 1]; 0 and None mean full depth (None is returned).
    ValueError, naming exit_threshold, for a model without exit heads or a regression task (no entropy)."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold) \
            or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"exit_threshold is a normalised entropy in [0, 1], got {threshold!r}")
    if threshold == 0.0:
        return None
    if not exits:
        raise ValueError("exit_threshold needs exit heads, and this model has no exits (build or train it with "
                         "exits on)")
    if num_labels == 1:
        raise ValueError("early exiting needs a classification task: a regression output has no prediction "
                         "entropy to compare with exit_threshold")
    return float(threshold)


class ElasticBert(nn.Module):
    """Embeddings, a stack of elastic layers and a classification head, optionally with early exits.

    `cfg` is any object with the field names of `supernet.config.SupernetConfig` (that class, or
    the exported model's Hugging Face config). Layer i has `cfg.layer_heads[i]` heads and
    `cfg.layer_units[i]` FFN units; `active_layers` says which layers run, in order.

    With `cfg.exits`, `exit_heads[i]` is an ExitHead after layer i, for every layer but the last; the last
    *kept* layer always answers with the main head, whichever its index. `exit_threshold` (τ, None: full depth)
    makes the forward exit per example: see `forward`; `open_exits` (indices into `layers`, None: all) says which
    exits it reads.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        # a compressed model (supernet/factors.py): factorised layers, with one matrix bank for all of them
        self.compression = Compression.from_dict(getattr(cfg, "compression", None))
        self.embeddings = Embeddings(cfg, None if self.compression is None else self.compression.embedding_rank)
        self.bank: MatrixBank | None = None
        factorised: list[_Factorised | None] = [None] * len(cfg.layer_heads)
        if self.compression is not None:
            matrices = layout(cfg.hidden_size, cfg.head_size, list(cfg.layer_heads), list(cfg.layer_units))
            self.compression.check(cfg.hidden_size, block_count(matrices))
            if self.compression.banked:
                self.bank = MatrixBank(cfg.hidden_size, self.compression, block_count(matrices))
            factorised = [_Factorised(self.compression, self.bank,
                                      {m.name: m.first for m in matrices if m.layer == layer})
                          for layer in range(len(cfg.layer_heads))]
        groups = getattr(cfg, "layer_groups", None)
        if groups is None:
            self.layers = nn.ModuleList(
                ElasticLayer(cfg, heads, units, factors)
                for heads, units, factors in zip(cfg.layer_heads, cfg.layer_units, factorised, strict=True)
            )
        else:  # parameter sharing: one block per group, stored once; `layers` is a view, block per layer
            if self.compression is not None:
                raise ValueError("compressing a parameter-shared model is not supported")
            firsts = {group: index for index, group in reversed(list(enumerate(groups)))}
            self.blocks = nn.ModuleList(ElasticLayer(cfg, cfg.layer_heads[firsts[g]], cfg.layer_units[firsts[g]])
                                        for g in range(len(firsts)))
            self.layers = [self.blocks[g] for g in groups]
        self.layer_groups = None if groups is None else [int(g) for g in groups]
        self.head = ClassificationHead(cfg)
        self.num_labels = int(cfg.num_labels)
        self.exits = bool(getattr(cfg, "exits", False))
        self.exit_heads = nn.ModuleList(
            ExitHead(cfg) for _ in range(len(self.layers) - 1 if self.exits else 0)
        )
        self.active_layers: list[int] = list(range(len(self.layers)))
        # Token elimination: per layer (an index into `layers`), the fraction of each example's own length still
        # present after it; None runs every token through every layer.
        keep = getattr(cfg, "token_keep", None)
        self.token_keep: list[float] | None = None if keep is None else [float(r) for r in keep]
        # a shared stack in fewer steps: per layer that runs, the layer whose keep fraction applies after its step
        # (schedules.step_keep_layers); None: each layer's own
        self.keep_layers: dict[int, int] | None = None
        self.exit_threshold = getattr(cfg, "exit_threshold", None)
        # the layers whose exits a threshold reads (None: every one): an exit no input leaves at only costs its check
        opened = getattr(cfg, "open_exits", None)
        self.open_exits: frozenset[int] | None = None if opened is None else frozenset(int(i) for i in opened)
        # after each forward: per example, the 1-based position (among the kept layers) of the head that answered
        self.last_exit_layers: torch.Tensor | None = None
        # ODE-compensated layer dropping: per layer (an index into `layers`), its Euler step (ElasticLayer.forward);
        # None: every step is 1
        steps = getattr(cfg, "layer_steps", None)
        self.layer_steps: list[float] | None = None if steps is None else [float(h) for h in steps]
        # a shared stack as an ODE (set_ode): Heun's method takes two evaluations a step; None: Euler
        self.ode_solver: str | None = None
        if self.layer_groups is not None:
            self.set_ode(getattr(cfg, "ode_steps", None), getattr(cfg, "ode_solver", None))

    def set_ode(self, steps: int | None, solver: str | None) -> None:
        """Integrate a parameter-shared stack in `steps` steps (None: one per layer) with `solver` ("euler" or
        None, "heun"): which layers run and their step sizes (schedules.ode_schedule)."""
        if solver not in (None, "euler", "heun"):
            raise ValueError(f"ode_solver must be euler or heun, got {solver!r}")
        if self.layer_groups is None and (steps is not None or solver not in (None, "euler")):
            raise ValueError("ode_steps and ode_solver need a parameter-shared model")
        self.run_schedule(schedules.ode_schedule(self.layer_groups, len(self.layers), steps))
        self.ode_solver = None if solver == "euler" else solver

    def run_schedule(self, schedule: list[tuple[int, float]] | tuple[tuple[int, float], ...]) -> None:
        """Run the layers of `schedule` in its order, each with its Euler step ((layer index, step) pairs):
        `active_layers`, `layer_steps` (None where every step is 1) and, on a shared stack, `keep_layers`."""
        self.active_layers = [index for index, _ in schedule]
        self.keep_layers = (None if self.layer_groups is None
                            else dict(zip(self.active_layers, schedules.step_keep_layers(schedule), strict=True)))
        self.layer_steps = None
        if any(step != 1.0 for _, step in schedule):
            self.layer_steps = [1.0] * len(self.layers)
            for index, step in schedule:
                self.layer_steps[index] = step

    @property
    def exit_threshold(self) -> float | None:
        """τ: an example leaves after a kept layer whose exit's normalised prediction entropy is below it; None
        (or 0 when set) runs every example through every kept layer. Checked by check_exit_threshold."""
        return self._exit_threshold

    @exit_threshold.setter
    def exit_threshold(self, value: float | None) -> None:
        self._exit_threshold = check_exit_threshold(value, exits=self.exits, num_labels=self.num_labels)

    def _keep_counts(self, index: int, lengths: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
        """Tokens each example keeps after layer `index` (⌈r · its own length⌉, at least [CLS], never more than
        it has left; on a shared stack r is that of the layer its step ends in), or None when the layer drops none
        (no schedule, no heads, nothing to drop)."""
        fraction = None if self.token_keep is None else self.token_keep[
            index if self.keep_layers is None else self.keep_layers[index]]
        if fraction is None or fraction >= 1.0 or self.layers[index].attention.active_heads == 0:
            return None
        keep = torch.ceil(lengths.double() * fraction - 1e-9).long().clamp(min=1)  # schedules.kept_count
        present = lengths if valid is None else valid.sum(dim=1)
        keep = torch.minimum(keep, present)
        return None if bool((keep >= present).all()) else keep

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, all_exits: bool = False) -> torch.Tensor:
        """input_ids, attention_mask, token_type_ids: (B, T). Returns logits (B, num_labels).

        `all_exits=True` returns (E, B, num_labels) instead: the answer of every kept layer's exit in order, the
        last from the main head (E kept layers, at least one answer), from one pass with no example leaving. It
        is what exit training and the offline scoring of thresholds read.

        Otherwise, with `exit_threshold` τ set, an example leaves after a kept layer (but the last) with an open
        exit (`open_exits`, None: all) whose normalised entropy is strictly below τ (one exactly at τ goes on),
        with that exit's logits; the others go on, so the batch shrinks. `last_exit_layers` (B,) then says where
        each example left (E: the main head).
        Exiting composes with token elimination: an exit reads position 0, which elimination always keeps.
        """
        if all_exits and not self.exits and len(self.active_layers) > 1:
            raise ValueError("all_exits needs exit heads, and this model has no exits")
        mask = None
        # An all-ones mask is dropped so SDPA can take its fast path; under export or a CUDA graph capture the
        # check is data dependent (a host sync), so the mask is kept.
        if attention_mask is not None and (_tracing(input_ids.device) or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)
        valid: torch.Tensor | None = None  # (B, T') once tokens have been eliminated
        lengths = None
        if self.token_keep is not None:
            lengths = (attention_mask.sum(dim=1) if attention_mask is not None
                       else torch.full(input_ids.shape[:1], input_ids.shape[1], device=input_ids.device))
        threshold = None if all_exits else self.exit_threshold
        answers = max(1, len(self.active_layers))
        state = _Running(x, mask, valid, lengths, attention_mask)
        exits: list[torch.Tensor] = []
        for position, index in enumerate(self.active_layers, start=1):
            self._layer(index, state)
            if position == answers:
                break
            if all_exits:
                exits.append(self.exit_heads[index](state.x))
            elif threshold is not None and (self.open_exits is None or index in self.open_exits):
                state.leave(self.exit_heads[index](state.x), threshold, position)
                if state.done:
                    break
        if all_exits:
            exits.append(self.head(state.x))
            self._record_exits(None, answers, input_ids.shape[0], x.device)
            return torch.stack(exits)
        if threshold is None:
            self._record_exits(None, answers, input_ids.shape[0], x.device)
            return self.head(state.x)
        if not state.done:
            state.answer(self.head(state.x), answers)
        self.last_exit_layers = state.positions
        return state.logits

    def _record_exits(self, positions: torch.Tensor | None, answers: int, batch: int, device: torch.device) -> None:
        """`last_exit_layers` of a forward in which no example left early (not under export: tracing cannot hold
        a tensor attribute written at run time, nor under a CUDA graph capture: the graph's owner sets it)."""
        if not _tracing(device):
            self.last_exit_layers = torch.full((batch,), answers, dtype=torch.long, device=device)

    def _layer(self, index: int, state: _Running) -> None:
        """Run layer `index` on the examples still running, eliminating tokens where the schedule says so."""
        keep = None if state.lengths is None else self._keep_counts(index, state.lengths, state.valid)
        step = 1.0 if self.layer_steps is None else self.layer_steps[index]
        if self.ode_solver == "heun":  # x + h/2·(f(x) + f(x + h·f(x))) is the mean of x and two Euler steps
            if keep is not None:
                raise ValueError("token elimination does not run with Heun's method")
            layer = self.layers[index]
            state.x = 0.5 * (state.x + layer(layer(state.x, state.mask, step), state.mask, step))
            return
        if keep is None:
            state.x = self.layers[index](state.x, state.mask, step)
            return
        if state.valid is None:
            state.valid = (state.attention_mask.bool() if state.attention_mask is not None
                           else torch.ones(state.x.shape[:2], dtype=torch.bool, device=state.x.device))
        state.x, state.valid = self.layers[index].forward_eliminating(state.x, state.valid, keep, step)
        # every example kept as many tokens (always so at batch 1): no padding, and SDPA's unmasked path is faster
        state.mask = (None if bool(state.valid.all()) and not torch.compiler.is_compiling()
                      else state.valid[:, None, None, :])


def _tracing(device: torch.device) -> bool:
    """Under torch.compile/export or a CUDA graph capture (supernet/graphs.py): nothing may read a tensor's
    values on the host, so shapes must not depend on them."""
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class _Running:
    """The examples of a batch still running through the layers, and the answers of those that left.

    `rows` maps each running example to its row in the input batch; `leave` moves the confident ones out (their
    logits into `logits`, their exit into `positions`) and keeps every per-example tensor of the others.
    """

    def __init__(self, x: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor | None,
                 lengths: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        self.x, self.mask, self.valid, self.lengths, self.attention_mask = x, mask, valid, lengths, attention_mask
        batch = x.shape[0]
        self.rows = torch.arange(batch, device=x.device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=x.device)
        self.logits: torch.Tensor | None = None
        self.done = False

    def answer(self, logits: torch.Tensor, position: int, chosen: torch.Tensor | None = None) -> None:
        """Record `logits` (of the running examples, or of those `chosen`) as their answers, given at `position`."""
        rows = self.rows if chosen is None else self.rows[chosen]
        if self.logits is None:
            self.logits = logits.new_empty((self.positions.shape[0], logits.shape[-1]))
        self.logits[rows] = logits if chosen is None else logits[chosen]
        self.positions[rows] = position

    def leave(self, logits: torch.Tensor, threshold: float, position: int) -> None:
        """Examples whose normalised entropy is below `threshold` leave with `logits` (B', C) at `position`."""
        confident = normalised_entropy(logits) < threshold  # (B',)
        if not bool(confident.any()):
            return
        self.answer(logits, position, confident)
        stay = ~confident
        if not bool(stay.any()):
            self.done = True
            return
        self.rows = self.rows[stay]
        self.x = self.x[stay]
        self.mask = None if self.mask is None else self.mask[stay]
        self.valid = None if self.valid is None else self.valid[stay]
        self.lengths = None if self.lengths is None else self.lengths[stay]
        self.attention_mask = None if self.attention_mask is None else self.attention_mask[stay]
        self._trim()

    def _trim(self) -> None:
        """Drop the trailing columns that are padding for every example still running (the longest may have
        left), and the mask once none is left: the later layers then cost what the remaining examples need."""
        present = self.valid if self.valid is not None else self.attention_mask
        if present is None or self.mask is None or torch.compiler.is_compiling():
            return
        columns = present.bool().any(dim=0)  # (T,)
        width = int(columns.nonzero().max()) + 1
        if width < columns.shape[0]:
            self.x = self.x[:, :width]
            self.mask = self.mask[..., :width]
            self.valid = None if self.valid is None else self.valid[:, :width]
            self.attention_mask = None if self.attention_mask is None else self.attention_mask[:, :width]
        if bool(self.mask.all()):  # as the plain forward does: no padding, SDPA's unmasked path is faster
            self.mask = None
