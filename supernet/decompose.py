"""Decompose a dense (exported) model into a compressed one: the factors of supernet/factors.py, from its weights.

Ren et al., "Exploring Extreme Parameter Compression for Pre-trained Language Models" (ICLR 2022). The bank
protocols stack every block of every layer (H x D, D = H; supernet/factors.py cuts and pads them) into one tensor
(n x H x D) and decompose it with Tucker/HOOI (tensorly): ranks (bank, d, d) for the matrix bank, whose factors are
P (n x bank), U (H x d), V (D x d) and the core's slices C_j; a partial Tucker of the last two modes for
shared-lowrank (U, V, and one core per block). The lowrank protocol is a truncated SVD per matrix, and the word
embeddings' factorisation one more (vocab x R, R x H). Every full-rank decomposition is exact, so a model compressed
at full rank computes what the dense one does (tests). Recovery of what lower ranks lose is supernet/compress.py's.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from . import factors
from .factors import Compression
from .modeling_nasprune import NasPruneForSequenceClassification

HOOI_ITERATIONS = 50  # HOOI converges in a few iterations from the SVD start; this bounds a slow case
HOOI_TOLERANCE = 1e-6


def model_layout(model: NasPruneForSequenceClassification) -> list[factors.Matrix]:
    c = model.config
    return factors.layout(c.hidden_size, c.head_size, list(c.layer_heads), list(c.layer_units))


def _projection(model: NasPruneForSequenceClassification, matrix: factors.Matrix) -> torch.nn.Module:
    """The module of `model` that holds `matrix` (an nn.Linear in a dense model, a LowRankLinear or BiasOnly in a
    compressed one)."""
    return getattr(getattr(model.model.layers[matrix.layer], matrix.block), matrix.name)


def _dense_weight(model: NasPruneForSequenceClassification, matrix: factors.Matrix) -> torch.Tensor:
    """The matrix oriented H x w (torch stores inward matrices as w x H, outward ones as H x w)."""
    weight = _projection(model, matrix).weight.detach().double()
    return weight if matrix.outward else weight.T


def block_tensor(model: NasPruneForSequenceClassification, matrices: list[factors.Matrix]) -> np.ndarray:
    """Every block of every matrix, zero-padded to D = H columns: (n, H, D), float64."""
    hidden = model.config.hidden_size
    tensor = np.zeros((factors.block_count(matrices), hidden, hidden))
    for m in matrices:
        if not m.blocks:
            continue
        padded = torch.zeros(hidden, m.blocks * hidden, dtype=torch.float64)
        padded[:, :m.width] = _dense_weight(model, m)
        tensor[m.first:m.first + m.blocks] = padded.reshape(hidden, m.blocks, hidden).permute(1, 0, 2).numpy()
    return tensor


def _svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out x in) ≈ B·A with B (out x r), A (r x in), the singular values split evenly between them."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _decompose_bank(model: NasPruneForSequenceClassification, compression: Compression,
                    matrices: list[factors.Matrix]) -> dict[str, np.ndarray]:
    import tensorly
    from tensorly.decomposition import partial_tucker, tucker

    tensorly.set_backend("numpy")
    tensor = block_tensor(model, matrices)
    d = compression.rank
    if compression.protocol == "tucker":
        result = tucker(tensor, rank=[compression.bank, d, d], init="svd", n_iter_max=HOOI_ITERATIONS,
                        tol=HOOI_TOLERANCE)
        mixing, hidden_factor, width_factor = result.factors
        return {"hidden_factor": hidden_factor, "width_factor": width_factor, "cores": result.core,
                "mixing": mixing}
    (cores, (hidden_factor, width_factor)), _ = partial_tucker(tensor, rank=[d, d], modes=[1, 2], init="svd",
                                                               n_iter_max=HOOI_ITERATIONS, tol=HOOI_TOLERANCE)
    return {"hidden_factor": hidden_factor, "width_factor": width_factor, "cores": cores}


@torch.no_grad()
def decompose(model: NasPruneForSequenceClassification, compression: Compression) -> NasPruneForSequenceClassification:
    """A compressed copy of `model` (left untouched): its weights factorised by `compression`, everything else
    (biases, LayerNorms, positions, heads, exits, runtime settings) copied. CompressionError (naming the setting)
    when the ranks do not fit the model."""
    if getattr(model.config, "compression", None) is not None:
        raise factors.CompressionError("this model is compressed already: decompose the dense model it came from")
    matrices = model_layout(model)
    compression.check(model.config.hidden_size, factors.block_count(matrices))
    config = copy.deepcopy(model.config)
    config.compression = compression.to_dict()
    compressed = NasPruneForSequenceClassification(config)
    dense_state = model.state_dict()
    for name, tensor in compressed.state_dict().items():
        source = dense_state.get(name)
        if source is not None and source.shape == tensor.shape:
            tensor.copy_(source)
    small, dtype = compressed.model, next(compressed.parameters()).dtype
    if compression.embedding_rank is not None:
        words, projection = _svd_factors(model.model.embeddings.word_embeddings.weight, compression.embedding_rank)
        small.embeddings.word_embeddings.weight.copy_(words.to(dtype))  # vocab x R
        small.embeddings.word_projection.weight.copy_(projection.T.to(dtype))  # (H x R): R -> H
    if compression.banked:
        for name, value in _decompose_bank(model, compression, matrices).items():
            getattr(small.bank, name).copy_(torch.from_numpy(np.ascontiguousarray(value)).to(dtype))
    else:
        for m in matrices:
            if not m.width:
                continue
            target = _projection(compressed, m)
            weight = _dense_weight(model, m)
            up, down = _svd_factors(weight if m.outward else weight.T, target.down.shape[0])
            target.up.copy_(up.to(dtype))
            target.down.copy_(down.to(dtype))
    return compressed.eval()


@torch.no_grad()
def relative_error(dense: NasPruneForSequenceClassification, compressed: NasPruneForSequenceClassification) -> float:
    """‖W - Ŵ‖ / ‖W‖ over every encoder weight the decomposition replaced (padding excluded): how much the
    factors lose before recovery."""
    matrices = model_layout(dense)
    small, lost, total = compressed.model, 0.0, 0.0
    bank = None if small.bank is None else (small.bank.hidden_factor.double() @ small.bank.block_cores().double()
                                            @ small.bank.width_factor.double().T)  # (n, H, D)
    for m in matrices:
        if not m.width:
            continue
        weight = _dense_weight(dense, m)  # (H, w)
        if bank is not None:
            approx = torch.cat(list(bank[m.first:m.first + m.blocks]), dim=1)[:, :m.width]
        else:
            target = _projection(compressed, m)
            approx = target.up.double() @ target.down.double()
            approx = approx if m.outward else approx.T
        lost += float((weight - approx).square().sum())
        total += float(weight.square().sum())
    return (lost / total) ** 0.5 if total else 0.0
