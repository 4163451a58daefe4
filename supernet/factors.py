"""What a compressed model's factorised weights are, and what they cost: torch-free, copied into every export.

Extreme compression of a chosen sub-network (Ren et al., "Exploring Extreme Parameter Compression for Pre-trained
Language Models", ICLR 2022). Every weight matrix of a layer joins the hidden size H on one side and a width w on
the other (Q, K, V and the attention output: w = heads x head size; the FFN's two matrices: w = units). Oriented
H x w, a matrix is cut along its width into blocks of D = H columns; a partial last block is zero-padded to D for
the decomposition, and only its first w mod D columns are ever computed. Blocks of pruned widths therefore share
one bank with full ones (zero padding, not separate banks: one U and V serve every layer, whatever it kept).

Protocols (the paper's II, III and IV; its I is the dense model):

- `lowrank`: each matrix its own rank-r factorisation (truncated SVD), r = min(rank, w, H);
- `shared-lowrank`: every block W_b = U S_b Vᵀ, with U (H x d) and V (D x d) shared by all blocks of all layers
  and one core S_b (d x d) per block;
- `tucker`: the matrix bank W_b = U (Σ_j P_bj C_j) Vᵀ: `bank` cores C_j shared by every block, mixed by per-block
  coefficients P (blocks x bank). The mixed cores M_b are formed once per set of weights, not per input: they cost
  parameters, not MACs per token.

With a bank, one product x·U serves Q, K and V (they read the same input), and an outward matrix (the attention
output, the FFN's down-projection) sums its blocks before one product with Uᵀ. `embedding_rank` R also factorises
the word embeddings (vocab x R, then R x H): they hold most of a small encoder's parameters (COST-EFF's trick).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("tucker", "shared-lowrank", "lowrank")
# the order of a layer's matrices in the bank; Q, K and V are consecutive so that one product expands all three
MATRICES = ("query", "key", "value", "dense", "intermediate", "output")
OUTWARD = frozenset({"dense", "output"})  # width -> hidden; the others map hidden -> width
FFN_MATRICES = frozenset({"intermediate", "output"})  # the FFN block's; the others are the attention block's


class CompressionError(ValueError):
    """Compression settings that do not fit the model (the message names the setting)."""


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise CompressionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Compression:
    """How a model's encoder (and optionally its word embeddings) is factorised. `bank` is the tucker protocol's
    number of shared cores and only means something there."""

    protocol: str
    rank: int
    bank: int | None = None
    embedding_rank: int | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise CompressionError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        object.__setattr__(self, "rank", _positive(self.rank, "rank"))
        if self.protocol == "tucker":
            if self.bank is None:
                raise CompressionError("the tucker protocol needs bank: how many cores the matrix bank holds")
            object.__setattr__(self, "bank", _positive(self.bank, "bank"))
        elif self.bank is not None:
            raise CompressionError(f"bank is the tucker protocol's number of cores; {self.protocol} has none")
        if self.embedding_rank is not None:
            object.__setattr__(self, "embedding_rank", _positive(self.embedding_rank, "embedding_rank"))

    @property
    def banked(self) -> bool:
        """Whether the encoder's blocks share one U and V (tucker, shared-lowrank)."""
        return self.protocol != "lowrank"

    def check(self, hidden: int, blocks: int) -> Compression:
        """CompressionError unless the ranks fit a model of hidden size `hidden` with `blocks` matrix blocks."""
        if self.rank > hidden:
            raise CompressionError(f"rank must be at most the hidden size {hidden}, got {self.rank}")
        if self.bank is not None and self.bank > blocks:
            raise CompressionError(f"bank must be at most the number of matrix blocks of this model ({blocks}: "
                                   f"every weight matrix cut into {hidden}-wide blocks), got {self.bank}")
        if self.bank is not None and self.bank > self.rank ** 2:
            raise CompressionError(f"bank must be at most rank² = {self.rank ** 2} (more cores than a rank x rank "
                                   f"core has entries add nothing), got {self.bank}")
        if self.embedding_rank is not None and self.embedding_rank > hidden:
            raise CompressionError(f"embedding_rank must be at most the hidden size {hidden}, got "
                                   f"{self.embedding_rank}")
        if self.banked and blocks == 0:
            raise CompressionError("this model has no weight matrix left to decompose (every head and unit pruned)")
        return self

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"protocol": self.protocol, "rank": self.rank}
        if self.bank is not None:
            data["bank"] = self.bank
        if self.embedding_rank is not None:
            data["embedding_rank"] = self.embedding_rank
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Compression | None:
        if data is None:
            return None
        if isinstance(data, Compression):
            return data
        if not isinstance(data, dict):
            raise CompressionError(f"compression is a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"protocol", "rank", "bank", "embedding_rank"}
        if unknown:
            raise CompressionError(f"compression has unknown fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CompressionError(f"malformed compression: {exc}") from None


@dataclass(frozen=True)
class Matrix:
    """One weight matrix of a compressed layer: where its blocks start in the bank, and how many."""

    layer: int
    name: str
    width: int
    first: int
    blocks: int

    @property
    def outward(self) -> bool:
        return self.name in OUTWARD

    @property
    def block(self) -> str:
        """The layer's submodule that holds this matrix ("ffn" or "attention")."""
        return "ffn" if self.name in FFN_MATRICES else "attention"


def layout(hidden: int, head_size: int, layer_heads: list[int], layer_units: list[int]) -> list[Matrix]:
    """Every weight matrix of the layers, in bank order (layer by layer, MATRICES order); blocks of `hidden`
    columns, a partial last one included."""
    matrices, first = [], 0
    for layer, (heads, units) in enumerate(zip(layer_heads, layer_units, strict=True)):
        for name in MATRICES:
            width = units if name in FFN_MATRICES else heads * head_size
            blocks = math.ceil(width / hidden)
            matrices.append(Matrix(layer, name, width, first, blocks))
            first += blocks
    return matrices


def block_count(matrices: list[Matrix]) -> int:
    return sum(m.blocks for m in matrices)


def lowrank_rank(compression: Compression, hidden: int, width: int) -> int:
    """The rank of one matrix under the lowrank protocol: never more than either of its dimensions."""
    return min(compression.rank, width, hidden)


def factor_params(compression: Compression, hidden: int, matrices: list[Matrix]) -> int:
    """Parameters of the encoder's factorised weights (biases and LayerNorms apart)."""
    if not compression.banked:
        return sum(lowrank_rank(compression, hidden, m.width) * (hidden + m.width) for m in matrices)
    d, blocks = compression.rank, block_count(matrices)
    shared = 2 * hidden * d  # U (H x d) and V (D x d), D = H
    if compression.protocol == "tucker":
        return shared + compression.bank * d * d + blocks * compression.bank
    return shared + blocks * d * d


def projection_macs(compression: Compression, hidden: int, heads: int, head_size: int, units: int, reads: int,
                    kept: int) -> int:
    """MACs of one compressed layer's six matrices: Q, K, V on the `reads` tokens read, the attention output and
    the FFN on the `kept` tokens passed on (supernet.schedules.layer_macs places elimination the same way)."""
    width = heads * head_size
    if not compression.banked:
        ra, ru = lowrank_rank(compression, hidden, width), lowrank_rank(compression, hidden, units)
        return 3 * reads * ra * (hidden + width) + kept * ra * (hidden + width) + 2 * kept * ru * (hidden + units)
    d = compression.rank
    nh, nu = math.ceil(width / hidden), math.ceil(units / hidden)
    macs = 0
    if width:  # x·U once for Q, K and V; per block M_b, then the needed columns of Vᵀ; outward the reverse
        macs += reads * (hidden * d + 3 * (nh * d * d + width * d))
        macs += kept * (width * d + nh * d * d + d * hidden)
    if units:
        macs += kept * (hidden * d + nu * d * d + units * d)
        macs += kept * (units * d + nu * d * d + d * hidden)
    return macs


def embedding_params(compression: Compression | None, vocab: int, hidden: int) -> int:
    """Parameters of the word embeddings: vocab x H, or vocab x R and R x H when factorised."""
    rank = None if compression is None else compression.embedding_rank
    return vocab * hidden if rank is None else vocab * rank + rank * hidden


def embedding_macs(compression: Compression | None, hidden: int, tokens: int) -> int:
    """A factorised embedding's R x H product per token (a lookup costs no MACs)."""
    rank = None if compression is None else compression.embedding_rank
    return 0 if rank is None else tokens * rank * hidden
