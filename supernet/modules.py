"""Elastic BERT building blocks: one implementation for the supernet and for exported models.

Every block owns full-size weights and can run a sub-network by *slicing weight views* (the first k
heads, the first k FFN units), so a small sub-network really costs less: masking would cost the full
forward pass. An exported model is the same classes built at the smaller widths, so supernet and
export share one forward implementation. This file imports only torch and transformers.activations:
it is copied verbatim into every exported model folder (see `modeling_nasprune.py`).

Shapes: B batch, T tokens, H hidden size, k active heads, d head size, u active units.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


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
        self.query = _linear(hidden_size, width)
        self.key = _linear(hidden_size, width)
        self.value = _linear(hidden_size, width)
        self.dense = _linear(width, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout)

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

            def project(linear: nn.Linear) -> torch.Tensor:  # (B, k, T, d)
                y = F.linear(x, linear.weight[:width], linear.bias[:width])
                return y.view(batch, tokens, k, d).transpose(1, 2)

            context = F.scaled_dot_product_attention(
                project(self.query), project(self.key), project(self.value), attn_mask=mask,
                dropout_p=self.attention_dropout if self.training else 0.0,
            )  # (B, k, T, d)
            context = context.transpose(1, 2).reshape(batch, tokens, width)
            out = F.linear(context, self.dense.weight[:, :width], self.dense.bias)  # (B, T, H)
        return self.norm(x + self.dropout(out))

    def forward_eliminating(self, x: torch.Tensor, valid: torch.Tensor,
                            keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block on every token read, then only the `keep[b]` most attended tokens of example b go on.

        x: (B, T, H); valid: bool (B, T), the real tokens; keep: long (B,), 1 <= keep <= valid tokens, at least
        one head active. Returns the kept tokens in their original order, re-padded to K = max(keep): (B, K, H),
        and their validity (B, K).

        Ranking (PoWER-BERT's significance score, the "attention context contribution" of TiltedBERT): token j
        scores the attention it receives, summed over the active heads and the example's valid queries other
        than itself, from this layer's softmax probabilities (before dropout). [CLS] (position 0) always stays
        first: the head reads it. The ranking needs the whole attention matrix, so Q, K, V and QKᵀ run on every
        token read; the context, the output projection (and the FFN after this block) only on the kept ones.
        """
        k, d = self.active_heads, self.head_size
        width = k * d
        batch, tokens, hidden = x.shape

        def project(linear: nn.Linear) -> torch.Tensor:  # (B, k, T, d)
            y = F.linear(x, linear.weight[:width], linear.bias[:width])
            return y.view(batch, tokens, k, d).transpose(1, 2)

        q, key, value = project(self.query), project(self.key), project(self.value)
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
        out = F.linear(context, self.dense.weight[:, :width], self.dense.bias)  # (B, K, H)
        residual = x.gather(1, index[:, :, None].expand(batch, most, hidden))
        return self.norm(residual + self.dropout(out)), chosen


class ElasticFeedForward(nn.Module):
    """BERT's FFN block: up-projection, activation, down-projection, residual, LayerNorm."""

    def __init__(self, hidden_size: int, units: int, hidden_act: str, hidden_dropout: float,
                 layer_norm_eps: float) -> None:
        super().__init__()
        self.units = units
        self.active_units = units
        self.intermediate = _linear(hidden_size, units)
        self.act = ACT2FN[hidden_act]
        self.output = _linear(units, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout)

    def set_sub_network(self, units: int) -> None:
        self.active_units = _check_width("units", units, self.units)

    def reset_super_network(self) -> None:
        self.active_units = self.units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.active_units
        if u == 0:
            out = self.output.bias.expand_as(x)
        else:
            h = self.act(F.linear(x, self.intermediate.weight[:u], self.intermediate.bias[:u]))  # (B, T, u)
            out = F.linear(h, self.output.weight[:, :u], self.output.bias)  # (B, T, H)
        return self.norm(x + self.dropout(out))


class ElasticLayer(nn.Module):
    def __init__(self, cfg: Any, heads: int, units: int) -> None:
        super().__init__()
        self.attention = ElasticSelfAttention(cfg.hidden_size, heads, cfg.head_size, cfg.attention_dropout,
                                              cfg.hidden_dropout, cfg.layer_norm_eps)
        self.ffn = ElasticFeedForward(cfg.hidden_size, units, cfg.hidden_act, cfg.hidden_dropout,
                                      cfg.layer_norm_eps)

    def set_sub_network(self, heads: int, units: int) -> None:
        self.attention.set_sub_network(heads)
        self.ffn.set_sub_network(units)

    def reset_super_network(self) -> None:
        self.attention.reset_super_network()
        self.ffn.reset_super_network()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.ffn(self.attention(x, mask))

    def forward_eliminating(self, x: torch.Tensor, valid: torch.Tensor,
                            keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer with token elimination between its attention and its FFN (see ElasticSelfAttention)."""
        x, valid = self.attention.forward_eliminating(x, valid, keep)
        return self.ffn(x), valid


class Embeddings(nn.Module):
    """Word + position + token-type embeddings (never pruned). RoBERTa offsets positions past padding."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
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
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(positions))
        return self.dropout(self.norm(x))  # (B, T, H)


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


class ElasticBert(nn.Module):
    """Embeddings, a stack of elastic layers and a classification head.

    `cfg` is any object with the field names of `supernet.config.SupernetConfig` (that class, or
    the exported model's Hugging Face config). Layer i has `cfg.layer_heads[i]` heads and
    `cfg.layer_units[i]` FFN units; `active_layers` says which layers run, in order.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(
            ElasticLayer(cfg, heads, units) for heads, units in zip(cfg.layer_heads, cfg.layer_units, strict=True)
        )
        self.head = ClassificationHead(cfg)
        self.active_layers: list[int] = list(range(len(self.layers)))
        # Token elimination: per layer (an index into `layers`), the fraction of each example's own length still
        # present after it; None runs every token through every layer.
        keep = getattr(cfg, "token_keep", None)
        self.token_keep: list[float] | None = None if keep is None else [float(r) for r in keep]

    def _keep_counts(self, index: int, lengths: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
        """Tokens each example keeps after layer `index` (⌈r · its own length⌉, at least [CLS], never more than
        it has left), or None when the layer drops none (no schedule, no heads, nothing to drop)."""
        if self.token_keep is None or self.token_keep[index] >= 1.0 or self.layers[index].attention.active_heads == 0:
            return None
        keep = torch.ceil(lengths.double() * self.token_keep[index] - 1e-9).long().clamp(min=1)  # schedules.kept_count
        present = lengths if valid is None else valid.sum(dim=1)
        keep = torch.minimum(keep, present)
        return None if bool((keep >= present).all()) else keep

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, attention_mask, token_type_ids: (B, T). Returns logits (B, num_labels)."""
        mask = None
        # An all-ones mask is dropped so SDPA can take its fast path; under export the check is data
        # dependent, so the mask is kept.
        if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)
        valid: torch.Tensor | None = None  # (B, T') once tokens have been eliminated
        lengths = None
        if self.token_keep is not None:
            lengths = (attention_mask.sum(dim=1) if attention_mask is not None
                       else torch.full(input_ids.shape[:1], input_ids.shape[1], device=input_ids.device))
        for index in self.active_layers:
            keep = None if lengths is None else self._keep_counts(index, lengths, valid)
            if keep is None:
                x = self.layers[index](x, mask)
                continue
            if valid is None:
                valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids).bool()
            x, valid = self.layers[index].forward_eliminating(x, valid, keep)
            # every example kept as many tokens (always so at batch 1): no padding, and SDPA's unmasked path is faster
            mask = None if bool(valid.all()) and not torch.compiler.is_compiling() else valid[:, None, None, :]
        return self.head(x)
