"""Runtime of factorised weights (supernet/factors.py says what they are): the matrix bank, per-matrix low rank and
factorised word embeddings. Imports only torch and the sibling `factors.py`; copied into every exported folder.

Shapes: ... any leading axes, H hidden size, D = H block width, d rank, w a matrix's width, n blocks, l bank size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .factors import Compression


class BiasOnly(nn.Module):
    """The bias of a projection whose weight is factorised elsewhere (keeps the dense model's parameter name)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))


class LowRankLinear(nn.Module):
    """y = x·Aᵀ·Bᵀ + b: a rank-r factorisation of one (out x in) weight (the lowrank protocol)."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.zeros(rank, in_features))  # A (r x in)
        self.up = nn.Parameter(torch.zeros(out_features, rank))  # B (out x r)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up.shape[0] == 0:
            return x.new_zeros(x.shape[:-1] + (0,))
        return F.linear(F.linear(x, self.down), self.up, self.bias)


class MatrixBank(nn.Module):
    """Every block of every layer's weights as W_b = U·M_b·Vᵀ (H x D), with U and V shared; M_b a block's own core
    (shared-lowrank) or Σ_j P_bj C_j over a bank of `bank` cores (tucker). Ren et al., ICLR 2022."""

    def __init__(self, hidden: int, compression: Compression, blocks: int) -> None:
        super().__init__()
        d = compression.rank
        self.block_width = hidden
        self.hidden_factor = nn.Parameter(torch.zeros(hidden, d))  # U
        self.width_factor = nn.Parameter(torch.zeros(hidden, d))  # V (D x d)
        cores = blocks if compression.bank is None else compression.bank
        self.cores = nn.Parameter(torch.zeros(cores, d, d))  # S_b, or the bank's C_j
        self.mixing = None if compression.bank is None else nn.Parameter(torch.zeros(blocks, compression.bank))
        self._memo: tuple[tuple, torch.Tensor] | None = None

    def block_cores(self) -> torch.Tensor:
        """M (n, d, d). Under no_grad the tucker mixing is memoised until the weights change, so inference pays for
        it once, not per input (and counts no MACs for it)."""
        if self.mixing is None:
            return self.cores
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return torch.einsum("nl,lde->nde", self.mixing, self.cores)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (self.mixing, self.cores))
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, torch.einsum("nl,lde->nde", self.mixing, self.cores))
        return self._memo[1]

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """x·U: (..., H) -> (..., d), the hidden side of every inward block at once."""
        return torch.matmul(x, self.hidden_factor)

    def expand(self, z: torch.Tensor, first: int, width: int, groups: int = 1) -> list[torch.Tensor]:
        """`groups` consecutive inward matrices of `width` columns each, their blocks from `first` on, applied to
        z = x·U: (..., d) -> a list of (..., width). Only the needed columns of a partial last block are computed."""
        blocks = math.ceil(width / self.block_width)
        cores = self.block_cores()[first:first + groups * blocks]  # (g·nb, d, d)
        y = torch.einsum("...d,bde->...be", z, cores)  # (..., g·nb, d)
        y = y.unflatten(-2, (groups, blocks))  # (..., g, nb, d)
        full, rest = divmod(width, self.block_width)
        parts = []
        if full:
            parts.append(torch.matmul(y[..., :full, :], self.width_factor.T).flatten(-2))  # (..., g, full·D)
        if rest:
            parts.append(torch.matmul(y[..., full, :], self.width_factor[:rest].T))  # (..., g, rest)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # (..., g, w)
        return list(out.unbind(-2))

    def contract(self, c: torch.Tensor, first: int) -> torch.Tensor:
        """An outward matrix of c's width (its blocks from `first` on) applied to c: (..., w) -> (..., H),
        Σ_b (c_b·V)·M_bᵀ, then one product with Uᵀ."""
        width = c.shape[-1]
        full, rest = divmod(width, self.block_width)
        cores = self.block_cores()[first:first + math.ceil(width / self.block_width)]
        s = []
        if full:
            s.append(torch.matmul(c[..., :full * self.block_width].unflatten(-1, (full, self.block_width)),
                                  self.width_factor))  # (..., full, d)
        if rest:
            s.append(torch.matmul(c[..., full * self.block_width:], self.width_factor[:rest]).unsqueeze(-2))
        states = s[0] if len(s) == 1 else torch.cat(s, dim=-2)  # (..., nb, d)
        t = torch.einsum("...bd,bed->...e", states, cores)  # (..., d)
        return torch.matmul(t, self.hidden_factor.T)

